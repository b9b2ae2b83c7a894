//! Secrets hidden by encoding or Unicode tricks are found, and the span redacted is the
//! hidden form in the original text.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::SCANNER;

const TOKEN: &str = "ghp_R8xkQ2mVt7LpZ3wN9cY4bH6jF1dS5aE0uGiK";

/// Scans `text` and returns the kinds found with their exact original slices.
fn found(text: &str) -> Vec<(String, String)> {
    SCANNER
        .scan(text)
        .into_iter()
        .map(|f| (f.kind, text[f.start..f.end].to_owned()))
        .collect()
}

#[test]
fn plain_token_is_the_baseline() {
    assert_eq!(
        found(&format!("token {TOKEN} end")),
        [("github_token".to_owned(), TOKEN.to_owned())]
    );
}

/// Each encoding is found. Base64 and hex are redacted whole; escapes decoded in place
/// (percent, JSON) over the secret's own escapes, its name left as it was.
#[test]
fn each_encoding_hides_nothing() {
    let phrase = format!("GITHUB_TOKEN={TOKEN}");
    let percent = |text: &str| -> String { text.bytes().map(|b| format!("%{b:02X}")).collect() };
    let cases = [
        (STANDARD.encode(&phrase), None),
        (URL_SAFE_NO_PAD.encode(format!("{phrase}??>>")), None),
        (
            phrase
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            None,
        ),
        (percent(&phrase), Some(percent(TOKEN))),
        (
            TOKEN
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect::<String>(),
            None,
        ),
    ];
    for (encoded, secret) in cases {
        let text = format!("payload: {encoded} (end)");
        let secret = secret.unwrap_or_else(|| encoded.clone());
        assert_eq!(
            found(&text),
            [("github_token".to_owned(), secret)],
            "{encoded}"
        );
    }
}

/// A byte that does not decode, beside ones that do, must not turn the decoding off: a stray
/// `%FF` or `\q` once hid the whole token.
#[test]
fn a_stray_escape_hides_nothing() {
    let percent: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
    let escaped: String = TOKEN
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let (first, rest) = TOKEN.split_at(1);
    let first = first.as_bytes()[0];
    for (secret, stray) in [
        (format!("%{first:02x}{rest}"), "%FF"),
        (percent, "%C3%28"),
        (format!("\\u{first:04x}{rest}"), "\\q"),
        (escaped.clone(), "\\"),
        (escaped.clone(), "\\u12"),
        (escaped, "\\uZZZZ"),
    ] {
        let text = format!("payload: {secret}{stray} (end)");
        assert_eq!(
            found(&text),
            [("github_token".to_owned(), secret.clone())],
            "{secret}{stray}"
        );
    }
}

/// An escape is decoded with the text around it, not alone: a card whose first digit is a JSON
/// escape, or a secret's name with one letter escaped, was missed. Only the secret's own span
/// in the original is redacted, its escapes included: the name stays, as does the rest of a
/// URL around a percent-encoded address.
#[test]
fn a_secret_with_one_piece_escaped_is_found_with_its_neighbours() {
    for (text, redacted) in [
        (
            r"card \u0034111 1111 1111 1111 exp 05/27",
            "card [REDACTED:payment_card] exp 05/27",
        ),
        (
            r#"{\"pass\u0077ord\": \"Xk9#mQ2vLp7rT4\"}"#,
            r#"{\"pass\u0077ord\": \"[REDACTED:generic_secret]\"}"#,
        ),
        (
            r#"pass\u0077ord = "Xk9#mQ2vLp7rT4" # set"#,
            r#"pass\u0077ord = "[REDACTED:generic_secret]" # set"#,
        ),
        (
            "card %34111 1111 1111 1111 exp 05/27",
            "card [REDACTED:payment_card] exp 05/27",
        ),
        (
            "GET /send?to=bob%40example.org&subject=hi",
            "GET /send?to=[REDACTED:email]&subject=hi",
        ),
    ] {
        assert_eq!(SCANNER.redact(text).text, redacted, "{text}");
    }
    let digest = |text: &str| SCANNER.redact(text).receipts[0].sha256_prefix.clone();
    assert_eq!(
        digest(r"card \u0034111 1111 1111 1111"),
        digest("card 4111 1111 1111 1111")
    );
}

#[test]
fn two_layers_deep_is_found_three_is_not_promised() {
    let once = STANDARD.encode(format!("k={TOKEN}"));
    let twice: String = once.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(
        found(&format!("q={twice}")).len(),
        1,
        "base64 inside percent-encoding"
    );
    let hex_of_b64: String = once.bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(found(&hex_of_b64).len(), 1, "base64 inside hex");
}

#[test]
fn zero_width_and_bidi_splits_are_removed() {
    for invisible in [
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{2060}',
        '\u{FEFF}',
        '\u{202E}',
        '\u{00AD}',
        // A variation selector and a shorthand format control of the supplementary planes.
        '\u{E0100}',
        '\u{1BCA0}',
    ] {
        let (head, tail) = TOKEN.split_at(10);
        let hidden = format!("{head}{invisible}{tail}");
        let text = format!("token {hidden} end");
        assert_eq!(
            found(&text),
            [("github_token".to_owned(), hidden.clone())],
            "U+{:04X}",
            invisible as u32
        );
    }
}

/// An invisible character between two words parts them, as white space would: dropping it
/// alone glued `token` to the token, which then read as one word and was missed. Only the
/// token is redacted, the invisible character before it kept.
#[test]
fn an_invisible_separator_parts_words() {
    for invisible in ['\u{200B}', '\u{2060}', '\u{FEFF}', '\u{00AD}', '\u{E0020}'] {
        let text = format!("token{invisible}{TOKEN} end");
        assert_eq!(
            found(&text),
            [("github_token".to_owned(), TOKEN.to_owned())],
            "U+{:04X}",
            invisible as u32
        );
        let redacted = SCANNER.redact(&text);
        assert_eq!(
            redacted.text,
            format!("token{invisible}[REDACTED:github_token] end")
        );
    }
    // Both readings find the token split inside and the one parted from a word: each once.
    let (head, tail) = TOKEN.split_at(10);
    let text = format!("a={head}\u{200B}{tail} b=token\u{200B}{TOKEN}");
    let kinds: Vec<String> = found(&text).into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds, ["github_token", "github_token"], "{text}");
}

/// Read with its invisible characters as spaces, text that holds none of the secrets the
/// rules look for still holds none: emoji joined by U+200D, words with soft hyphens, a
/// token's prefix parted from too short a rest.
#[test]
fn invisible_separators_make_no_secret_of_ordinary_text() {
    for text in [
        "the team \u{1F468}\u{200D}\u{1F4BB}\u{200D}\u{1F469} shipped it \u{2764}\u{FE0F}",
        "infor\u{00AD}mation about the pass\u{00AD}word policy",
        "ghp_\u{200B}R8xkQ2mVt7 LpZ3wN9cY4bH6jF1dS5aE0uGiK",
        "call\u{200B}me at\u{200B}noon, ref\u{2060}12345",
    ] {
        assert_eq!(found(text), [], "{text}");
    }
}

/// A byte that is not UTF-8 inside a secret split it into pieces, each too short to be found.
/// The span redacted is the secret's in the original bytes, the stray byte included, and the
/// receipt's digest is the secret's.
#[test]
fn an_invalid_byte_inside_a_secret_hides_nothing() {
    let (head, tail) = TOKEN.split_at(20);
    let mut bytes = b"token ".to_vec();
    bytes.extend_from_slice(head.as_bytes());
    bytes.push(0xFF);
    bytes.extend_from_slice(tail.as_bytes());
    bytes.extend_from_slice(b" end \xC3(");
    let redacted = SCANNER.redact_bytes(&bytes);
    assert_eq!(redacted.bytes, b"token [REDACTED:github_token] end \xC3(");
    let plain = SCANNER.redact(&format!("token {TOKEN} end")).receipts;
    assert_eq!(redacted.receipts.len(), 1);
    assert_eq!(
        (redacted.receipts[0].start, redacted.receipts[0].end),
        (6, 6 + TOKEN.len() as u64 + 1)
    );
    assert_eq!(redacted.receipts[0].sha256_prefix, plain[0].sha256_prefix);
    // Joined, pieces that hold no secret still hold none.
    for bytes in [
        &b"ghp_\xFFshort and \xFE\xFFwords"[..],
        b"4111 1111\xFF 1111 1112",
        b"\xFF\xFE\x00\x01ghp_",
    ] {
        assert_eq!(SCANNER.scan_bytes(bytes), [], "{bytes:?}");
    }
}

#[test]
fn fullwidth_forms_fold_to_ascii() {
    let fullwidth: String = TOKEN
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() {
                char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap()
            } else {
                c
            }
        })
        .collect();
    let text = format!("token {fullwidth} end");
    assert_eq!(
        found(&text),
        [("github_token".to_owned(), fullwidth.clone())]
    );
    let redacted = SCANNER.redact(&text);
    assert_eq!(redacted.text, "token [REDACTED:github_token] end");
}

/// A receipt's digest is the secret's, however it was written: a known leaked key is
/// recognised by its receipts encoded, percent-encoded, split by an invisible character or in
/// fullwidth forms, as it is plain.
#[test]
fn receipts_carry_the_digest_of_the_secret_not_of_its_disguise() {
    let digest = |text: &str| {
        let receipts = SCANNER.redact(text).receipts;
        assert_eq!(receipts.len(), 1, "{text}");
        receipts[0].sha256_prefix.clone()
    };
    let plain = digest(&format!("token {TOKEN} end"));
    let (head, tail) = TOKEN.split_at(10);
    let fullwidth: String = TOKEN
        .chars()
        .map(|c| char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap())
        .collect();
    let percent: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
    for disguised in [
        STANDARD.encode(format!("GITHUB_TOKEN={TOKEN}")),
        STANDARD.encode(STANDARD.encode(TOKEN)),
        percent,
        format!("{head}\u{200B}{tail}"),
        fullwidth,
    ] {
        assert_eq!(
            digest(&format!("payload: {disguised} (end)")),
            plain,
            "{disguised}"
        );
    }
}

#[test]
fn escaped_private_key_in_a_service_account_json() {
    let key = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\\n-----END PRIVATE KEY-----\\n";
    let json = format!(r#"{{"type": "service_account", "private_key": "{key}"}}"#);
    let kinds: Vec<String> = SCANNER.scan(&json).into_iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&"private_key".to_owned()), "{kinds:?}");
}

#[test]
fn escaped_quotes_do_not_cut_a_json_escape_segment() {
    let text = r#"{"cmd":"echo \"ghp\u005faB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xY2zA4\""}"#;
    assert_eq!(SCANNER.scan(text).len(), 1, "{text}");
}

#[test]
fn base64_after_a_path_prefix_is_decoded() {
    let encoded = STANDARD.encode(format!("token {TOKEN}"));
    let text = format!("https://example.com/v1/{encoded}");
    let kinds: Vec<String> = SCANNER.scan(&text).into_iter().map(|f| f.kind).collect();
    assert_eq!(kinds, ["github_token"], "{text}");
}

#[test]
fn a_second_encoded_secret_beside_a_plain_one_is_not_lost() {
    let text = "GET /send?from=alice@example.com&to=bob%40example.org";
    let redacted = SCANNER.redact(text).text;
    assert!(
        !redacted.contains("alice@") && !redacted.contains("bob%40example"),
        "{redacted}"
    );
}
