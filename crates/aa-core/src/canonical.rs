//! Canonical JSON: object keys sorted (by bytes) at every level, no white space. Hashes and
//! signatures are taken over this form, so equal values always hash alike.

use serde_json::Value;

use crate::lanes::Lane;

/// `value` in canonical form, whatever order its maps keep.
pub fn canonical(value: &Value) -> Vec<u8> {
    // Room for a typical event up front spares regrowing the buffer a few times.
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

/// `value` in canonical form, as text: the compact JSON `serde_json` writes (maps sorted), at
/// less cost than its `Display`.
pub fn canonical_string(value: &Value) -> String {
    // The writer emits UTF-8 only (strings as they are, escapes and scalars in ASCII).
    String::from_utf8(canonical(value))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends `value` in canonical form to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            // Maps keep their keys sorted unless serde_json's `preserve_order` is on somewhere
            // in the build; only then is an order made here.
            if map.keys().is_sorted() {
                write_entries(map.iter(), out);
            } else {
                let mut sorted: Vec<(&String, &Value)> = map.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                write_entries(sorted.into_iter(), out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(text) => write_str(text, out),
        scalar => write_scalar(scalar, out),
    }
}

fn write_entries<'a>(entries: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut Vec<u8>) {
    for (i, (key, item)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(key, out);
        out.push(b':');
        write_canonical(item, out);
    }
}

/// Appends `s` as a JSON string, escaped byte for byte as `serde_json` escapes it (hashes of
/// records written before depend on that): `"` and `\\`, the control characters with short
/// escapes as such, other control characters as `\u00xx`; everything else as is.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `bytes[copied..at]` needs no escape and is not written yet.
    let (mut copied, mut at) = (0, 0);
    // Writes what is pending and the escape of the byte `first` bytes past `at`; the next
    // byte to read.
    let mut escape = |at: usize, first: usize, out: &mut Vec<u8>| {
        let at = at + first;
        out.extend_from_slice(bytes.get(copied..at).unwrap_or_default());
        write_escape(bytes.get(at).copied().unwrap_or_default(), out);
        copied = at + 1;
        copied
    };
    // Sixteen bytes at a time in a vector while sixteen are left (a long text's bulk), then
    // eight in a word, the last one padded: a string of a few bytes is one test.
    while let Some(chunk) = bytes.get(at..at + 16) {
        match escape_lanes(chunk) {
            0 => at += 16,
            lanes => at = escape(at, lanes.trailing_zeros() as usize, out),
        }
    }
    while at < bytes.len() {
        match escape_mask(word_at(bytes, at)) {
            0 => at += 8,
            // The lowest flag marks the first byte to escape (see `escape_mask`).
            flags => at = escape(at, flags.trailing_zeros() as usize / 8, out),
        }
    }
    out.extend_from_slice(bytes.get(copied..).unwrap_or_default());
    out.push(b'"');
}

/// One bit for each of `chunk`'s sixteen bytes that is a control character, `"` or `\\`
/// (byte `i` on bit `i`), compared all at once.
fn escape_lanes(chunk: &[u8]) -> u32 {
    let mut bytes = [0u8; 16];
    for (to, &from) in bytes.iter_mut().zip(chunk) {
        *to = from;
    }
    let lane = Lane::new(bytes);
    u32::from(Lane::bits(
        lane.in_range(0, 0x1f) | lane.is(b'"') | lane.is(b'\\'),
    ))
}

/// The eight bytes of `bytes` from `at`, little-endian; past its end, spaces (which need no
/// escape). A short tail is read as the string's last eight bytes shifted down, where the
/// string is that long, to spare a copy.
fn word_at(bytes: &[u8], at: usize) -> u64 {
    const SPACES: u64 = u64::from_le_bytes([b' '; 8]);
    let load = |from: usize| {
        bytes
            .get(from..from + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    if let Some(word) = load(at) {
        return word;
    }
    let missing = at + 8 - bytes.len();
    match bytes.len().checked_sub(8).and_then(load) {
        // `missing` is 1 to 7 here: the bytes before `at` shifted out, spaces shifted in.
        Some(last) => (last >> (8 * missing)) | (SPACES << (8 * (8 - missing))),
        None => {
            let mut word = [b' '; 8];
            for (slot, &byte) in word.iter_mut().zip(bytes.get(at..).unwrap_or_default()) {
                *slot = byte;
            }
            u64::from_le_bytes(word)
        }
    }
}

/// The high bit of each byte of `word` that is a control character, `"` or `\\`. The lowest
/// flag is always exact; above it a flag may be false (a borrow carries into the next byte),
/// so only the lowest is read.
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = u64::MAX / 255;
    const HIGHS: u64 = ONES * 0x80;
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    below_space
        | zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
}

/// Appends the escape JSON writes for `byte`, a control character, `"` or `\\`.
fn write_escape(byte: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => {
            let (high, low) = (HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]);
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', high, low]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{canonical, canonical_string, write_str};

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let value = json!({"b": {"y": 1, "x": [true, null]}, "a": "é\n"});
        assert_eq!(
            String::from_utf8(canonical(&value)).unwrap(),
            r#"{"a":"é\n","b":{"x":[true,null],"y":1}}"#
        );
    }

    /// Every byte value below 0x80, in words and alone, is escaped as `serde_json` escapes it.
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        cases.push((0u8..0x80).map(char::from).collect());
        cases.push("plain text of more than eight bytes, é ü 日本 \u{1F600}".to_owned());
        cases.push("a\"b\\c\nd\u{7f}e\u{1f}f and after".to_owned());
        for case in cases {
            let mut ours = Vec::new();
            write_str(&case, &mut ours);
            assert_eq!(ours, serde_json::to_vec(&case).unwrap(), "{case:?}");
        }
    }

    /// Any JSON value: strings that need escapes, numbers of every kind, nesting.
    fn any_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "(?s).{0,24}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("(?s).{0,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The wire's JSON fields are written this way; readers parse them as `serde_json`'s.
        #[test]
        fn canonical_text_is_what_serde_json_writes(value in any_value()) {
            proptest::prop_assert_eq!(
                canonical_string(&value),
                serde_json::to_string(&value).unwrap()
            );
        }

        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(
            text in proptest::prop_oneof!["(?s).{0,80}", "[\"\\\\\\x00-\\x1f\\x7f a-zé]{0,40}"]
        ) {
            let mut ours = Vec::new();
            write_str(&text, &mut ours);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&text).unwrap());
        }
    }
}
