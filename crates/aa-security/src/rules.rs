//! The built-in rules: credentials of the providers agents touch, and personal data.
//!
//! Each rule names the literal keywords that must appear near a match (the prefilter), a regex
//! that confirms it (the first capture group that took part, when it has any, is the secret;
//! otherwise the whole match), and the gates that reject decoys. Regexes run as ASCII byte
//! regexes over a window around each keyword.

/// How bad a leak of this kind is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Personal data, or a credential of limited reach (test keys).
    Medium,
    /// A credential that grants access.
    High,
    /// Keys to infrastructure or signing material.
    Critical,
}

impl Severity {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What starts a rule's confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Any of these lowercase literals (matched case-insensitively).
    Keywords(&'static [&'static str]),
    /// An assignment to a name holding any of these keywords: the keyword with more name
    /// characters around it (ASCII letters, digits, `_`, `.`, `-`), a closing quote, white
    /// space, then the operator (`:=`, `=>`, `=` or `:`; after a flag, `--password value`, the
    /// white space; in XML, the `>` before the value). The rule's pattern is matched from the
    /// operator, anchored (`^`).
    Assigned(&'static [&'static str]),
    /// Any of these lowercase literals starting a word, then white space and a token (RFC
    /// 6750's characters: letters, digits, `-._~+/=`) of a generic shape that a provider's
    /// rule reads better (an opaque token after `Bearer`): the pattern is matched anchored
    /// (`^`) from the keyword's end, and not where a rule confirmed before it found the token
    /// whole (that rule names it, and the search is spared).
    Prefix(&'static [&'static str]),
    /// A run of at least seven digits, possibly with separators (phone numbers, cards, ...).
    Digits,
    /// Any of these lowercase literals, a label that makes personal data of a value that is
    /// ambiguous alone (`SSN: 123456789`): matched as [`Keywords`](Trigger::Keywords), and
    /// in a JSON document also when the label is the value's key (`{"ssn": "123456789"}`).
    Label(&'static [&'static str]),
}

/// Extra checks on the secret after the regex matched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Gate {
    /// None beyond the regex.
    None,
    /// Shannon entropy (bits per byte) at least this, and not a known decoy shape.
    Entropy(f64),
    /// The Luhn checksum of a payment card number.
    Luhn,
    /// The ISO 13616 mod-97 check of an IBAN.
    Iban,
    /// US social security number area/group/serial rules.
    Ssn,
    /// A phone number: 7 to 15 digits, not a date, version or other known shape.
    Phone,
    /// Not a placeholder or a reference (`${VAR}`, `<password>`, `{{x}}`, `****`).
    NotPlaceholder,
    /// Base64 of `user:password` with a password that is not a placeholder (HTTP Basic).
    BasicCredentials,
    /// A token that is not a placeholder, a file's path or words (`Bearer
    /// YOUR_ACCESS_TOKEN`, `Bearer token-from-the-vault`).
    Opaque,
    /// An email address whose `@` does not end a URL's credentials.
    Address,
}

/// One built-in rule. Its window bounds how long a match can be, so patterns use open-ended
/// repetition (`{32,}`) rather than large bounded ones, which compile into huge automata.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuleDef {
    pub(crate) id: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) severity: Severity,
    pub(crate) trigger: Trigger,
    pub(crate) pattern: &'static str,
    pub(crate) gate: Gate,
    /// Bytes before a keyword the match may start at.
    pub(crate) before: usize,
    /// Bytes after a keyword the match may end at.
    pub(crate) after: usize,
}

const fn rule(
    id: &'static str,
    kind: &'static str,
    severity: Severity,
    keywords: &'static [&'static str],
    pattern: &'static str,
) -> RuleDef {
    RuleDef {
        id,
        kind,
        severity,
        trigger: Trigger::Keywords(keywords),
        pattern,
        gate: Gate::None,
        before: 16,
        after: 256,
    }
}

const fn gated(mut r: RuleDef, gate: Gate) -> RuleDef {
    r.gate = gate;
    r
}

const fn labelled(mut r: RuleDef) -> RuleDef {
    if let Trigger::Keywords(words) = r.trigger {
        r.trigger = Trigger::Label(words);
    }
    r
}

const fn prefix(mut r: RuleDef) -> RuleDef {
    if let Trigger::Keywords(words) = r.trigger {
        r.trigger = Trigger::Prefix(words);
    }
    r
}

const fn assignment(mut r: RuleDef) -> RuleDef {
    if let Trigger::Keywords(words) = r.trigger {
        r.trigger = Trigger::Assigned(words);
    }
    r
}

/// A database URL's password (group 1 of `pattern`), unless it is a placeholder: a URL in a
/// template or a document names the password (`${DB_PASSWORD}`, `<password>`, `****`)
/// rather than holding it.
const fn database_url(
    id: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
) -> RuleDef {
    gated(
        window(
            rule(id, "database_password", Critical, keywords, pattern),
            4,
            400,
        ),
        Gate::NotPlaceholder,
    )
}

const fn window(mut r: RuleDef, before: usize, after: usize) -> RuleDef {
    r.before = before;
    r.after = after;
    r
}

use Severity::{Critical, High, Medium};

/// Where a token may start: at a word's start, or after `_` (a name glued before it,
/// `TOKEN_ghp_...`), though not after a letter or digit (`myghp_...` is a word).
macro_rules! start {
    () => {
        r"(?:\b|_)"
    };
}

/// Characters that may follow a value; the `(?:...)` after a token keeps `\b`-like behaviour
/// for tokens whose alphabet includes `-`.
macro_rules! end {
    () => {
        r"(?:[^A-Za-z0-9_\-]|$)"
    };
}

/// A PEM block labelled `$label` (group 1): whole, or cut off before its END line, as a
/// truncated tool output leaves it, which still holds key material. Cut off, it runs from the
/// BEGIN line over any header fields (`Proc-Type:`, `Version:`) and the base64 lines that
/// follow, the first at least 40 characters long (so a placeholder is no key). Lines may be
/// parted by white space or by escaped line breaks (`\n` in JSON text read raw). A body holds
/// no run of five dashes: it ends at the next `-----` line, its own END or another block's
/// BEGIN. Read up to any END, each of a run of BEGIN lines had its body read to the text's
/// end (quadratic: 3.8 s for 640 KB).
macro_rules! pem {
    ($label:literal) => {
        concat!(
            "(-----BEGIN ",
            $label,
            r"-----(?:(?:[^-]|-{1,4}[^-]){32,}?-----END ",
            $label,
            r"-----|(?:(?:\s|\\[rn])*[A-Za-z][A-Za-z-]*:[^\r\n\\]*)*(?:\s|\\[rn])*",
            r"[A-Za-z0-9+/=]{40,}(?:(?:\s|\\[rn])*[A-Za-z0-9+/=]{16,})*))"
        )
    };
}

/// The value of a generic `name = value` assignment (the name holds one of the secret words),
/// from the operator on (white space after a command line's flag, the `>` of an XML element);
/// the value is the group that took part. Quoted, it runs to its closing
/// quote on the line (escapes, white space and punctuation included), as does an XML CDATA
/// section to its `]]>`; bare, it stops at white space, quotes, brackets, `,`, `;` and at the
/// `&` that starts a query's next parameter.
const GENERIC: &str = concat!(
    r#"^(?::=|=>|=|:|>|[ \t])\s*(?:"((?:[^"\\\r\n]|\\[^\r\n]){8,})"|'([^'\r\n]{8,})'"#,
    r#"|`([^`\r\n]{8,})`|["'`]?((?:[^\s"'`,;<>(){}\[\]&]|&[^A-Za-z_\s"'`,;<>(){}\[\]&]){8,})"#,
    r#"|<!\[CDATA\[([^\r\n]{8,}?)\]\]>)"#
);

/// How far back from an `@` a URL's credentials are looked for: the scheme, the user and the
/// password before it.
pub(crate) const URL_CREDENTIALS_REACH: usize = 300;

/// Every built-in rule. Keywords are lowercase.
pub(crate) const RULES: &[RuleDef] = &[
    // ---- AWS ----
    rule(
        "aws-access-key-id",
        "aws_access_key",
        Critical,
        &["akia", "asia", "abia", "acca"],
        concat!(start!(), r"((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})", end!()),
    ),
    gated(
        window(
            rule(
                "aws-secret-access-key",
                "aws_secret_key",
                Critical,
                &[
                    "aws_secret",
                    "aws-secret",
                    "awssecret",
                    "secret_access_key",
                    "secretaccesskey",
                    "secret-access-key",
                ],
                r#"(?i)(?:aws)?[_\-]?secret[_\-]?(?:access)?[_\-]?key["']?\s*(?::=|=>|=|:)\s*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
            ),
            24,
            120,
        ),
        Gate::Entropy(3.5),
    ),
    window(
        rule(
            "aws-session-token",
            "aws_session_token",
            High,
            &["session_token", "sessiontoken", "session-token"],
            r#"(?i)session[_\-]?token["']?\s*(?::=|=>|=|:)\s*["']?([A-Za-z0-9/+=]{100,})"#,
        ),
        32,
        2100,
    ),
    // ---- GitHub ----
    rule(
        "github-pat",
        "github_token",
        Critical,
        &["ghp_"],
        concat!(start!(), r"(ghp_[A-Za-z0-9]{36})", end!()),
    ),
    rule(
        "github-oauth-token",
        "github_token",
        Critical,
        &["gho_"],
        concat!(start!(), r"(gho_[A-Za-z0-9]{36})", end!()),
    ),
    rule(
        "github-user-to-server-token",
        "github_token",
        Critical,
        &["ghu_"],
        concat!(start!(), r"(ghu_[A-Za-z0-9]{36})", end!()),
    ),
    rule(
        "github-server-to-server-token",
        "github_token",
        Critical,
        &["ghs_"],
        // The classic form, and the newer one: the app's id and a JWT.
        concat!(
            start!(),
            r"(ghs_(?:[A-Za-z0-9]{36}|[0-9]+_eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+))",
            end!()
        ),
    ),
    rule(
        "github-refresh-token",
        "github_token",
        Critical,
        &["ghr_"],
        concat!(start!(), r"(ghr_[A-Za-z0-9]{36,76})", end!()),
    ),
    rule(
        "github-fine-grained-pat",
        "github_token",
        Critical,
        &["github_pat_"],
        concat!(
            start!(),
            r"(github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})",
            end!()
        ),
    ),
    // ---- GitLab ----
    rule(
        "gitlab-pat",
        "gitlab_token",
        Critical,
        &["glpat-"],
        // A routable token ends in a version and a checksum, after one dot or two.
        concat!(
            start!(),
            r"(glpat-[A-Za-z0-9_\-]{20,}(?:(?:\.[0-9a-z]{2})?\.[0-9a-z]{7,9})?)",
            end!()
        ),
    ),
    rule(
        "gitlab-pipeline-trigger-token",
        "gitlab_token",
        High,
        &["glptt-"],
        concat!(start!(), r"(glptt-[0-9a-f]{40})", end!()),
    ),
    rule(
        "gitlab-runner-token",
        "gitlab_token",
        High,
        &["glrt-"],
        concat!(start!(), r"(glrt-[A-Za-z0-9_\-]{20,})", end!()),
    ),
    rule(
        "gitlab-deploy-token",
        "gitlab_token",
        High,
        &["gldt-"],
        concat!(start!(), r"(gldt-[A-Za-z0-9_\-]{20,})", end!()),
    ),
    rule(
        "gitlab-other-token",
        "gitlab_token",
        High,
        // Feed, incoming mail, SCIM, feature flag client, agent, OAuth application and CI job
        // tokens.
        &[
            "glft-", "glimt-", "glsoat-", "glffct-", "glagent-", "gloas-", "glcbt-",
        ],
        concat!(
            start!(),
            r"((?:glft|glimt|glsoat|glffct|glagent|gloas|glcbt)-[A-Za-z0-9_\-]{20,})",
            end!()
        ),
    ),
    rule(
        "gitlab-runner-registration-token",
        "gitlab_token",
        High,
        &["gr1348941"],
        concat!(start!(), r"(GR1348941[A-Za-z0-9_\-]{20,})", end!()),
    ),
    // ---- Slack ----
    rule(
        "slack-bot-token",
        "slack_token",
        Critical,
        &["xoxb-"],
        concat!(
            start!(),
            r"(xoxb-[0-9]{9,13}-[0-9]{9,13}-[A-Za-z0-9]{24,34})",
            end!()
        ),
    ),
    rule(
        "slack-user-token",
        "slack_token",
        Critical,
        &["xoxp-"],
        concat!(
            start!(),
            r"(xoxp-[0-9]{9,13}-[0-9]{9,13}-[0-9]{9,13}-[a-f0-9]{32})",
            end!()
        ),
    ),
    rule(
        "slack-app-token",
        "slack_token",
        Critical,
        &["xapp-"],
        concat!(
            r"(?i)",
            start!(),
            r"(xapp-[0-9]-[A-Z0-9]{9,12}-[0-9]{9,14}-[a-f0-9]{64})",
            end!()
        ),
    ),
    rule(
        "slack-legacy-token",
        "slack_token",
        High,
        &["xoxa-", "xoxo-", "xoxr-", "xoxs-"],
        concat!(
            start!(),
            r"(xox[aors]-[0-9]{9,13}-[A-Za-z0-9\-]{10,})",
            end!()
        ),
    ),
    rule(
        "slack-config-token",
        "slack_token",
        High,
        // App configuration access tokens (xoxe.xoxp-1-…) and their refresh tokens (xoxe-1-…).
        &["xoxe-", "xoxe.xox"],
        concat!(
            start!(),
            r"(xoxe(?:\.xox[bp])?-1-[A-Za-z0-9\-]{60,})",
            end!()
        ),
    ),
    rule(
        "slack-webhook-url",
        "slack_webhook",
        High,
        &["hooks.slack.com"],
        r"(https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{30,})",
    ),
    // ---- Stripe ----
    rule(
        "stripe-secret-key",
        "stripe_key",
        Critical,
        &["sk_live_"],
        concat!(start!(), r"(sk_live_[0-9a-zA-Z]{24,})", end!()),
    ),
    rule(
        "stripe-restricted-key",
        "stripe_key",
        Critical,
        &["rk_live_"],
        concat!(start!(), r"(rk_live_[0-9a-zA-Z]{24,})", end!()),
    ),
    rule(
        "stripe-test-secret-key",
        "stripe_key",
        Medium,
        &["sk_test_", "rk_test_"],
        concat!(start!(), r"([sr]k_test_[0-9a-zA-Z]{24,})", end!()),
    ),
    rule(
        "stripe-webhook-secret",
        "stripe_key",
        High,
        &["whsec_"],
        concat!(start!(), r"(whsec_[A-Za-z0-9+/]{32,})", end!()),
    ),
    // ---- AI providers ----
    // The marker sits mid-key, so the window reaches well back.
    window(
        rule(
            "openai-api-key",
            "openai_api_key",
            Critical,
            &["t3blbkfj"],
            concat!(
                start!(),
                r"(sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,})",
                end!()
            ),
        ),
        200,
        200,
    ),
    rule(
        "openai-project-key",
        "openai_api_key",
        Critical,
        &["sk-proj-", "sk-svcacct-", "sk-admin-"],
        concat!(
            start!(),
            r"(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,})",
            end!()
        ),
    ),
    gated(
        rule(
            "openai-legacy-key",
            "openai_api_key",
            High,
            &["sk-"],
            concat!(start!(), r"(sk-[A-Za-z0-9]{48})", end!()),
        ),
        Gate::Entropy(4.0),
    ),
    rule(
        "anthropic-api-key",
        "anthropic_api_key",
        Critical,
        &["sk-ant-"],
        concat!(
            start!(),
            r"(sk-ant-(?:api|admin|oat|sid)[0-9]{2}-[A-Za-z0-9_\-]{80,120})",
            end!()
        ),
    ),
    rule(
        "openrouter-api-key",
        "openrouter_api_key",
        High,
        &["sk-or-"],
        concat!(start!(), r"(sk-or-v1-[a-f0-9]{64})", end!()),
    ),
    rule(
        "huggingface-token",
        "huggingface_token",
        High,
        &["hf_"],
        concat!(start!(), r"(hf_[A-Za-z]{34})", end!()),
    ),
    rule(
        "huggingface-org-token",
        "huggingface_token",
        High,
        &["api_org_"],
        concat!(start!(), r"(api_org_[A-Za-z]{34})", end!()),
    ),
    rule(
        "groq-api-key",
        "groq_api_key",
        High,
        &["gsk_"],
        concat!(start!(), r"(gsk_[A-Za-z0-9]{52})", end!()),
    ),
    rule(
        "replicate-api-token",
        "replicate_api_token",
        High,
        &["r8_"],
        concat!(start!(), r"(r8_[A-Za-z0-9]{37})", end!()),
    ),
    rule(
        "xai-api-key",
        "xai_api_key",
        High,
        &["xai-"],
        concat!(start!(), r"(xai-[A-Za-z0-9]{80})", end!()),
    ),
    rule(
        "perplexity-api-key",
        "perplexity_api_key",
        High,
        &["pplx-"],
        concat!(start!(), r"(pplx-[A-Za-z0-9]{48})", end!()),
    ),
    rule(
        "langsmith-api-key",
        "langsmith_api_key",
        High,
        &["lsv2_"],
        concat!(
            start!(),
            r"(lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10})",
            end!()
        ),
    ),
    // ---- Google ----
    rule(
        "google-api-key",
        "google_api_key",
        High,
        &["aiza"],
        concat!(start!(), r"(AIza[0-9A-Za-z_\-]{35})", end!()),
    ),
    rule(
        "google-oauth-client-secret",
        "google_oauth_secret",
        High,
        &["gocspx-"],
        concat!(start!(), r"(GOCSPX-[A-Za-z0-9_\-]{28})", end!()),
    ),
    rule(
        "google-oauth-access-token",
        "google_oauth_token",
        High,
        &["ya29."],
        concat!(start!(), r"(ya29\.[0-9A-Za-z_\-]{30,})", end!()),
    ),
    window(
        rule(
            "gcp-service-account-key-id",
            "gcp_service_account",
            Critical,
            &["private_key_id"],
            r#""private_key_id"\s*:\s*"([a-f0-9]{40})""#,
        ),
        2,
        80,
    ),
    // ---- Azure ----
    window(
        rule(
            "azure-storage-account-key",
            "azure_storage_key",
            Critical,
            &["accountkey="],
            r"(?i)AccountKey=([A-Za-z0-9+/]{86}==)",
        ),
        2,
        120,
    ),
    window(
        rule(
            "azure-shared-access-key",
            "azure_storage_key",
            Critical,
            &["sharedaccesskey="],
            r"(?i)SharedAccessKey=([A-Za-z0-9+/]{42,44}=?)",
        ),
        2,
        80,
    ),
    gated(
        window(
            rule(
                "azure-sas-token",
                "azure_sas_token",
                High,
                &["sig="],
                r"(?i)[?&]sig=([A-Za-z0-9%+/]{40,100}(?:%3D|=){0,2})",
            ),
            2,
            120,
        ),
        Gate::Entropy(3.5),
    ),
    rule(
        "azure-ad-client-secret",
        "azure_client_secret",
        High,
        &["q~"],
        concat!(
            r"(?:^|[^A-Za-z0-9_~.\-])([A-Za-z0-9_~.\-]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34})",
            end!()
        ),
    ),
    // ---- Messaging, mail, payments ----
    rule(
        "sendgrid-api-key",
        "sendgrid_api_key",
        High,
        &["sg."],
        concat!(
            start!(),
            r"(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})",
            end!()
        ),
    ),
    window(
        rule(
            "twilio-api-key",
            "twilio_api_key",
            High,
            &["twilio"],
            r"(?i)twilio[\s\S]{0,60}?\b(SK[0-9a-fA-F]{32})\b",
        ),
        4,
        120,
    ),
    // An account or API key SID and its secret, as `curl -u SID:secret` sends them to the
    // service's URL, before or after it.
    window(
        rule(
            "twilio-credentials",
            "twilio_auth_token",
            High,
            &["twilio"],
            r"\b(?:AC|SK)[0-9a-f]{32}:([A-Za-z0-9]{32})\b",
        ),
        200,
        200,
    ),
    window(
        rule(
            "twilio-auth-token",
            "twilio_auth_token",
            High,
            &["twilio"],
            r#"(?i)twilio[a-z_\-]*(?:auth)?[_\-]?token["']?\s*(?::=|=>|=|:)\s*["']?([a-f0-9]{32})\b"#,
        ),
        4,
        120,
    ),
    rule(
        "mailgun-api-key",
        "mailgun_api_key",
        High,
        &["key-"],
        concat!(start!(), r"(key-[0-9a-f]{32})", end!()),
    ),
    // The newer form, with no prefix: near the service's name (`api.mailgun.net` in the URL
    // it is sent to, `MAILGUN_API_KEY=`), before or after it.
    window(
        rule(
            "mailgun-api-key-v2",
            "mailgun_api_key",
            High,
            &["mailgun"],
            r"\b([0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{8})\b",
        ),
        160,
        160,
    ),
    window(
        rule(
            "mailchimp-api-key",
            "mailchimp_api_key",
            High,
            &["-us"],
            r"\b([0-9a-f]{32}-us[0-9]{1,2})\b",
        ),
        40,
        8,
    ),
    rule(
        "telegram-bot-token",
        "telegram_bot_token",
        High,
        &[":aa"],
        // Also as the Bot API's URLs carry it: `/bot<token>/getMe`.
        concat!(r"(?:\b|bot)([0-9]{8,10}:AA[0-9A-Za-z_\-]{33})", end!()),
    ),
    window(
        rule(
            "discord-bot-token",
            "discord_token",
            High,
            &["discord"],
            r"(?i)discord[\s\S]{0,60}?\b([MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38})",
        ),
        4,
        160,
    ),
    // As an `Authorization: Bot <token>` header carries it, with or without the name.
    rule(
        "discord-bot-authorization",
        "discord_token",
        High,
        &["bot m", "bot n", "bot o"],
        concat!(
            start!(),
            r"(?i:bot) ([MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38})",
            end!()
        ),
    ),
    rule(
        "discord-webhook-url",
        "discord_webhook",
        High,
        &["discord"],
        r"(https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_\-]{60,68})",
    ),
    rule(
        "square-access-token",
        "square_token",
        High,
        &["sq0atp-", "eaaa"],
        concat!(
            start!(),
            r"(sq0atp-[0-9A-Za-z_\-]{22}|EAAA[A-Za-z0-9_\-]{60})",
            end!()
        ),
    ),
    rule(
        "square-oauth-secret",
        "square_token",
        High,
        &["sq0csp-"],
        concat!(start!(), r"(sq0csp-[0-9A-Za-z_\-]{43})", end!()),
    ),
    // ---- Package registries ----
    rule(
        "npm-access-token",
        "npm_token",
        Critical,
        &["npm_"],
        concat!(start!(), r"(npm_[A-Za-z0-9]{36})", end!()),
    ),
    rule(
        "pypi-upload-token",
        "pypi_token",
        Critical,
        &["pypi-ageichlwas5vcmc"],
        concat!(
            start!(),
            r"(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})",
            end!()
        ),
    ),
    // ---- Commerce and cloud platforms ----
    rule(
        "shopify-access-token",
        "shopify_token",
        High,
        &["shpat_"],
        concat!(start!(), r"(shpat_[a-fA-F0-9]{32})", end!()),
    ),
    rule(
        "shopify-custom-app-token",
        "shopify_token",
        High,
        &["shpca_"],
        concat!(start!(), r"(shpca_[a-fA-F0-9]{32})", end!()),
    ),
    rule(
        "shopify-private-app-token",
        "shopify_token",
        High,
        &["shppa_"],
        concat!(start!(), r"(shppa_[a-fA-F0-9]{32})", end!()),
    ),
    rule(
        "shopify-shared-secret",
        "shopify_token",
        High,
        &["shpss_"],
        concat!(start!(), r"(shpss_[a-fA-F0-9]{32})", end!()),
    ),
    rule(
        "digitalocean-pat",
        "digitalocean_token",
        Critical,
        &["dop_v1_"],
        concat!(start!(), r"(dop_v1_[a-f0-9]{64})", end!()),
    ),
    rule(
        "digitalocean-oauth-token",
        "digitalocean_token",
        Critical,
        &["doo_v1_"],
        concat!(start!(), r"(doo_v1_[a-f0-9]{64})", end!()),
    ),
    rule(
        "digitalocean-refresh-token",
        "digitalocean_token",
        Critical,
        &["dor_v1_"],
        concat!(start!(), r"(dor_v1_[a-f0-9]{64})", end!()),
    ),
    rule(
        "databricks-token",
        "databricks_token",
        High,
        &["dapi"],
        concat!(start!(), r"(dapi[a-f0-9]{32}(?:-[0-9])?)", end!()),
    ),
    rule(
        "hashicorp-vault-token",
        "vault_token",
        Critical,
        &["hvs.", "hvb."],
        concat!(start!(), r"(hv[sb]\.[A-Za-z0-9_\-]{24,})", end!()),
    ),
    rule(
        "terraform-cloud-token",
        "terraform_token",
        Critical,
        &[".atlasv1."],
        concat!(
            start!(),
            r"([A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{60,70})",
            end!()
        ),
    ),
    rule(
        "doppler-token",
        "doppler_token",
        High,
        &["dp.pt.", "dp.st.", "dp.sa."],
        concat!(
            start!(),
            r"(dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44})",
            end!()
        ),
    ),
    rule(
        "pulumi-access-token",
        "pulumi_token",
        High,
        &["pul-"],
        concat!(start!(), r"(pul-[a-f0-9]{40})", end!()),
    ),
    rule(
        "grafana-cloud-token",
        "grafana_token",
        High,
        &["glc_"],
        concat!(start!(), r"(glc_[A-Za-z0-9+/]{32,}={0,2})", end!()),
    ),
    rule(
        "grafana-service-account-token",
        "grafana_token",
        High,
        &["glsa_"],
        concat!(start!(), r"(glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})", end!()),
    ),
    rule(
        "new-relic-user-key",
        "newrelic_key",
        High,
        &["nrak-"],
        concat!(start!(), r"(NRAK-[A-Z0-9]{27})", end!()),
    ),
    rule(
        "sentry-auth-token",
        "sentry_token",
        High,
        &["sntrys_", "sntryu_"],
        concat!(
            start!(),
            r"(sntrys_[A-Za-z0-9+/=_]{60,}|sntryu_[a-f0-9]{64})",
            end!()
        ),
    ),
    rule(
        "postman-api-key",
        "postman_key",
        High,
        &["pmak-"],
        concat!(start!(), r"(PMAK-[a-f0-9]{24}-[a-f0-9]{34})", end!()),
    ),
    rule(
        "linear-api-key",
        "linear_api_key",
        High,
        &["lin_api_"],
        concat!(start!(), r"(lin_api_[A-Za-z0-9]{40})", end!()),
    ),
    rule(
        "notion-token",
        "notion_token",
        High,
        &["ntn_"],
        concat!(start!(), r"(ntn_[0-9]{11}[A-Za-z0-9]{35})", end!()),
    ),
    rule(
        "atlassian-api-token",
        "atlassian_token",
        High,
        &["atatt3"],
        concat!(start!(), r"(ATATT3[A-Za-z0-9_\-=]{180,})", end!()),
    ),
    rule(
        "age-secret-key",
        "age_secret_key",
        Critical,
        &["age-secret-key-1"],
        concat!(
            start!(),
            r"(AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b"
        ),
    ),
    // Gated by entropy: a run of `A`s, as base64 writes zeros, is no token. The shortest token
    // the pattern takes, 21 `A`s and 30 random characters, reads about 3.6 bits a byte and
    // seldom under 3; tokens as issued are longer, near 4.8.
    gated(
        rule(
            "twitter-bearer-token",
            "twitter_token",
            High,
            &["aaaaaaaaaaaaaaaaaaaaa"],
            concat!(
                start!(),
                r"(AAAAAAAAAAAAAAAAAAAAA[A-Za-z0-9%]{30,})",
                end!()
            ),
        ),
        Gate::Entropy(2.5),
    ),
    // ---- Signed tokens and keys ----
    // The payload sits between the keyword and the signature, so the window must span it.
    window(
        rule(
            "jwt",
            "jwt",
            High,
            &["eyj"],
            concat!(
                start!(),
                r"(eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,})",
                end!()
            ),
        ),
        16,
        8192,
    ),
    window(
        rule(
            "private-key-rsa",
            "private_key",
            Critical,
            &["begin rsa private key"],
            pem!("RSA PRIVATE KEY"),
        ),
        16,
        16500,
    ),
    window(
        rule(
            "private-key-ec",
            "private_key",
            Critical,
            &["begin ec private key"],
            pem!("EC PRIVATE KEY"),
        ),
        16,
        16500,
    ),
    window(
        rule(
            "private-key-dsa",
            "private_key",
            Critical,
            &["begin dsa private key"],
            pem!("DSA PRIVATE KEY"),
        ),
        16,
        16500,
    ),
    window(
        rule(
            "private-key-openssh",
            "private_key",
            Critical,
            &["begin openssh private key"],
            pem!("OPENSSH PRIVATE KEY"),
        ),
        16,
        16500,
    ),
    window(
        rule(
            "private-key-pkcs8",
            "private_key",
            Critical,
            &["begin private key"],
            pem!("PRIVATE KEY"),
        ),
        16,
        16500,
    ),
    window(
        rule(
            "private-key-pkcs8-encrypted",
            "private_key",
            Critical,
            &["begin encrypted private key"],
            pem!("ENCRYPTED PRIVATE KEY"),
        ),
        16,
        16500,
    ),
    window(
        rule(
            "private-key-pgp",
            "private_key",
            Critical,
            &["begin pgp private key block"],
            pem!("PGP PRIVATE KEY BLOCK"),
        ),
        16,
        16500,
    ),
    window(
        rule(
            "private-key-putty",
            "private_key",
            Critical,
            &["putty-user-key-file-"],
            concat!(
                r"(PuTTY-User-Key-File-[23]: (?:[\s\S]{32,}?Private-MAC: [0-9a-f]{40,64}|",
                // Cut off before its MAC: up to the end of its private lines.
                r"[\s\S]{32,}?Private-Lines: \d+(?:\s*[A-Za-z0-9+/=]{16,})+))"
            ),
        ),
        4,
        8300,
    ),
    // ---- Database URLs with passwords (the password is the secret) ----
    database_url(
        "database-url-postgres",
        &["postgres"],
        r#"(?i)postgres(?:ql)?(?:\+[a-z0-9_]+)?://[^\s:/@\[]+:([^\s/?#"'<>,;]+)@"#,
    ),
    database_url(
        "database-url-mysql",
        &["mysql", "mariadb"],
        r#"(?i)(?:mysql|mariadb)(?:\+[a-z0-9_]+)?://[^\s:/@\[]+:([^\s/?#"'<>,;]+)@"#,
    ),
    database_url(
        "database-url-mongodb",
        &["mongodb://", "mongodb+srv://"],
        r#"(?i)mongodb(?:\+srv)?://[^\s:/@\[]+:([^\s/?#"'<>,;]+)@"#,
    ),
    database_url(
        "database-url-redis",
        &["redis://", "rediss://"],
        r#"(?i)rediss?://[^\s:/@\[]*:([^\s/?#"'<>,;]+)@"#,
    ),
    database_url(
        "database-url-amqp",
        &["amqp://", "amqps://"],
        r#"(?i)amqps?://[^\s:/@\[]+:([^\s/?#"'<>,;]+)@"#,
    ),
    database_url(
        "database-url-mssql",
        &["sqlserver", "mssql"],
        r#"(?i)(?:sqlserver|mssql)(?:\+[a-z0-9_]+)?://[^\s:/@\[]+:([^\s/?#"'<>,;]+)@"#,
    ),
    // MySQL's and MariaDB's clients take a password glued to `-p` (`mysql -u root -pXk9...`);
    // `-p` alone, or before white space, asks for one.
    gated(
        window(
            rule(
                "mysql-password-flag",
                "database_password",
                Critical,
                &["mysql", "mariadb"],
                concat!(
                    r#"(?i)\b(?:mysql(?:dump|admin|import|check|sh|pump|slap|binlog)?"#,
                    r#"|mariadb(?:-dump|-admin|-import|-check|-binlog)?)(?:\s[^\r\n|;&]*?)?\s-p"#,
                    r#"(?:"([^"\s]+)"|'([^'\s]+)'|([^\s"'\-][^\s"']*))"#
                ),
            ),
            4,
            300,
        ),
        Gate::NotPlaceholder,
    ),
    // Other clients that take a password as a short flag's argument, glued or after white
    // space: `sshpass -p`, `redis-cli -a`, `sqlcmd -P`, the OpenLDAP tools' `-w`. Each tool's
    // own flag, in its own case (`sshpass -P` sets a prompt, `ldapsearch -W` asks, `-P` is
    // LDAP's version); sshpass's only among its own flags, before the command it runs (`sshpass
    // -f pw ssh -p 2222` is ssh's port). A bare value starting with `$` is the shell's.
    gated(
        window(
            rule(
                "password-flag",
                "password",
                Critical,
                &["sshpass", "redis-cli", "sqlcmd", "ldap"],
                concat!(
                    r#"(?i)\b(?:sshpass(?:[ \t]+-[a-z]+)*[ \t]+(?-i:-p)"#,
                    r#"|redis-cli(?:[ \t][^\r\n|;&]*?)?[ \t](?-i:-a)"#,
                    r#"|sqlcmd(?:[ \t][^\r\n|;&]*?)?[ \t](?-i:-P)"#,
                    r#"|ldap(?:search|add|modify|delete|compare|modrdn|whoami|passwd|exop)"#,
                    r#"(?:[ \t][^\r\n|;&]*?)?[ \t](?-i:-w))[ \t]*"#,
                    r#"(?:"([^"\r\n]+)"|'([^'\r\n]+)'|([^\s"'\-$][^\s"']*))"#
                ),
            ),
            4,
            300,
        ),
        Gate::NotPlaceholder,
    ),
    // Any other URL's credentials (`https://user:password@host`), read back from the `@`.
    gated(
        window(
            rule(
                "url-credentials",
                "url_password",
                Critical,
                &["@"],
                r#"(?i)[a-z][a-z0-9+.\-]{0,20}://[^\s:/@\[]*:([^\s/?#"'<>,;\[]+)@"#,
            ),
            URL_CREDENTIALS_REACH,
            4,
        ),
        Gate::NotPlaceholder,
    ),
    // ---- Agent Assembly's own ----
    // An agent's credential token or a spawn grant (`aat1.` / `aag1.`, base64url JSON claims,
    // then an Ed25519 signature: 86 characters), and the operator and runtime tokens `aasm`
    // makes, which bear a prefix for this. A token's claims hold ids of up to 256 bytes each.
    window(
        rule(
            "agent-assembly-token",
            "agent_assembly_token",
            Critical,
            &["aat1.", "aag1.", "aasm_rt_", "aasm_op_"],
            concat!(
                start!(),
                r"(aa[tg]1\.eyJ[A-Za-z0-9_\-]{13,}\.[A-Za-z0-9_\-]{86}|aasm_(?:rt|op)_[0-9a-f]{64})",
                end!()
            ),
        ),
        16,
        2048,
    ),
    // ---- HTTP authorization ----
    gated(
        rule(
            "authorization-basic",
            "basic_credentials",
            High,
            &["basic"],
            r"(?i)(?:^|[^A-Za-z0-9_])basic\s+([A-Za-z0-9+/]{6,}={0,2})(?:[^A-Za-z0-9+/=]|$)",
        ),
        Gate::BasicCredentials,
    ),
    // An opaque token after `Bearer` (RFC 6750's characters, a trailing `.` left to the
    // sentence). A provider's token or a JWT there is its own rule's. A longer token than
    // the window holds is read on past it.
    prefix(gated(
        window(
            rule(
                "authorization-bearer",
                "bearer_token",
                High,
                &["bearer"],
                r"^\s+([A-Za-z0-9\-._~+/]{15,}[A-Za-z0-9\-_~+/]=*)(?:[^A-Za-z0-9\-_~+/=]|$)",
            ),
            0,
            64,
        ),
        Gate::Opaque,
    )),
    // ---- Generic assignments, gated by entropy ----
    assignment(gated(
        window(
            rule(
                "generic-secret-assignment",
                "generic_secret",
                High,
                &[
                    "password",
                    "passwd",
                    "passphrase",
                    "pwd",
                    "secret",
                    "token",
                    "api_key",
                    "api-key",
                    "apikey",
                    "access_key",
                    "access-key",
                    "accesskey",
                    "auth_key",
                    "auth-key",
                    "authkey",
                    "private_key",
                    "private-key",
                    "privatekey",
                    "credential",
                ],
                GENERIC,
            ),
            48,
            128,
        ),
        Gate::Entropy(3.0),
    )),
    // ---- Personal data ----
    gated(
        window(
            rule(
                "email-address",
                "email",
                Medium,
                &["@"],
                // After a ':' only where a label ends (`email:`, `To:`): in `scheme://user:pw@host`
                // it parts a URL's credentials, not an address. After one '/' (a path), not '//'
                // (a URL's user). Not followed by ':' and a path: `git@github.com:org/repo` is a
                // remote, not an address.
                concat!(
                    r"(?:^|mailto:|(?:^|[^A-Za-z0-9._%+\-:/\x80-\xFF])[A-Za-z][A-Za-z0-9_\-]{0,31}:",
                    r"|(?:^|[^/:])/|[^A-Za-z0-9._%+\-:/\x80-\xFF])",
                    r"([A-Za-z0-9\x80-\xFF][A-Za-z0-9._%+\-\x80-\xFF]{0,63}@[A-Za-z0-9\x80-\xFF](?:[A-Za-z0-9\-\x80-\xFF]{0,62}[A-Za-z0-9\x80-\xFF])?(?:\.[A-Za-z0-9\x80-\xFF](?:[A-Za-z0-9\-\x80-\xFF]{0,62}[A-Za-z0-9\x80-\xFF])?)*\.[A-Za-z]{2,24})",
                    r"(?:$|[^A-Za-z0-9_:]|:(?:$|[^A-Za-z0-9/~_.\-]))"
                ),
            ),
            66,
            260,
        ),
        Gate::Address,
    ),
    RuleDef {
        id: "phone-number",
        kind: "phone",
        severity: Medium,
        trigger: Trigger::Digits,
        pattern: r"(?:^|[^0-9A-Za-z_+.\-/])(\+[1-9][0-9]{6,14}|\+[1-9][0-9]{0,2}[ .\-]?\(?[0-9]{1,4}\)?(?:[ .\-]?[0-9]{2,5}){2,4}|\(?0[0-9]{2,4}\)?[ .\-/]?[0-9]{3,4}[ .\-]?[0-9]{3,5}|(?:1[ .\-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[.\-])[2-9][0-9]{2}[.\-][0-9]{4}|0[1-9](?:[ .\-][0-9]{2}){4})(?:[^0-9A-Za-z_\-.]|\.(?:[^0-9]|$)|$)",
        gate: Gate::Phone,
        before: 24,
        after: 32,
    },
    RuleDef {
        id: "us-ssn",
        kind: "ssn",
        severity: High,
        trigger: Trigger::Digits,
        pattern: r"(?:^|[^0-9A-Za-z_\-])([0-9]{3}-[0-9]{2}-[0-9]{4})(?:[^0-9A-Za-z_\-]|$)",
        gate: Gate::Ssn,
        before: 8,
        after: 16,
    },
    // Spaced or undashed, nine digits are an SSN only where a label says so.
    gated(
        window(
            labelled(rule(
                "us-ssn-labelled",
                "ssn",
                High,
                &["ssn", "social"],
                concat!(
                    r"(?i)(?:^|[^A-Za-z0-9])(?:[a-z0-9]+_)?(?:ssn|social[ _\-]?security)",
                    r"(?:[ _\-]?(?:number|num|no))?\W{0,4}(?:is\W{1,3})?",
                    r"([0-9]{3} ?[0-9]{2} ?[0-9]{4})(?:[^0-9A-Za-z_\-]|$)"
                ),
            )),
            24,
            48,
        ),
        Gate::Ssn,
    ),
    RuleDef {
        id: "payment-card",
        kind: "payment_card",
        severity: High,
        trigger: Trigger::Digits,
        // Dotted only in a card's own groups (4-4-4-4, 4-4-4-4-3, Amex's 4-6-5), which a
        // float (`3.141592653589793`) or an object id (`1.3.6.1.4.1.311`) is not.
        pattern: concat!(
            r"(?:^|[^0-9A-Za-z_\-.])((?:[0-9][ \-]?){12,18}[0-9]",
            r"|[0-9]{4}(?:\.[0-9]{4}){3}(?:\.[0-9]{3})?|[0-9]{4}\.[0-9]{6}\.[0-9]{5})",
            r"(?:[^0-9A-Za-z_\-.]|\.(?:[^0-9]|$)|$)"
        ),
        gate: Gate::Luhn,
        before: 8,
        after: 32,
    },
    RuleDef {
        id: "iban",
        kind: "iban",
        severity: High,
        trigger: Trigger::Digits,
        // In capitals, or all in lowercase (`gb82 west 1234 ...`), which the gate checks.
        pattern: r"(?:^|[^0-9A-Za-z_\-])([A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?)(?:[^0-9A-Za-z_\-]|$)",
        gate: Gate::Iban,
        before: 16,
        after: 48,
    },
];

/// The kinds of personal data (the rest are credentials).
const PERSONAL_DATA_KINDS: &[&str] = &["email", "phone", "ssn", "payment_card", "iban"];

/// Whether `kind` is personal data rather than a credential.
pub(crate) fn is_personal_data(kind: &str) -> bool {
    PERSONAL_DATA_KINDS.contains(&kind)
}

/// The ids of the built-in rules, in priority order.
pub fn builtin_ids() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|r| r.id)
}
