//! Deterministic corpora for scanner benchmarks. The same seed gives the same bytes on every
//! machine, so figures and recall are comparable across runs and tools.

/// A small, fast, deterministic PRNG (xorshift64*): no dependency, no platform variance.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator; a zero seed is replaced, as xorshift cannot leave zero.
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// `len` characters drawn from `alphabet`.
    pub fn string(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len).map(|_| char::from(self.pick(alphabet))).collect()
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const WORDS: &[&str] = &[
    "the",
    "agent",
    "called",
    "tool",
    "with",
    "arguments",
    "and",
    "returned",
    "result",
    "for",
    "user",
    "request",
    "policy",
    "decision",
    "allowed",
    "after",
    "review",
    "of",
    "file",
    "in",
    "workspace",
    "deployment",
    "service",
    "pipeline",
    "finished",
    "error",
    "retry",
    "model",
    "response",
    "summary",
    "customer",
    "ticket",
    "refund",
    "order",
    "shipping",
    "address",
    "meeting",
    "notes",
    "quarterly",
    "report",
    "numbers",
    "growth",
    "team",
    "update",
    "planning",
    "schedule",
    "analysis",
    "database",
    "query",
    "cache",
    "latency",
    "throughput",
    "budget",
];

const CODE: &[&str] = &[
    "fn handle(request: &Request) -> Result<Response, Error> {",
    "    let config = Config::from_env()?;",
    "    for item in items.iter().filter(|i| i.enabled) {",
    "import os, sys, json  # standard library",
    "def process(event, context):",
    "    return {\"statusCode\": 200, \"body\": json.dumps(result)}",
    "const client = new Client({ baseUrl: process.env.API_URL, timeout: 30_000 });",
    "SELECT id, name, created_at FROM users WHERE team_id = $1 ORDER BY created_at DESC;",
    "if err != nil { return fmt.Errorf(\"load: %w\", err) }",
    "password = os.environ.get(\"DB_PASSWORD\")",
    "token = settings.API_TOKEN",
];

/// One line of clean text: prose, code, or a log line with decoys (UUIDs, SHA digests,
/// versions, timestamps, IP addresses) that look random but are not secrets.
fn clean_line(rng: &mut Rng, out: &mut String) {
    match rng.below(4) {
        0 | 1 => {
            let n = 8 + rng.below(16);
            for i in 0..n {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(rng.pick(WORDS));
            }
            out.push('.');
        }
        2 => out.push_str(rng.pick(CODE)),
        _ => {
            let uuid = format!(
                "{}-{}-4{}-a{}-{}",
                rng.string(HEX, 8),
                rng.string(HEX, 4),
                rng.string(HEX, 3),
                rng.string(HEX, 3),
                rng.string(HEX, 12)
            );
            out.push_str(&format!(
                "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z INFO request_id={uuid} commit={} v{}.{}.{} from 10.{}.{}.{} took {}ms",
                1 + rng.below(28),
                rng.below(24),
                rng.below(60),
                rng.below(60),
                rng.below(1000),
                rng.string(HEX, 40),
                rng.below(5),
                rng.below(30),
                rng.below(20),
                rng.below(256),
                rng.below(256),
                rng.below(256),
                rng.below(2000)
            ));
        }
    }
    out.push('\n');
}

/// Roughly `bytes` of clean text.
pub fn clean_text(seed: u64, bytes: usize) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(bytes + 256);
    while out.len() < bytes {
        clean_line(&mut rng, &mut out);
    }
    out
}

/// The clean text without its log lines, which are dense with decoys (UUIDs, hashes,
/// timestamps, addresses): prose and code only.
pub fn prose_and_code(clean: &str) -> String {
    clean
        .lines()
        .filter(|line| !line.contains(" INFO "))
        .flat_map(|line| [line, "\n"])
        .collect()
}

/// A planted secret: its text, the kind of secret, and whether it is a credential (as opposed
/// to personal data, which not every scanner looks for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planted {
    /// The secret exactly as written into the corpus.
    pub value: String,
    /// A short name for its kind, e.g. `aws_access_key`.
    pub kind: &'static str,
    /// True for credentials, false for personal data.
    pub credential: bool,
    /// 1-based line it was written on.
    pub line: usize,
    /// Byte offset of the value in the corpus.
    pub offset: usize,
}

/// A line that carries a secret, in the context it typically appears in.
fn secret_line(rng: &mut Rng) -> (String, String, &'static str, bool) {
    let choice = rng.below(14);
    let (prefix, value, kind, credential) = match choice {
        0 => (
            "aws_access_key_id = ".to_owned(),
            format!("AKIA{}", rng.string(BASE32, 16)),
            "aws_access_key",
            true,
        ),
        1 => (
            "aws_secret_access_key = ".to_owned(),
            rng.string(BASE64, 40),
            "aws_secret_key",
            true,
        ),
        2 => (
            "GITHUB_TOKEN=".to_owned(),
            format!("ghp_{}", rng.string(ALNUM, 36)),
            "github_token",
            true,
        ),
        3 => (
            "slack: ".to_owned(),
            format!(
                "xoxb-{}-{}-{}",
                rng.string(b"0123456789", 11),
                rng.string(b"0123456789", 12),
                rng.string(ALNUM, 24)
            ),
            "slack_token",
            true,
        ),
        4 => (
            "stripe_key: ".to_owned(),
            format!("sk_live_{}", rng.string(ALNUM, 24)),
            "stripe_key",
            true,
        ),
        5 => (
            "OPENAI_API_KEY=".to_owned(),
            format!(
                "sk-proj-{}T3BlbkFJ{}",
                rng.string(ALNUM, 20),
                rng.string(ALNUM, 20)
            ),
            "openai_api_key",
            true,
        ),
        6 => (
            "Authorization: Bearer ".to_owned(),
            format!(
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{}.{}",
                rng.string(ALNUM, 20),
                rng.string(ALNUM, 43)
            ),
            "jwt",
            true,
        ),
        7 => (
            "DATABASE_URL=postgres://app:".to_owned(),
            rng.string(ALNUM, 16),
            "database_password",
            true,
        ),
        8 => (
            "db_password = \"".to_owned(),
            format!("{}!{}", rng.string(ALNUM, 10), rng.string(ALNUM, 6)),
            "generic_secret",
            true,
        ),
        9 => (
            "npm token ".to_owned(),
            format!("npm_{}", rng.string(ALNUM, 36)),
            "npm_token",
            true,
        ),
        10 => (
            "sendgrid ".to_owned(),
            format!("SG.{}.{}", rng.string(ALNUM, 22), rng.string(ALNUM, 43)),
            "sendgrid_api_key",
            true,
        ),
        11 => (
            "contact: ".to_owned(),
            format!(
                "{}.{}@example.org",
                rng.string(b"abcdefghij", 5),
                rng.string(b"klmnopqrst", 6)
            ),
            "email",
            false,
        ),
        12 => (
            "card on file ".to_owned(),
            luhn_card(rng),
            "payment_card",
            false,
        ),
        _ => (
            "key material ".to_owned(),
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----",
                rng.string(BASE64, 64),
                rng.string(BASE64, 64)
            ),
            "private_key",
            true,
        ),
    };
    let suffix = match choice {
        7 => "@db.internal:5432/app",
        8 => "\"",
        _ => "",
    };
    (prefix, format!("{value}{suffix}"), kind, credential)
}

/// A Visa-shaped number with a valid Luhn check digit.
fn luhn_card(rng: &mut Rng) -> String {
    let mut digits: Vec<u32> = std::iter::once(4)
        .chain((0..14).map(|_| rng.below(10) as u32))
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
        .collect()
}

/// Roughly `bytes` of clean text with a secret planted about every `every` bytes; returns the
/// text and where each secret is.
pub fn dense_text(seed: u64, bytes: usize, every: usize) -> (String, Vec<Planted>) {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(bytes + 256);
    let mut planted = Vec::new();
    let mut line = 1;
    let mut next = every / 2;
    while out.len() < bytes {
        if out.len() >= next {
            let (prefix, value_and_suffix, kind, credential) = secret_line(&mut rng);
            out.push_str(&prefix);
            let offset = out.len();
            let value = match kind {
                "database_password" => value_and_suffix
                    .split('@')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                "generic_secret" => value_and_suffix.trim_end_matches('"').to_owned(),
                _ => value_and_suffix.clone(),
            };
            out.push_str(&value_and_suffix);
            out.push('\n');
            planted.push(Planted {
                value,
                kind,
                credential,
                line,
                offset,
            });
            line += 1 + value_and_suffix.matches('\n').count();
            next = out.len() + every / 2 + rng.below(every);
        } else {
            clean_line(&mut rng, &mut out);
            line += 1;
        }
    }
    (out, planted)
}

/// A tool-call event of about 4 KiB as JSON: nested arguments, a long tool output, and two
/// secrets among them.
pub fn event_4k(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let output = clean_text(seed ^ 0xABCD, 3500);
    let escaped: String = output
        .chars()
        .flat_map(|c| match c {
            '\n' => vec!['\\', 'n'],
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!(
        r#"{{"event_id":"{}","agent":{{"id":"support-bot","team":"support","depth":1}},"action":{{"type":"tool_call","tool":"shell","args":{{"command":"curl -H 'Authorization: Bearer ghp_{}' https://api.github.com/repos","cwd":"/workspace","env":{{"HOME":"/root","AWS_ACCESS_KEY_ID":"AKIA{}"}}}}}},"output":"{escaped}","exit_code":0}}"#,
        rng.string(HEX, 32),
        rng.string(ALNUM, 36),
        rng.string(BASE32, 16)
    )
}

/// A tool's end as an agent reports it, the size `aa-bench events` sends (≈ 430 bytes of
/// JSON), with nothing to redact; it parses as an `aa_core::AuditEvent`.
pub const SMALL_EVENT: &str = r#"{"event_id":"e-7","timestamp_ms":1,"kind":"tool_end","agent":{"id":"bench-events-0","team":"bench","depth":0},"session_id":"bench-session","action":{"type":"tool_call","tool":"read_file","args":{"path":"/workspace/src/module_7.rs"}},"detail":{"result":"read 42 lines from module_7.rs: fn handle_7(request: Request) -> Response { let started = Instant::now(); let body = request.body(); tracing::info!(bytes = body.len(), \"handling request 7\"); respond(body) }","duration_ms":7}}"#;

/// The custom pattern of the default policy (`policy-examples/balanced.yaml`), which the
/// scanners of `aasm up` and `aa-bench` run over every event: its name and regex.
pub const DEFAULT_POLICY_PATTERN: (&str, &str) = ("employee_id", r"EMP-\d{6}");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpora_are_deterministic_and_sized() {
        assert_eq!(clean_text(1, 10_000), clean_text(1, 10_000));
        assert!(clean_text(1, 10_000).len() >= 10_000);
        let (text, planted) = dense_text(2, 50_000, 500);
        assert!(planted.len() > 50, "{}", planted.len());
        for p in &planted {
            assert_eq!(&text[p.offset..p.offset + p.value.len()], p.value);
            assert!(
                text.lines()
                    .nth(p.line - 1)
                    .unwrap_or_default()
                    .contains(p.value.lines().next().unwrap_or_default())
            );
        }
        let event = event_4k(3);
        assert!((3800..5000).contains(&event.len()), "{}", event.len());
    }
}
