//! Canonical JSON: object keys sorted (by bytes) at every level, no white space. Hashes and
//! signatures are taken over this form, so equal values always hash alike.

use serde_json::Value;

/// `value` in canonical form, whatever order its maps keep.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
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
    while at < bytes.len() {
        // Eight bytes at a time while none needs an escape: text is mostly such.
        let word = bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok());
        if word.is_some_and(|word| !needs_escape(u64::from_le_bytes(word))) {
            at += 8;
            continue;
        }
        let byte = bytes[at];
        if matches!(byte, 0x00..0x20 | b'"' | b'\\') {
            out.extend_from_slice(&bytes[copied..at]);
            write_escape(byte, out);
            copied = at + 1;
        }
        at += 1;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `word` is a control character, `"` or `\\` (the bit
/// tricks tell exactly whether any byte is, not which).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGHS: u64 = ONES * 0x80;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    below_space
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
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

    use super::{canonical, write_str};

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

    proptest::proptest! {
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
