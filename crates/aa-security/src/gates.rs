//! Checks that turn a regex match into a finding, or reject it as a decoy: entropy, checksums
//! (Luhn, IBAN mod-97), number-shape rules, and the shapes of values that look random but are
//! not secrets (UUIDs, hex digests, version strings, placeholders).

use crate::rules::{Gate, URL_CREDENTIALS_REACH};
use crate::runs::DigitRun;

/// True when the secret at `start..end` of `text` passes `gate`.
pub(crate) fn passes(gate: Gate, text: &[u8], start: usize, end: usize) -> bool {
    let secret = text.get(start..end).unwrap_or_default();
    let next = text.get(end).copied();
    match gate {
        Gate::None => true,
        // A name followed by `(`, `[` or `{` is code (`token = get_token(self)`,
        // `Optional[Token]`), not a literal; a value holding punctuation no name has
        // (`Zq8!vR2#kL9(pW4)`) is a literal whatever follows it.
        Gate::Entropy(min) => {
            let called = matches!(next, Some(b'(' | b'[' | b'{')) && is_name_in_code(secret);
            !called
                && !is_decoy(secret)
                && !reads_as_words(secret)
                && shannon_entropy(secret) >= min
        }
        Gate::Luhn => luhn(secret),
        Gate::Iban => iban(secret),
        Gate::Ssn => ssn(secret),
        Gate::Phone => phone(secret),
        Gate::NotPlaceholder => !is_placeholder(secret),
        Gate::BasicCredentials => basic_credentials(secret),
        Gate::Opaque => !is_placeholder(secret) && !is_file_path(secret) && !reads_as_words(secret),
        Gate::Address => !ends_url_credentials(text, start, end),
    }
}

/// Whether the `@` of the address at `start..end` of `text` ends a URL's credentials
/// (`https://user:p@ss!x9@example.com`): the address is then the password's tail and the host,
/// and the URL's rules read the password up to that last `@`. Read back from the address over
/// what a URL's user and password may hold, to `://`, with a `:` between it and the `@`.
fn ends_url_credentials(text: &[u8], start: usize, end: usize) -> bool {
    let Some(at) = text
        .get(start..end)
        .and_then(|address| address.iter().position(|&b| b == b'@'))
    else {
        return false;
    };
    let from = start.saturating_sub(URL_CREDENTIALS_REACH);
    let authority = text.get(from..start + at).unwrap_or_default();
    let userinfo = authority
        .iter()
        .rposition(|b| b.is_ascii_whitespace() || b"/?#\"'<>,;[".contains(b))
        .filter(|&stop| authority.get(..=stop).is_some_and(|s| s.ends_with(b"://")))
        .and_then(|stop| authority.get(stop + 1..));
    userinfo.is_some_and(|u| u.contains(&b':'))
}

/// HTTP Basic credentials: base64 of printable `user:password`, the password not a
/// placeholder.
fn basic_credentials(v: &[u8]) -> bool {
    use base64::Engine as _;
    let Ok(decoded) = crate::decode::STANDARD.decode(v) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    let password = decoded.get(colon + 1..).unwrap_or_default();
    std::str::from_utf8(&decoded).is_ok_and(|text| !text.chars().any(char::is_control))
        && !password.is_empty()
        && !is_placeholder(password)
}

/// Whether the digit run `run` of `text` could hold what `gate` checks for; lets the scanner
/// skip the regex for runs that cannot (dates, times, IP addresses, digits inside hashes and
/// identifiers).
pub(crate) fn may_hold(gate: Gate, text: &[u8], run: &DigitRun) -> bool {
    let shape = text.get(run.start..run.end).unwrap_or_default();
    let digits = run.digits;
    match gate {
        Gate::Phone => {
            // More digits than a phone number has are still one in part, where separators
            // split the run (`+1 415 555 2671 0000`).
            (digits >= 7 && (digits <= 15 || shape.len() > digits))
                && !glued(text, run)
                && !is_date_or_ip(shape)
        }
        Gate::Ssn => digits >= 9 && shape.contains(&b'-') && !glued(text, run),
        Gate::Luhn => digits >= 13 && !glued(text, run),
        Gate::Iban => country_code_before(text, run) && longest_spaced_chain(shape) >= 8,
        Gate::None
        | Gate::Entropy(_)
        | Gate::NotPlaceholder
        | Gate::BasicCredentials
        | Gate::Opaque
        | Gate::Address => true,
    }
}

/// Where the operator of an assignment to the name around a keyword at `start..end` of `text`
/// is ([`Trigger::Assigned`](crate::rules::Trigger::Assigned)): after more name characters, a
/// closing quote and white space, within `reach` bytes of the keyword. A command line's flag
/// (`--password Xk9...`, `--api-key "..."`) is assigned the word after it: its operator is the
/// white space, unless what follows is another flag, a line's end or nothing.
pub(crate) fn assignment_operator(
    text: &[u8],
    start: usize,
    end: usize,
    reach: usize,
) -> Option<usize> {
    let rest = text.get(end..).unwrap_or_default();
    let rest = rest.get(..reach).unwrap_or(rest);
    let mut at = rest.iter().position(|b| !is_name(b)).unwrap_or(rest.len());
    if matches!(rest.get(at), Some(b' ' | b'\t')) && is_flag(text, start, reach) {
        let value = rest
            .get(at..)
            .and_then(|r| r.iter().find(|b| !matches!(b, b' ' | b'\t')));
        return value
            .is_some_and(|b| !matches!(b, b'-' | b'\n' | b'\r'))
            .then_some(end + at);
    }
    // What precedes the name, read only where XML may follow: most names are not XML's.
    let before = || {
        name_start(text, start, reach)
            .checked_sub(1)
            .and_then(|i| text.get(i))
            .copied()
    };
    let tail = rest.get(at..).unwrap_or_default();
    if tail.starts_with(b">") || tail.starts_with(b"</") {
        return xml_value(before(), tail).map(|op| end + at + op);
    }
    let quoted = matches!(rest.get(at), Some(b'"' | b'\''));
    if quoted {
        at += 1;
    }
    let closed = at;
    // The regexes' `\s`: ASCII white space, vertical tab included.
    while rest
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'))
    {
        at += 1;
    }
    if quoted {
        // An attribute named by the one before it: `<add key="Password" value="..."/>`.
        if rest
            .get(at..at + 6)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"value="))
            && before() == Some(b'"')
        {
            at += 5;
        } else if match rest.get(at) {
            // The tag goes on: it ends, or another attribute follows.
            Some(b'>' | b'/') => true,
            Some(b) => at > closed && b.is_ascii_alphabetic(),
            None => false,
        } && before() == Some(b'"')
        {
            return xml_named_value(text, name_start(text, start, reach), end + at, reach);
        }
    }
    matches!(rest.get(at), Some(b':' | b'=')).then_some(end + at)
}

/// Where the value an XML tag's `key` or `name` attribute names is, when no `value="..."`
/// follows that attribute at once: a `value` attribute elsewhere in the tag (`<add
/// value="..." key="Password"/>`, `<add key="Password" type="string" value="..."/>`), else
/// the element's text (`<entry key="password">...</entry>`) or its `<value>` element
/// (`<property name="password"><value>...`). `name_at` is where the name starts (after a
/// quote), `after` where the tag goes on past the quote that closes it; the tag is read
/// within `reach` bytes either side.
// Kept out of line: inlined into the keyword search's callback, it cost prose 0.2 % more
// instructions where it never runs.
#[inline(never)]
fn xml_named_value(text: &[u8], name_at: usize, after: usize, reach: usize) -> Option<usize> {
    let head = text.get(..name_at.checked_sub(1)?)?;
    let named = [&b"key="[..], b"name="].iter().any(|attribute| {
        let from = head.len().checked_sub(attribute.len() + 1);
        from.and_then(|from| head.get(from..))
            .and_then(<[u8]>::split_first)
            .is_some_and(|(space, a)| {
                space.is_ascii_whitespace() && a.eq_ignore_ascii_case(attribute)
            })
    });
    if !named {
        return None;
    }
    let from = head.len().saturating_sub(reach);
    let before = head.get(from..)?;
    let open = before.iter().rposition(|&b| b == b'<' || b == b'>')?;
    let rest = text.get(after..)?;
    let rest = rest.get(..reach).unwrap_or(rest);
    let close = rest.iter().position(|&b| b == b'<' || b == b'>')?;
    if before.get(open) != Some(&b'<') || rest.get(close) != Some(&b'>') {
        return None;
    }
    let (tag_head, tag_tail) = (before.get(open..)?, rest.get(..close)?);
    if let Some(value) = value_attribute(tag_tail) {
        return Some(after + value);
    }
    if let Some(value) = value_attribute(tag_head) {
        return Some(from + open + value);
    }
    if tag_tail.ends_with(b"/") {
        return None;
    }
    let inner = rest.get(close + 1..).unwrap_or_default();
    let gap = inner.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let element = inner
        .get(gap..)
        .is_some_and(|e| e.starts_with(b"<value>"))
        .then_some(gap + b"<value".len() + 1);
    Some(after + close + element.unwrap_or(0))
}

/// Where the `=` of a `value=` attribute in `tag` is.
fn value_attribute(tag: &[u8]) -> Option<usize> {
    tag.windows(7)
        .position(|w| {
            w.first().is_some_and(u8::is_ascii_whitespace)
                && w.get(1..)
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"value="))
        })
        .map(|at| at + 6)
}

/// Where in `tail`, what follows a name that `before` precedes, an XML element's value starts
/// (its `>`): the name's own element (`<password>...`), or the element after a key's
/// (`<key>password</key><value>...`, a property list's `<string>`).
fn xml_value(before: Option<u8>, tail: &[u8]) -> Option<usize> {
    const KEYS: [&[u8]; 2] = [b"</key>", b"</name>"];
    const VALUES: [&[u8]; 2] = [b"<value>", b"<string>"];
    match before? {
        b'<' => tail.starts_with(b">").then_some(0),
        b'>' => {
            let closed = KEYS.iter().find_map(|tag| tail.strip_prefix(*tag))?;
            let gap = closed
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            let value = closed.get(gap..)?;
            let open = VALUES.iter().find(|tag| value.starts_with(tag))?;
            Some(tail.len() - closed.len() + gap + open.len() - 1)
        }
        _ => None,
    }
}

/// A character of a name: ASCII letters, digits, `_`, `.` and `-`.
fn is_name(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Where the name around a keyword starting at `start` of `text` starts: name characters
/// before it, within `reach` bytes.
fn name_start(text: &[u8], start: usize, reach: usize) -> usize {
    let from = start.saturating_sub(reach);
    let head = text.get(from..start).unwrap_or_default();
    from + head.iter().rposition(|b| !is_name(b)).map_or(0, |p| p + 1)
}

/// Whether the name around a keyword starting at `start` of `text` is a long flag: `--` and a
/// letter, not glued to a word before it.
fn is_flag(text: &[u8], start: usize, reach: usize) -> bool {
    let name = text
        .get(name_start(text, start, reach)..)
        .unwrap_or_default();
    name.starts_with(b"--") && name.get(2).is_some_and(u8::is_ascii_alphabetic)
}
/// Whether every place a phone number, SSN or card could start in `run` is glued to a word
/// (`a1903-4124`): their patterns refuse a letter, `_` or `-` before the first digit, and a
/// start inside the run needs a separator other than `-` before it.
fn glued(text: &[u8], run: &DigitRun) -> bool {
    let before = run.start.checked_sub(1).and_then(|i| text.get(i));
    let glued_start = before.is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_' || b == b'-');
    glued_start
        && !text
            .get(run.start..run.end)
            .unwrap_or_default()
            .iter()
            .any(|b| matches!(b, b' ' | b'(' | b')' | b'.' | b'/'))
}

/// Whether an IBAN's start (two letters, two check digits, not glued to a word before it, as
/// its pattern requires) lies at or shortly before `run`. The digits are looked at first, as
/// most places have none. Lowercase pairs glued to a word abound in hex digests: taking them
/// too cost clean text 6 % more instructions. Letters in mixed case are taken only before a
/// space, as [`iban`] takes them only in groups of four: taking them all cost clean text
/// 0.4 %.
fn country_code_before(text: &[u8], run: &DigitRun) -> bool {
    let from = run.start.saturating_sub(IBAN_LEAD);
    let to = (run.start + 2).min(text.len());
    let span = text.get(from..to).unwrap_or_default();
    span.windows(4).enumerate().any(|(i, w)| {
        w[3].is_ascii_digit()
            && w[2].is_ascii_digit()
            && ((w[0].is_ascii_uppercase() && w[1].is_ascii_uppercase())
                || (w[0].is_ascii_lowercase() && w[1].is_ascii_lowercase())
                || (w[0].is_ascii_alphabetic()
                    && w[1].is_ascii_alphabetic()
                    && text.get(from + i + 4) == Some(&b' ')))
            && !(from + i)
                .checked_sub(1)
                .and_then(|before| text.get(before))
                .is_some_and(|&p| p.is_ascii_alphanumeric() || p == b'_' || p == b'-')
    })
}

/// How far before a digit run an IBAN may start: its country code and check digits, and one
/// group of letters (`GB82 WEST 1234 ...`).
const IBAN_LEAD: usize = 12;

/// The most digits in a stretch of `run` joined by nothing or single spaces: IBANs are printed
/// in groups of four, so `2026-11-22` or `10.0.0.1` cannot hold one.
fn longest_spaced_chain(run: &[u8]) -> usize {
    let (mut best, mut count, mut after_space) = (0, 0, false);
    for &b in run {
        if b.is_ascii_digit() {
            count += 1;
            after_space = false;
        } else if b == b' ' && !after_space {
            after_space = true;
        } else {
            best = best.max(count);
            (count, after_space) = (0, false);
        }
    }
    best.max(count)
}

/// `2026-11-22`, `22/11/2026`, `10.0.0.1`: shapes of digits that are not phone numbers.
fn is_date_or_ip(run: &[u8]) -> bool {
    // Up to four groups of digits between separators, all separators the same.
    let mut lens = [0usize; 4];
    let (mut groups, mut separator) = (1, None);
    for &b in run {
        if b.is_ascii_digit() {
            match lens.get_mut(groups - 1) {
                Some(len) => *len += 1,
                None => return false,
            }
        } else if separator.is_none_or(|s| s == b) {
            separator = Some(b);
            // Separators come one at a time between groups in the shapes below.
            if lens.get(groups - 1) == Some(&0) {
                return false;
            }
            groups += 1;
        } else {
            return false;
        }
    }
    let lens = lens.get(..groups).unwrap_or_default();
    let date = matches!(lens, [4, 2, 2] | [2, 2, 4] | [1 | 2, 1 | 2, 4]);
    let ip = separator == Some(b'.') && lens.len() == 4 && lens.iter().all(|l| *l <= 3);
    date || ip
}

/// Bits of entropy per byte of `data`.
pub(crate) fn shannon_entropy(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    let len = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

/// Whether `v` can be a name in code: letters, digits and the `_`, `$`, `.`, `:` and `-` of
/// paths through modules and members (`self.vault.get_token`, `corev1.SecretKeySelector`).
fn is_name_in_code(v: &[u8]) -> bool {
    v.iter()
        .all(|b| b.is_ascii_alphanumeric() || b"_$.:-".contains(b))
}

/// Whether `v` is made of words, as names in code, settings and prose are (`TokenStream`,
/// `bert-base-uncased`, `Ec2InstanceMetadata`, `please log in again`) and generated secrets
/// are not: two thirds of its bytes are in word-like pieces, two such pieces at least when it
/// holds a digit (`Password123` and `hunter22` are passwords). With white space in it (a
/// quoted value), two words in a row make it prose.
fn reads_as_words(v: &[u8]) -> bool {
    if v.iter().any(u8::is_ascii_whitespace) {
        let trimmed = |w: &[u8]| {
            let start = w
                .iter()
                .position(u8::is_ascii_alphanumeric)
                .unwrap_or(w.len());
            let end = w
                .iter()
                .rposition(u8::is_ascii_alphanumeric)
                .map_or(start, |e| e + 1);
            is_word(w.get(start..end).unwrap_or_default())
        };
        let words: Vec<bool> = v
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .map(trimmed)
            .collect();
        return words.windows(2).any(|pair| pair == [true, true]);
    }
    let (mut covered, mut words) = (0, 0);
    let mut start = 0;
    for at in 0..=v.len() {
        let here = v.get(at);
        // A piece ends at anything but a letter, and before a capital that starts a word
        // (`tokenStream`, `XMLHttp`).
        let ends = match here {
            Some(b) if b.is_ascii_uppercase() => {
                let before = at.checked_sub(1).and_then(|b| v.get(b));
                before.is_some_and(u8::is_ascii_lowercase)
                    || (before.is_some_and(u8::is_ascii_uppercase)
                        && v.get(at + 1).is_some_and(u8::is_ascii_lowercase))
            }
            Some(b) => !b.is_ascii_lowercase(),
            None => true,
        };
        if ends {
            if let Some(piece) = v.get(start..at).filter(|p| is_word(p)) {
                covered += piece.len();
                words += 1;
            }
            start = if here.is_some_and(u8::is_ascii_alphabetic) {
                at
            } else {
                at + 1
            };
        }
    }
    covered * 3 >= v.len() * 2 && (words >= 2 || !v.iter().any(u8::is_ascii_digit))
}

/// A word as names and prose are made of: 3 to 15 letters, lowercase after the first, with a
/// vowel and no more than four consonants in a row.
fn is_word(p: &[u8]) -> bool {
    let is_vowel = |b: &u8| b"aeiouyAEIOUY".contains(b);
    let mut consonants = 0;
    (3..=15).contains(&p.len())
        && p.iter().all(u8::is_ascii_alphabetic)
        && p.iter().skip(1).all(u8::is_ascii_lowercase)
        && p.iter().any(is_vowel)
        && p.iter().all(|b| {
            consonants = if is_vowel(b) { 0 } else { consonants + 1 };
            consonants <= 4
        })
}

/// Values that pass an entropy gate but are not secrets.
fn is_decoy(v: &[u8]) -> bool {
    // Hex strings of digest length are not skipped: entropy gates run on values assigned to
    // secret-named keys, and `openssl rand -hex 32` looks exactly like a SHA-256.
    if is_uuid(v) {
        return true;
    }
    // version strings: 1.2.3, v2.0.1-beta
    let trimmed = v.strip_prefix(b"v").unwrap_or(v);
    if trimmed.first().is_some_and(u8::is_ascii_digit)
        && trimmed
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(b))
        && trimmed.iter().filter(|&&b| b == b'.').count() >= 2
    {
        return true;
    }
    if is_placeholder(v) {
        return true;
    }
    // identifiers in code: os.environ.get, process.env.X, settings.SECRET_KEY
    if v.iter()
        .all(|b| b.is_ascii_alphabetic() || b"._".contains(b))
        && v.contains(&b'.')
    {
        return true;
    }
    // A URL, or a path of names parted by colons (an AWS resource name or its tail, a URN),
    // names where a secret is, not the secret (a URL's credentials have rules of their own).
    let scheme = v
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"+.-".contains(b));
    let colon_path = v.iter().filter(|&&b| b == b':').count() >= 2
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(b));
    if v.get(scheme.count()..)
        .is_some_and(|rest| rest.starts_with(b"://"))
        || colon_path
    {
        return true;
    }
    // Code quoted under a secret's name: a call or an index (`os.environ['DB_PASSWORD']`,
    // `get_password(user)`).
    if let Some(open) = v.iter().position(|b| matches!(b, b'(' | b'[')) {
        let callee = v.get(..open).unwrap_or_default();
        if !callee.is_empty() && is_name_in_code(callee) && matches!(v.last(), Some(b')' | b']')) {
            return true;
        }
    }
    is_file_path(v)
}

/// A file's path, which names where a secret is kept (`--password-file /run/secrets/db`):
/// rooted, of two or more segments, in the lowercase a generated secret does not keep to.
fn is_file_path(v: &[u8]) -> bool {
    let Some(rest) = [&b"/"[..], b"~/", b"./", b"../"]
        .iter()
        .find_map(|root| v.strip_prefix(*root))
    else {
        return false;
    };
    rest.contains(&b'/')
        && rest
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/._-".contains(b))
}

/// Placeholders and references, not values: `${VAR}`, `$VAR`, `{{x}}`, `<x>`, `%(x)s`, masks
/// (`xxxxxxxx`, `sk-****...`), redaction labels, and values that read as a placeholder whole: `changeme`,
/// `REDACTED`, `your-password-here`. A placeholder word inside a value does not make it one
/// (`Your-Company-2024!` is a password).
fn is_placeholder(v: &[u8]) -> bool {
    if is_reference(v) || v.starts_with(b"{{") || v.starts_with(b"%(") || v.starts_with(b"<") {
        return true;
    }
    if v.iter().all(|&b| b == v[0]) {
        return true;
    }
    // A mask: eight of `x` or `*` in a row, which no generated secret holds; or a redaction
    // label, which a text read again holds where a secret was.
    const MASKS: [&[u8]; 3] = [b"xxxxxxxx", b"********", b"[redacted"];
    let lower = v.to_ascii_lowercase();
    // The first byte compared alone first: a slice comparison is a call.
    if MASKS.iter().any(|p| {
        lower
            .windows(p.len())
            .any(|w| w.first() == p.first() && w == *p)
    }) {
        return true;
    }
    reads_as_a_placeholder(&lower)
}

/// Whether `lower`, a lowercase value, is a placeholder's words and nothing else: `changeme`,
/// `placeholder` or `redacted`, digits after it at most (`changeme123`), or `your` and more
/// words of letters (`your-api-key-here`, `your password`), in brackets or not (`(redacted)`).
/// Documented example keys (AWS's `...EXAMPLEKEY`) are not placeholders: they look real.
fn reads_as_a_placeholder(lower: &[u8]) -> bool {
    let bracket = |b: &u8| b"[](){}".contains(b);
    let start = lower
        .iter()
        .position(|b| !bracket(b))
        .unwrap_or(lower.len());
    let end = lower
        .iter()
        .rposition(|b| !bracket(b))
        .map_or(start, |e| e + 1);
    let inner = lower.get(start..end).unwrap_or_default();
    let mut words = inner
        .split(|b| b"_-. ".contains(b))
        .filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return false;
    };
    let letters = first.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    let (word, digits) = first.split_at(letters);
    match word {
        b"changeme" | b"placeholder" | b"redacted" => {
            digits.iter().all(u8::is_ascii_digit) && words.next().is_none()
        }
        b"your" => digits.is_empty() && words.all(|w| w.iter().all(u8::is_ascii_alphabetic)),
        _ => false,
    }
}

/// A shell or template variable standing whole for the value: `$VAR`, `${VAR}`, `${VAR:-x}`,
/// `$(command)`, `$env:VAR`. A value that merely starts with `$` (`$3cr3t!`) is a value.
fn is_reference(v: &[u8]) -> bool {
    let Some(rest) = v.strip_prefix(b"$") else {
        return false;
    };
    if rest.starts_with(b"{") || rest.starts_with(b"(") {
        return rest.ends_with(b"}") || rest.ends_with(b")");
    }
    let name = rest.strip_prefix(b"env:").unwrap_or(rest);
    name.first()
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn is_uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn digits(v: &[u8]) -> impl Iterator<Item = u32> + '_ {
    v.iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
}

/// Where a match that failed `gate` still holds, whole, what the gate looks for: a card with
/// other numbers run into it by a greedy pattern (`4111 1111 1111 1111 05/27`, a CVV after
/// it, an id before it). Its longest run of digit groups that passes, the earliest of equals;
/// only cards are narrowed.
pub(crate) fn narrowed(gate: Gate, span: &[u8]) -> Option<(usize, usize)> {
    if !matches!(gate, Gate::Luhn) {
        return None;
    }
    let mut groups = Vec::new();
    let mut at = 0;
    while let Some(start) = span.get(at..)?.iter().position(u8::is_ascii_digit) {
        let start = at + start;
        let len = span[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        groups.push((start, start + len));
        at = start + len;
    }
    let mut best: Option<(usize, usize, usize)> = None;
    for (i, &(start, _)) in groups.iter().enumerate() {
        let mut digits = 0;
        for &(from, end) in &groups[i..] {
            digits += end - from;
            if digits > 19 {
                break;
            }
            let longer = best.is_none_or(|(most, ..)| digits > most);
            if longer && luhn(&span[start..end]) {
                best = Some((digits, start, end));
            }
        }
    }
    best.map(|(_, start, end)| (start, end))
}

/// Payment cards: 13–19 digits, a known issuer prefix, and a valid Luhn checksum.
fn luhn(v: &[u8]) -> bool {
    let ds: Vec<u32> = digits(v).collect();
    if !(13..=19).contains(&ds.len()) || ds.iter().all(|&d| d == ds[0]) {
        return false;
    }
    // Visa 4, Mastercard 51-55/22-27, Amex 34/37, Discover 6, Diners 36/38/30, JCB 35, UnionPay 62
    let issuer = matches!(ds[0], 3..=6) || (ds[0] == 2 && matches!(ds[1], 2..=7));
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    issuer && sum.is_multiple_of(10)
}

/// IBAN: country letters, check digits, and the ISO 7064 mod-97 remainder 1. Not in capitals
/// only with a country that issues IBANs and its length, and in mixed case (`Gb82 West 1234
/// ...`) only printed in groups of four: hex identifiers are lowercase, base64 ones mixed and
/// never spaced, and one in a hundred would pass the checksum alone.
fn iban(v: &[u8]) -> bool {
    let compact: Vec<u8> = v.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    if compact.iter().any(u8::is_ascii_lowercase) {
        let country = compact.get(..2).unwrap_or_default().to_ascii_uppercase();
        let issued = IBAN_LENGTHS
            .iter()
            .any(|(code, len)| code.as_slice() == country && usize::from(*len) == compact.len());
        if !issued || (compact.iter().any(u8::is_ascii_uppercase) && !in_groups_of_four(v)) {
            return false;
        }
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for &b in tail.iter().chain(head) {
        let value = match b.to_ascii_uppercase() {
            digit @ b'0'..=b'9' => u32::from(digit - b'0'),
            letter @ b'A'..=b'Z' => u32::from(letter - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// Whether `v` is groups of four parted by single spaces, the last of one to four.
fn in_groups_of_four(v: &[u8]) -> bool {
    let mut groups = v.split(|&b| b == b' ').peekable();
    let mut count = 0;
    while let Some(group) = groups.next() {
        count += 1;
        let last = groups.peek().is_none();
        if !(group.len() == 4 || (last && (1..=4).contains(&group.len()))) {
            return false;
        }
    }
    count > 1
}

/// The countries that issue IBANs and the length of theirs (the IBAN registry).
// Kept as a grid, six to a line, for reading against the registry; rustfmt would put each
// pair on a line of its own. Formatting only: nothing is skipped at run or test time.
#[rustfmt::skip]
const IBAN_LENGTHS: [(&[u8; 2], u8); 89] = [
    (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20),
    (b"BE", 16), (b"BG", 22), (b"BH", 22), (b"BI", 27), (b"BR", 29), (b"BY", 28),
    (b"CH", 21), (b"CR", 22), (b"CY", 28), (b"CZ", 24), (b"DE", 22), (b"DJ", 27),
    (b"DK", 18), (b"DO", 28), (b"EE", 20), (b"EG", 29), (b"ES", 24), (b"FI", 18),
    (b"FK", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22), (b"GE", 22), (b"GI", 23),
    (b"GL", 18), (b"GR", 27), (b"GT", 28), (b"HN", 28), (b"HR", 21), (b"HU", 28),
    (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26), (b"IT", 27), (b"JO", 30),
    (b"KW", 30), (b"KZ", 20), (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20),
    (b"LU", 20), (b"LV", 21), (b"LY", 25), (b"MC", 27), (b"MD", 24), (b"ME", 22),
    (b"MK", 19), (b"MN", 20), (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NI", 28),
    (b"NL", 18), (b"NO", 15), (b"OM", 23), (b"PK", 24), (b"PL", 28), (b"PS", 29),
    (b"PT", 25), (b"QA", 29), (b"RO", 24), (b"RS", 22), (b"RU", 33), (b"SA", 24),
    (b"SC", 31), (b"SD", 18), (b"SE", 24), (b"SI", 19), (b"SK", 24), (b"SM", 27),
    (b"SO", 23), (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24), (b"TR", 26),
    (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20), (b"YE", 30),
];

/// US SSN `AAA-GG-SSSS`: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn(v: &[u8]) -> bool {
    let ds: Vec<u32> = digits(v).collect();
    if ds.len() != 9 {
        return false;
    }
    let area = ds[0] * 100 + ds[1] * 10 + ds[2];
    let group = ds[3] * 10 + ds[4];
    let serial = ds[5] * 1000 + ds[6] * 100 + ds[7] * 10 + ds[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Phone numbers: 7–15 digits (E.164), not all one digit, and not shaped like a date or time.
fn phone(v: &[u8]) -> bool {
    let ds: Vec<u32> = digits(v).collect();
    if !(7..=15).contains(&ds.len()) || ds.iter().all(|&d| d == ds[0]) {
        return false;
    }
    // 2026-11-22, 2026.11.22, 22/11/2026: dates, not phones
    let date_like = v.len() == 10 && (v[4] == v[7]) && matches!(v[4], b'-' | b'.' | b'/')
        || v.len() == 10 && (v[2] == v[5]) && matches!(v[2], b'-' | b'.' | b'/');
    !date_like
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_follows_a_name() {
        let follows = |text: &str| assignment_operator(text.as_bytes(), 0, 5, 128).is_some();
        for yes in [
            "token=x",
            "token_id: x",
            "tokenX.v-2 \t:= x",
            "token' => x",
            "token\"\n:x",
        ] {
            assert!(follows(yes), "{yes}");
        }
        for no in [
            "token",
            "token x = y",
            "token(x)=y",
            "token'' = x",
            "token\" \" = x",
        ] {
            assert!(!follows(no), "{no}");
        }
        // Only `reach` bytes are read past the keyword.
        assert_eq!(assignment_operator(b"token_long_name = x", 0, 5, 8), None);
        assert_eq!(
            assignment_operator(b"token_long_name = x", 0, 5, 13),
            Some(16)
        );
        fn flag(text: &str) -> Option<&str> {
            let start = text.find("pass").unwrap();
            assignment_operator(text.as_bytes(), start, start + 8, 128).map(|op| &text[op..])
        }
        assert_eq!(flag("mysql --password Xk9m db"), Some(" Xk9m db"));
        assert_eq!(flag("--db-password\t'a b'"), Some("\t'a b'"));
        for no in [
            "--password --verbose",
            "--password \nnext",
            "--password ",
            "x--password value",
            "-password value",
            "password value",
        ] {
            assert_eq!(flag(no), None, "{no}");
        }
    }

    /// `may_hold` for the first digit run of `text`.
    fn holds(gate: Gate, text: &str) -> bool {
        let runs = crate::runs::find(text.as_bytes()).digits;
        may_hold(gate, text.as_bytes(), &runs[0])
    }

    #[test]
    fn iban_runs_follow_a_country_code_in_groups_of_four() {
        assert!(holds(Gate::Iban, "DE89 3704 0044 0532 0130 00"));
        assert!(holds(Gate::Iban, "iban: GB82 WEST 1234 5698 7654 32"));
        assert!(holds(Gate::Iban, "DE8937040044-0532"));
        assert!(!holds(Gate::Iban, "on 2026-11-22 DE"));
        assert!(!holds(Gate::Iban, "DE89 10.254.252.92"));
        assert!(!holds(Gate::Iban, "DE89 1234  5678"));
        assert!(!holds(Gate::Iban, "commit 3e41567612378901 done"));
        assert!(holds(Gate::Iban, "iban: gb82 west 1234 5698 7654 32"));
        assert!(!holds(Gate::Iban, "sha 7fab12 3456 7890 1234"));
        assert!(holds(Gate::Iban, "Gb82 West 1234 5698 7654 32"));
        assert!(!holds(Gate::Iban, "xGb82 1234 5698 7654"));
    }

    #[test]
    fn numbers_glued_to_words_are_not_phones_cards_or_ssns() {
        for gate in [Gate::Phone, Gate::Ssn, Gate::Luhn] {
            assert!(!holds(gate, "id a33b68ca-1903-4124-5678-7046"), "{gate:?}");
            assert!(!holds(gate, "x_4111111111111111"), "{gate:?}");
        }
        assert!(holds(Gate::Phone, "call +1 (415) 555-2671"));
        assert!(holds(Gate::Phone, "ref-12 (415) 555-2671"));
        assert!(holds(Gate::Ssn, "ssn 123-45-6789"));
        assert!(holds(Gate::Luhn, "card 4111 1111 1111 1111"));
    }

    #[test]
    fn phone_numbers_may_head_longer_runs_split_by_separators() {
        assert!(holds(Gate::Phone, "(+14111 1111 1111 1111"));
        assert!(!holds(Gate::Phone, "id 12345678901234567"));
    }

    #[test]
    fn entropy_of_known_strings() {
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-9);
        assert!(shannon_entropy(b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") > 4.0);
    }

    #[test]
    fn decoys_are_rejected() {
        for decoy in [
            "550e8400-e29b-41d4-a716-446655440000",
            "v1.24.3-beta.1",
            "${DATABASE_PASSWORD}",
            "{{ secrets.token }}",
            "<your-token-here>",
            "xxxxxxxxxxxxxxxx",
            "os.environ.get",
            "changeme123",
            "/run/secrets/db_password",
            "~/.config/app/token.json",
        ] {
            assert!(
                !passes(Gate::Entropy(3.0), decoy.as_bytes(), 0, decoy.len()),
                "{decoy}"
            );
        }
        for secret in ["hQ7#vL2!pX9@mR4$", "/Tr0ub4dor/3xK9qLm", "/x9k2mq7vz"] {
            assert!(
                passes(Gate::Entropy(3.0), secret.as_bytes(), 0, secret.len()),
                "{secret}"
            );
        }
    }

    #[test]
    fn placeholders_read_as_one_whole() {
        for placeholder in [
            "your-password-here",
            "YOUR_API_KEY_HERE",
            "your password",
            "changeme",
            "CHANGEME123",
            "(redacted)",
            "[REDACTED:email]",
            "placeholder",
            "<token>",
            "${VAR}",
            "sk-xxxxxxxxxxxxxxxx",
        ] {
            assert!(is_placeholder(placeholder.as_bytes()), "{placeholder}");
        }
        for value in [
            "Your-Company-2024!",
            "your-key-2024",
            "MyPlaceholder#99x",
            "Changeme!Xk9",
            "redacted-files-77",
        ] {
            assert!(!is_placeholder(value.as_bytes()), "{value}");
        }
    }

    #[test]
    fn references_stand_whole_for_a_value() {
        for reference in [
            "$DB_PASSWORD",
            "${DB_PASSWORD}",
            "${DB_PASSWORD:-dev}",
            "$(vault read -field=pw db)",
            "$env:DB_PASSWORD",
        ] {
            assert!(is_placeholder(reference.as_bytes()), "{reference}");
        }
        for value in ["$3cr3t!Pw", "$ecretPa55!", "$x-y"] {
            assert!(!is_reference(value.as_bytes()), "{value}");
        }
        assert!(passes(Gate::NotPlaceholder, b"$3cr3t!Pw", 0, 9));
    }

    #[test]
    fn checksums() {
        assert!(luhn(b"4111 1111 1111 1111"));
        assert!(luhn(b"5500-0000-0000-0004"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111 1111 1111 1112"));
        assert!(!luhn(b"1234567812345670")); // valid Luhn, no issuer starts with 1
        for (span, card) in [
            ("4111 1111 1111 1111 05", "4111 1111 1111 1111"),
            ("12 4111-1111-1111-1111", "4111-1111-1111-1111"),
            ("4111111111111111 123", "4111111111111111"),
        ] {
            let (start, end) = narrowed(Gate::Luhn, span.as_bytes()).unwrap();
            assert_eq!(&span[start..end], card);
        }
        assert_eq!(narrowed(Gate::Luhn, b"4111 1111 1111 1112 05"), None);
        assert_eq!(narrowed(Gate::Iban, b"4111 1111 1111 1111 05"), None);
        assert!(iban(b"DE89 3704 0044 0532 0130 00"));
        assert!(iban(b"GB82WEST12345698765432"));
        assert!(!iban(b"DE89 3704 0044 0532 0130 01"));
        assert!(iban(b"Gb82 West 1234 5698 7654 32"));
        assert!(iban(b"GB82 west 1234 5698 7654 32"));
        assert!(!iban(b"Gb82West12345698765432"));
        assert!(!iban(b"Gb82 West1234 5698 7654 32"));
        assert!(!iban(b"Gb82 West 1234 5698 7654 3 2"));
        assert!(ssn(b"123-45-6789"));
        assert!(!ssn(b"000-45-6789") || !ssn(b"666-12-3456"));
        assert!(!ssn(b"123-00-6789"));
        assert!(phone(b"+14155552671"));
        assert!(phone(b"(415) 555-2671"));
        assert!(!phone(b"2026-11-22"));
        assert!(!phone(b"1111111"));
    }

    #[test]
    fn names_and_prose_read_as_words_and_generated_secrets_do_not() {
        for words in [
            "signature",
            "TokenStream",
            "bert-base-uncased",
            "Ec2InstanceMetadata",
            "HTTPRequestHandler",
            "please log in again",
        ] {
            assert!(reads_as_words(words.as_bytes()), "{words}");
        }
        for secret in [
            "Xk9mQ2vLp7rT4Zz8",
            "xpeghu4b5YboxeNeFVdm3DOz",
            "qwxkzjvbnmrtplsd",
            "Password123",
            "Summer2024!",
            "abc Xk9mQ2vLp7rT4Zz",
            "1a167f738b41502721d706bdf55ac4eaf0dfaee43083e1081aef48b1685feb79",
        ] {
            assert!(!reads_as_words(secret.as_bytes()), "{secret}");
        }
    }
}
