//! Property tests: arbitrary input never panics; redaction is idempotent and finds nothing new
//! in its own output, for texts and for JSON documents (where pieces of a secret may sit in
//! neighbouring strings).

use aa_security::Limits;
use proptest::prelude::*;
use serde_json::Value;

use crate::SCANNER;

/// Text built from fragments that trigger rules, encodings and Unicode tricks, mixed with noise.
fn texty() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("AKIA".to_owned()),
        Just("ghp_".to_owned()),
        Just("password=".to_owned()),
        Just("@".to_owned()),
        Just("%4".to_owned()),
        Just("\\u00".to_owned()),
        Just("-----BEGIN PRIVATE KEY-----".to_owned()),
        Just("\u{200B}".to_owned()),
        Just("ｇ".to_owned()),
        Just("4111 1111 1111 1111".to_owned()),
        Just("[REDACTED:x]".to_owned()),
        "[A-Za-z0-9+/=_-]{1,40}",
        "[0-9 ()+-]{1,20}",
        ".{0,12}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let found = SCANNER.scan_bytes(&bytes);
        for f in &found {
            prop_assert!(f.start < f.end && f.end <= bytes.len());
        }
        let r = SCANNER.redact_event(&bytes, &Limits::default());
        prop_assert_eq!(r.receipts.len() >= found.len(), true);
    }

    #[test]
    fn findings_are_ordered_disjoint_and_on_char_boundaries(text in texty()) {
        let found = SCANNER.scan(&text);
        for pair in found.windows(2) {
            prop_assert!(pair[0].end <= pair[1].start);
        }
        for f in &found {
            prop_assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        }
    }

    #[test]
    fn redaction_is_idempotent(text in texty()) {
        let once = SCANNER.redact(&text);
        let twice = SCANNER.redact(&once.text);
        prop_assert_eq!(&twice.text, &once.text);
        prop_assert!(twice.receipts.is_empty(), "found again: {:?}", twice.receipts);
    }

    /// Bytes that are not UTF-8 among the pieces: the valid runs are read alone and joined.
    #[test]
    fn bytes_redact_once_and_for_all(
        pieces in prop::collection::vec(
            prop_oneof![texty().prop_map(String::into_bytes), Just(vec![0xFF]), Just(vec![0xC3])],
            0..8,
        )
    ) {
        let bytes = pieces.concat();
        let once = SCANNER.redact_bytes(&bytes);
        for r in &once.receipts {
            prop_assert!(r.start < r.end && r.end <= bytes.len() as u64, "{:?}", r);
        }
        let twice = SCANNER.redact_bytes(&once.bytes);
        prop_assert_eq!(&twice.bytes, &once.bytes);
        prop_assert!(twice.receipts.is_empty(), "found again: {:?}", twice.receipts);
    }

    #[test]
    fn documents_redact_once_and_for_all(
        entries in prop::collection::vec((texty(), prop::collection::vec(texty(), 1..4)), 0..8)
    ) {
        let mut doc = Value::Object(
            entries
                .into_iter()
                .map(|(k, vs)| {
                    let v = if vs.len() == 1 { Value::from(vs[0].clone()) } else { Value::from(vs) };
                    (k, v)
                })
                .collect(),
        );
        let original = doc.clone();
        let receipts = SCANNER.redact_json(&mut doc, &Limits::default());
        for r in &receipts {
            prop_assert!(r.start <= r.end, "{:?}", r);
        }
        if receipts.is_empty() {
            prop_assert_eq!(&doc, &original);
        }
        let again = SCANNER.redact_json(&mut doc, &Limits::default());
        prop_assert!(again.is_empty(), "found again: {:?} in {}", again, doc);
    }
}
