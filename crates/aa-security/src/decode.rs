//! Encoded layers: segments of text that are base64, base64url, hex, percent-encoding or JSON
//! string escapes, decoded so that a secret hidden in them is found too. Only decodings that
//! yield mostly printable UTF-8 are kept, which discards the random runs (hashes, identifiers)
//! that merely look encoded.

use aa_core::lanes::Lane;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

use crate::runs::Runs;

/// How a segment was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Base64, standard or URL-safe alphabet.
    Base64,
    /// Hexadecimal bytes.
    Hex,
    /// `%XX` percent-encoding.
    Percent,
    /// JSON string escapes (`\u0067`, `\n`, ...).
    JsonEscape,
}

impl Encoding {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Base64 => "base64",
            Encoding::Hex => "hex",
            Encoding::Percent => "percent",
            Encoding::JsonEscape => "json_escape",
        }
    }
}

/// A decoded segment of a text, at `start..end` in it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) encoding: Encoding,
    pub(crate) decoded: String,
    /// For escapes decoded in place (percent, JSON), where in the text each byte of `decoded`
    /// came from, and its end one past: a finding inside is its own span in the text, escapes
    /// included, where base64 and hex take the whole segment. See [`Unescaped`].
    pub(crate) origin: Option<Vec<usize>>,
}

const MIN_BASE64: usize = 16;
const MIN_HEX: usize = 16;
/// How many decoded bytes are checked before a whole run is decoded (from 16 characters, the
/// shortest run decoded).
const HEAD_BYTES: usize = 12;
/// The most places in one run a base64 decoding is tried from.
const MAX_STARTS: usize = 9;

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
pub(crate) const STANDARD: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

/// Calls `each` with every decodable segment of `text`, given what [`crate::runs::find`] found
/// in it, one at a time: a segment and its map live only while it is scanned.
pub(crate) fn segments(text: &str, runs: &Runs, mut each: impl FnMut(Segment)) {
    let bytes = text.as_bytes();
    for &(start, end) in &runs.encoded {
        decode_run(bytes, start, end, &mut each);
    }
    if runs.has_percent {
        delimited(text, Escapes::PERCENT, &mut each);
    }
    if runs.has_backslash {
        delimited(text, Escapes::JSON, &mut each);
    }
}

/// Decodes one run as hex or base64 (standard or URL-safe, by the characters it uses), with
/// up to two `=` of padding after it.
fn decode_run(bytes: &[u8], start: usize, end: usize, each: &mut impl FnMut(Segment)) {
    let Some(run) = bytes.get(start..end) else {
        return;
    };
    // One pass, sixteen bytes at a time and without early exits: most runs are hashes and
    // identifiers, read whole on the way to being rejected.
    let RunAlphabet {
        all_hex,
        any_std,
        any_url,
        starts,
        start_count,
    } = RunAlphabet::of(run);
    let len = run.len();
    if all_hex
        && len >= MIN_HEX
        && len.is_multiple_of(2)
        && hex_head_may_be_text(run)
        && let Some(decoded) = hex_decode(run).and_then(printable)
    {
        each(Segment {
            start,
            end,
            encoding: Encoding::Hex,
            decoded,
            origin: None,
        });
        return;
    }
    if len < MIN_BASE64 || (any_std && any_url) {
        return;
    }
    let padding = bytes
        .get(end..)
        .unwrap_or_default()
        .iter()
        .take(2)
        .take_while(|b| **b == b'=')
        .count();
    let engine = if any_url { &URL_SAFE } else { &STANDARD };
    for &offset in starts.get(..start_count).unwrap_or_default() {
        let Some(tail) = run.get(offset..).filter(|t| t.len() >= MIN_BASE64) else {
            break;
        };
        let usable = &tail[..tail.len() - tail.len() % 4 * usize::from(tail.len() % 4 == 1)];
        // Most runs are random (hashes, ids): the first twelve bytes are seldom valid UTF-8,
        // which all of a decoding must be to be kept, and most fail in the first three.
        if !base64_head::<3>(usable).is_some_and(|head| may_be_text(&head))
            || !base64_head::<HEAD_BYTES>(usable).is_some_and(|head| may_be_text(&head))
        {
            continue;
        }
        if let Some(decoded) = engine.decode(usable).ok().and_then(printable) {
            let start = start + offset;
            each(Segment {
                start,
                end: end + padding,
                encoding: Encoding::Base64,
                decoded,
                origin: None,
            });
            return;
        }
    }
}

/// Which characters a run of the base64 alphabets uses, and where decoding it may start.
struct RunAlphabet {
    all_hex: bool,
    /// `+` or `/`, of the standard alphabet only.
    any_std: bool,
    /// `-` or `_`, of the URL-safe alphabet only.
    any_url: bool,
    /// The run's start and just after each of its first separators (`+`, `/`, `-`, `_`): a
    /// run may begin with text that is not part of the encoding (`/v1/dG9r...`).
    starts: [usize; MAX_STARTS],
    start_count: usize,
}

impl RunAlphabet {
    /// One pass, sixteen bytes at a time; separators are taken from each lane's bit mask, so
    /// a run's bytes are not branched on one by one (the dashes of a UUID made such a branch
    /// mispredict).
    fn of(run: &[u8]) -> RunAlphabet {
        let (mut hex, mut any_std, mut any_url) = (u16::MAX, false, false);
        let mut alphabet = RunAlphabet {
            all_hex: false,
            any_std: false,
            any_url: false,
            starts: [0; MAX_STARTS],
            start_count: 1,
        };
        let mut lanes = run.chunks_exact(16);
        let mut base = 0;
        for lane in lanes.by_ref().filter_map(|c| <[u8; 16]>::try_from(c).ok()) {
            let lane = Lane::new(lane);
            let is_hex = lane.in_range(b'0', b'9') | lane.in_range_ignoring_case(b'a', b'f');
            hex &= Lane::bits(is_hex);
            let std = Lane::bits(lane.is(b'+') | lane.is(b'/'));
            let url = Lane::bits(lane.is(b'-') | lane.is(b'_'));
            (any_std, any_url) = (any_std | (std != 0), any_url | (url != 0));
            alphabet.note_separators(base, u32::from(std | url));
            base += 16;
        }
        let rest = lanes.remainder();
        let mut separators = 0u32;
        for (i, &b) in rest.iter().enumerate() {
            let (std, url) = (matches!(b, b'+' | b'/'), matches!(b, b'-' | b'_'));
            (any_std, any_url) = (any_std | std, any_url | url);
            separators |= u32::from(std | url) << i;
        }
        alphabet.note_separators(base, separators);
        alphabet.all_hex = hex == u16::MAX && rest.iter().all(u8::is_ascii_hexdigit);
        (alphabet.any_std, alphabet.any_url) = (any_std, any_url);
        alphabet
    }

    /// Records a start after each separator of a lane (bit `i` for the byte at `base + i`)
    /// while there is room.
    fn note_separators(&mut self, base: usize, mut separators: u32) {
        while separators != 0
            && let Some(slot) = self.starts.get_mut(self.start_count)
        {
            *slot = base + separators.trailing_zeros() as usize + 1;
            self.start_count += 1;
            separators &= separators - 1;
        }
    }
}

/// How far either side of an escape that hides a secret's character the text is decoded with
/// it: a secret only one piece of which is escaped (`\u0034111 1111 1111 1111`,
/// `pass\u0077ord = "..."`) reads whole only with its neighbours.
const NEIGHBOURS: usize = 256;

/// How long a segment of such escapes near one another grows before the next one starts
/// another, so its map stays small.
const MOST_DECODED: usize = 16 * 1024;

/// An escaping scheme decoded in place: its marker byte, the escape written at a marker (none
/// when the marker starts no escape), and whether it hides a character that encoders leave as
/// it is.
#[derive(Clone, Copy)]
struct Escapes {
    marker: u8,
    encoding: Encoding,
    escape_at: fn(&[u8]) -> Option<Escape>,
    hides_at: fn(&[u8]) -> bool,
}

/// One escape decoded: up to four bytes (a character's UTF-8, or one byte of percent-encoding)
/// and how many bytes it was written in.
#[derive(Clone, Copy)]
struct Escape {
    bytes: [u8; 4],
    len: usize,
    written: usize,
}

impl Escape {
    fn char(c: char, written: usize) -> Escape {
        let mut bytes = [0; 4];
        let len = c.encode_utf8(&mut bytes).len();
        Escape {
            bytes,
            len,
            written,
        }
    }
}

impl Escapes {
    /// URLs escape reserved characters and white space, never letters or digits.
    const PERCENT: Escapes = Escapes {
        marker: b'%',
        encoding: Encoding::Percent,
        escape_at: |at| {
            let byte = at.get(1..3).and_then(hex_byte)?;
            Some(Escape {
                bytes: [byte, 0, 0, 0],
                len: 1,
                written: 3,
            })
        },
        hides_at: |at| {
            at.get(1..3)
                .and_then(hex_byte)
                .is_some_and(|b| b.is_ascii_alphanumeric())
        },
    };
    /// JSON writers escape quotes, backslashes, control characters and (some) non-ASCII
    /// text, never a printable ASCII character in `\u` form nor its fullwidth twin.
    const JSON: Escapes = Escapes {
        marker: b'\\',
        encoding: Encoding::JsonEscape,
        escape_at: json_escape_at,
        hides_at: |at| {
            json_code_at(at)
                .is_some_and(|c| (0x21..=0x7E).contains(&c) || (0xFF01..=0xFF5E).contains(&c))
        },
    };

    /// Decodes the escapes in `segment`, which starts at `offset` in the text; `None` when it
    /// holds none. A marker that starts no escape (`\q`, a `\` at the end, `\u` without four
    /// hex digits, `%G1`) is kept as written rather than giving up on the segment, so a stray
    /// one cannot hide what the rest spells out.
    fn decode(self, segment: &str, offset: usize) -> Option<Unescaped> {
        let bytes = segment.as_bytes();
        let mut out = Unescaped::with_capacity(bytes.len());
        let (mut from, mut search, mut any) = (0, 0, false);
        while let Some(found) = memchr::memchr(self.marker, bytes.get(search..)?) {
            let at = search + found;
            search = at + 1;
            if let Some(escape) = bytes.get(at..).and_then(self.escape_at) {
                out.copy(bytes.get(from..at).unwrap_or_default(), offset + from);
                out.push(
                    escape.bytes.get(..escape.len).unwrap_or_default(),
                    offset + at,
                );
                (from, search, any) = (at + escape.written, at + escape.written, true);
            }
        }
        out.copy(bytes.get(from..).unwrap_or_default(), offset + from);
        any.then_some(out)
    }
}

/// Segments around escapes, decoded with a map back to the text: each escape's token (no
/// white space, quotes or brackets), and when the token holds an escape that hides a character
/// ([`Escapes::hides_at`]), the tokens within [`NEIGHBOURS`] bytes either side too, such escapes
/// near one another in one segment. Text escaped as encoders write it is read a token at a
/// time, as before, so that JSON read raw, dense with `\n` and `\"`, is not scanned twice
/// over. A marker that starts no escape (`50% off`, `C:\Users`) starts no segment.
fn delimited(text: &str, escapes: Escapes, each: &mut impl FnMut(Segment)) {
    let bytes = text.as_bytes();
    // A boundary ends a token; inside JSON escapes, an escaped quote (`\"`) does not.
    let boundary = |i: usize| {
        let b = bytes[i];
        let escaped_quote = b == b'"' && escapes.marker == b'\\' && i > 0 && bytes[i - 1] == b'\\';
        !escaped_quote && (b.is_ascii_whitespace() || b"\"'<>()[]{},;`".contains(&b))
    };
    let token_start = |from: usize, i: usize| {
        (from..i)
            .rev()
            .find(|&j| boundary(j))
            .map_or(from, |b| b + 1)
    };
    let token_end = |i: usize| {
        (i..bytes.len())
            .find(|&j| boundary(j))
            .unwrap_or(bytes.len())
    };
    let next = |is_escape: &dyn Fn(&[u8]) -> bool, from: usize, to: usize| {
        let mut at = from;
        while let Some(found) = memchr::memchr(escapes.marker, bytes.get(at..to)?) {
            at += found;
            if bytes.get(at..).is_some_and(is_escape) {
                return Some(at);
            }
            at += 1;
        }
        None
    };
    // Segments do not overlap: each starts where the last one ended, or after.
    let mut from = 0;
    let escape_at = |at: &[u8]| (escapes.escape_at)(at).is_some();
    while let Some(at) = next(&escape_at, from, bytes.len()) {
        let mut start = token_start(from, at);
        let mut end = token_end(at);
        // Tokens are short: read byte by byte, not searched.
        let token = bytes.get(start..end).unwrap_or_default();
        let hides = token
            .iter()
            .enumerate()
            .any(|(i, &b)| b == escapes.marker && token.get(i..).is_some_and(escapes.hides_at));
        if hides {
            start = token_start(from, start.saturating_sub(NEIGHBOURS).max(from));
            while end - start < MOST_DECODED
                && let Some(hidden) =
                    next(&escapes.hides_at, end, (end + NEIGHBOURS).min(bytes.len()))
            {
                end = token_end(hidden);
            }
            end = token_end((end + NEIGHBOURS).min(bytes.len()));
        }
        if let Some(segment) = text.get(start..end)
            && let Some(unescaped) = escapes.decode(segment, start)
        {
            let (decoded, origin) = unescaped.into_text(end);
            each(Segment {
                start,
                end,
                encoding: escapes.encoding,
                decoded,
                origin: Some(origin),
            });
        }
        from = end.max(at + 1);
    }
}

/// The JSON string escape at `at[0]`, if one starts there: `\n`, `\"`, `\u0067`, ...
fn json_escape_at(at: &[u8]) -> Option<Escape> {
    let c = match at.get(1)? {
        b'n' => '\n',
        b't' => '\t',
        b'r' => '\r',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'/' => '/',
        b'\\' => '\\',
        b'"' => '"',
        b'u' => {
            let code = json_code_at(at)?;
            return Some(Escape::char(char::from_u32(code).unwrap_or('\u{FFFD}'), 6));
        }
        _ => return None,
    };
    Some(Escape::char(c, 2))
}

/// The code point of the `\uXXXX` escape at `at[0]`.
fn json_code_at(at: &[u8]) -> Option<u32> {
    let hex = at.strip_prefix(b"\\u")?.get(..4)?;
    hex.iter().try_fold(0, |code, &digit| {
        let value = HEX_VALUES[usize::from(digit)];
        (value < 16).then_some(code << 4 | u32::from(value))
    })
}

/// Bytes decoded in place, and for each the offset in the text of the escape or character it
/// came from.
#[derive(Debug)]
struct Unescaped {
    bytes: Vec<u8>,
    origin: Vec<usize>,
}

impl Unescaped {
    fn with_capacity(len: usize) -> Unescaped {
        Unescaped {
            bytes: Vec::with_capacity(len),
            origin: Vec::with_capacity(len + 1),
        }
    }

    /// An escape's bytes, all from `at`.
    fn push(&mut self, piece: &[u8], at: usize) {
        self.bytes.extend_from_slice(piece);
        self.origin.resize(self.bytes.len(), at);
    }

    /// Bytes as written, from `at` on.
    fn copy(&mut self, run: &[u8], at: usize) {
        self.bytes.extend_from_slice(run);
        self.origin.extend(at..at + run.len());
    }

    /// The decoded text and, for each of its bytes and one past its end (`end`), where in the
    /// text it came from: a span ends where the piece after its last byte starts. Bytes that
    /// are not UTF-8 (a stray `%FF`) do not hide the rest: they read as U+FFFD, from where
    /// they were.
    fn into_text(self, end: usize) -> (String, Vec<usize>) {
        let (text, mut origin) = match String::from_utf8(self.bytes) {
            Ok(text) => (text, self.origin),
            Err(e) => {
                let bytes = e.into_bytes();
                let mut text = String::with_capacity(bytes.len());
                let mut origin = Vec::with_capacity(bytes.len() + 1);
                let mut at = 0;
                for chunk in bytes.utf8_chunks() {
                    let (valid, invalid) = (chunk.valid(), chunk.invalid());
                    text.push_str(valid);
                    let from = self.origin.get(at..at + valid.len());
                    origin.extend_from_slice(from.unwrap_or_default());
                    at += valid.len();
                    if !invalid.is_empty() {
                        text.push('\u{FFFD}');
                        origin.resize(text.len(), self.origin.get(at).copied().unwrap_or(end));
                        at += invalid.len();
                    }
                }
                (text, origin)
            }
        };
        origin.push(end);
        (text, origin)
    }
}

/// The value of each base64 character in either alphabet (`+` and `-` are 62, `/` and `_`
/// are 63), or [`NOT_BASE64`]. A run decoded as base64 never mixes the alphabets, so one
/// table serves both.
const BASE64_VALUES: [u8; 256] = base64_values();
const NOT_BASE64: u8 = 0xFF;

const fn base64_values() -> [u8; 256] {
    let values = numbered([NOT_BASE64; 256], b'A', 26, 0);
    let values = numbered(values, b'a', 26, 26);
    let mut values = numbered(values, b'0', 10, 52);
    values[b'+' as usize] = 62;
    values[b'-' as usize] = 62;
    values[b'/' as usize] = 63;
    values[b'_' as usize] = 63;
    values
}

/// `values` with the `count` characters from `first` on valued from `value` on.
const fn numbered(mut values: [u8; 256], first: u8, count: u8, value: u8) -> [u8; 256] {
    let mut i = 0;
    while i < count {
        values[(first + i) as usize] = value + i;
        i += 1;
    }
    values
}

/// The first `N` bytes (a multiple of three) the base64 characters `chars` decode to; `None`
/// when there are too few characters or one is not base64. Decoded by hand: most runs are
/// rejected on these bytes, and a call into the base64 engine costs more than the decoding.
fn base64_head<const N: usize>(chars: &[u8]) -> Option<[u8; N]> {
    let quanta = chars.get(..N / 3 * 4)?;
    let mut head = [0u8; N];
    let mut invalid = 0;
    for (quad, out) in quanta.chunks_exact(4).zip(head.chunks_exact_mut(3)) {
        let word = quad.iter().fold(0u32, |word, &c| {
            let value = BASE64_VALUES[usize::from(c)];
            invalid |= value;
            word << 6 | u32::from(value & 0x3F)
        });
        out.copy_from_slice(&word.to_be_bytes()[1..]);
    }
    (invalid & !0x3F == 0).then_some(head)
}

/// Whether the first bytes (up to [`HEAD_BYTES`]) the hex digits `run` decode to may begin
/// a text.
fn hex_head_may_be_text(run: &[u8]) -> bool {
    let mut head = [0u8; HEAD_BYTES];
    let mut n = 0;
    for (pair, out) in run.chunks_exact(2).zip(&mut head) {
        let Some(byte) = hex_byte(pair) else {
            return false;
        };
        *out = byte;
        n += 1;
    }
    may_be_text(head.get(..n).unwrap_or_default())
}

/// The value of each hex digit, either case, or [`NOT_HEX`]: a lookup rather than
/// `char::to_digit`, which took a sixth of the time of scanning text full of hex digests.
const HEX_VALUES: [u8; 256] = hex_values();
const NOT_HEX: u8 = 0xFF;

const fn hex_values() -> [u8; 256] {
    let values = numbered([NOT_HEX; 256], b'0', 10, 0);
    numbered(numbered(values, b'a', 6, 10), b'A', 6, 10)
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let [high, low] = pair else { return None };
    let (high, low) = (
        HEX_VALUES[usize::from(*high)],
        HEX_VALUES[usize::from(*low)],
    );
    // Either being NOT_HEX sets bits above the nibble's.
    ((high | low) < 16).then_some(high << 4 | low)
}

fn hex_decode(run: &[u8]) -> Option<Vec<u8>> {
    run.chunks_exact(2).map(hex_byte).collect()
}

/// Whether `head` can begin a text [`printable`] accepts: valid UTF-8, possibly cut inside a
/// character at its end. Control characters are not judged here, as a few are allowed in a
/// long text.
///
/// Checked by hand: the standard validator's set-up costs more than checking a few bytes, and
/// most heads are refused at their first byte above ASCII.
fn may_be_text(head: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&lead) = head.get(at) {
        if lead.is_ascii() {
            at += 1;
            continue;
        }
        // The width of the character, and the range of its second byte: no overlong forms,
        // surrogates or code points past U+10FFFF.
        let (width, second) = match lead {
            0xC2..=0xDF => (2, 0x80..=0xBF),
            0xE0 => (3, 0xA0..=0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80..=0xBF),
            0xED => (3, 0x80..=0x9F),
            0xF0 => (4, 0x90..=0xBF),
            0xF1..=0xF3 => (4, 0x80..=0xBF),
            0xF4 => (4, 0x80..=0x8F),
            _ => return false,
        };
        for k in 1..width {
            // A character cut by the end of the head may go on in the rest of the text.
            let Some(&byte) = head.get(at + k) else {
                return true;
            };
            let allowed = if k == 1 { second.clone() } else { 0x80..=0xBF };
            if !allowed.contains(&byte) {
                return false;
            }
        }
        at += width;
    }
    true
}

/// The decoded bytes as text, when they look like text: valid UTF-8, at least 8 bytes, and at
/// least 90 % printable.
fn printable(bytes: Vec<u8>) -> Option<String> {
    if bytes.len() < 8 {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    let total = text.chars().count();
    let shown = text
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
        .count();
    (shown * 10 >= total * 9).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(text: &str) -> Vec<(Encoding, String)> {
        let mut out = Vec::new();
        segments(text, &crate::runs::find(text.as_bytes()), |s| {
            out.push((s.encoding, s.decoded));
        });
        out
    }

    #[test]
    fn a_control_character_up_front_does_not_hide_a_secret() {
        let secret = "\u{1}token ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        for text in [STANDARD.encode(secret), hex] {
            assert_eq!(decoded(&text).len(), 1, "{text}");
        }
    }

    #[test]
    fn each_encoding_is_decoded() {
        let secret = "token ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let b64 = STANDARD.encode(secret);
        let url = URL_SAFE.encode("?>?>?>?>?>?>?>?>?>?> ghp_x");
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        let pct: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            decoded(&format!("x {b64} y")),
            [(Encoding::Base64, secret.to_owned())]
        );
        assert_eq!(
            decoded(&url),
            [(Encoding::Base64, "?>?>?>?>?>?>?>?>?>?> ghp_x".to_owned())]
        );
        assert_eq!(decoded(&hex), [(Encoding::Hex, secret.to_owned())]);
        assert_eq!(
            decoded(&format!("q={pct}&x=1")),
            [(Encoding::Percent, format!("q={secret}&x=1"))]
        );
        assert_eq!(
            decoded(r#"{"k": "ghp\u005fabc"}"#),
            [(Encoding::JsonEscape, r#"{"k": "ghp_abc"}"#.to_owned())]
        );
    }

    /// Each decoded byte maps to the escape or character it came from, a span's end to where
    /// the next piece starts, a byte that is not UTF-8 to its U+FFFD.
    #[test]
    fn escapes_map_back_to_where_they_were() {
        let map = |text: &str| {
            let mut out = Vec::new();
            segments(text, &crate::runs::find(text.as_bytes()), |s| {
                out.push((s.decoded, s.origin));
            });
            out
        };
        assert_eq!(
            map("a%C3%A9b%FFc"),
            [(
                "a\u{e9}b\u{FFFD}c".to_owned(),
                Some(vec![0, 1, 4, 7, 8, 8, 8, 11, 12])
            )]
        );
        assert_eq!(
            map(r"x\u00e9\qy"),
            [("x\u{e9}\\qy".to_owned(), Some(vec![0, 1, 1, 7, 8, 9, 10]))]
        );
    }

    // No `=` among the characters: padding is never inside a run.
    proptest::proptest! {
        #[test]
        fn heads_decode_as_the_engine_does(
            chars in proptest::collection::vec(proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_. ".to_vec()
            ), 0..24),
            url in proptest::bool::ANY,
        ) {
            let (engine, other_alphabet) = if url { (&URL_SAFE, b"+/") } else { (&STANDARD, b"-_") };
            let quanta = chars
                .get(..HEAD_BYTES / 3 * 4)
                .filter(|q| !q.iter().any(|c| other_alphabet.contains(c)));
            proptest::prop_assert_eq!(
                quanta.and_then(base64_head::<HEAD_BYTES>).map(Vec::from),
                quanta.and_then(|q| engine.decode(q).ok())
            );
            let first = chars.get(..4).filter(|q| !q.iter().any(|c| other_alphabet.contains(c)));
            proptest::prop_assert_eq!(
                first.and_then(base64_head::<3>).map(Vec::from),
                first.and_then(|q| engine.decode(q).ok())
            );
            let hex: Vec<u8> = chars.iter().map(|c| b"0123456789abcdef"[usize::from(c % 16)]).collect();
            let even = &hex[..hex.len() / 2 * 2];
            let head = &even[..even.len().min(2 * HEAD_BYTES)];
            proptest::prop_assert_eq!(
                hex_head_may_be_text(even),
                hex_decode(head).is_some_and(|h| may_be_text(&h))
            );
        }

        #[test]
        fn heads_are_judged_as_the_standard_validator_does(
            head in proptest::collection::vec(proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(vec![
                    0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xF5,
                ]),
            ], 0..12),
        ) {
            let standard =
                std::str::from_utf8(&head).map_or_else(|e| e.error_len().is_none(), |_| true);
            proptest::prop_assert_eq!(may_be_text(&head), standard);
        }

        #[test]
        fn every_head_of_a_text_may_be_text(text in "\\PC{0,12}", cut in 0usize..48) {
            let bytes = text.as_bytes();
            proptest::prop_assert!(may_be_text(&bytes[..cut.min(bytes.len())]));
        }

        #[test]
        fn a_head_refused_begins_no_text(head in proptest::collection::vec(proptest::num::u8::ANY, 0..12)) {
            if !may_be_text(&head) {
                for tail in [&b""[..], b"\x80", b"\x80\x80", b"\x80\x80\x80", b"a"] {
                    let mut whole = head.clone();
                    whole.extend_from_slice(tail);
                    proptest::prop_assert!(std::str::from_utf8(&whole).is_err());
                }
            }
        }

        #[test]
        fn a_runs_alphabet_is_read_as_byte_by_byte(
            run in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(b"09afAFgG@`/+-_:[{".to_vec()),
                proptest::num::u8::ANY,
            ], 0..70),
        ) {
            let alphabet = RunAlphabet::of(&run);
            proptest::prop_assert_eq!(alphabet.all_hex, run.iter().all(u8::is_ascii_hexdigit));
            proptest::prop_assert_eq!(alphabet.any_std, run.iter().any(|b| b"+/".contains(b)));
            proptest::prop_assert_eq!(alphabet.any_url, run.iter().any(|b| b"-_".contains(b)));
            let starts: Vec<usize> = std::iter::once(0)
                .chain((1..=run.len()).filter(|&i| b"+/-_".contains(&run[i - 1])))
                .take(MAX_STARTS)
                .collect();
            proptest::prop_assert_eq!(&alphabet.starts[..alphabet.start_count], &starts[..]);
        }
    }

    #[test]
    fn every_pair_of_bytes_is_read_as_hex_as_the_standard_parser_does() {
        for high in 0..=u8::MAX {
            for low in 0..=u8::MAX {
                let pair = [high, low];
                let standard = std::str::from_utf8(&pair)
                    .ok()
                    .filter(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|p| u8::from_str_radix(p, 16).ok());
                assert_eq!(hex_byte(&pair), standard, "{pair:?}");
            }
        }
    }

    #[test]
    fn random_runs_that_decode_to_garbage_are_ignored() {
        assert!(
            decoded("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").is_empty()
        );
        assert!(decoded("a_very_long_identifier_name_in_code").is_empty());
        assert!(decoded("100% sure, 50%off").is_empty());
    }
}
