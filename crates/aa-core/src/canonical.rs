//! Canonical JSON: object keys sorted (by bytes) at every level, no white space. Hashes and
//! signatures are taken over this form, so equal values always hash alike.

use serde_json::Value;

/// `value` in canonical form, whatever order its maps keep.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
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

/// Appends `s` as a JSON string.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
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

    use super::canonical;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let value = json!({"b": {"y": 1, "x": [true, null]}, "a": "é\n"});
        assert_eq!(
            String::from_utf8(canonical(&value)).unwrap(),
            r#"{"a":"é\n","b":{"x":[true,null],"y":1}}"#
        );
    }
}
