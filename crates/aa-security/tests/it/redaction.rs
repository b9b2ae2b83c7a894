//! Redaction replaces exactly the secret's span, leaves the rest intact, and its receipts never
//! carry the secret.

use aa_security::{Limits, OVERSIZED, Oversize};
use serde_json::json;
use sha2::Digest as _;

use crate::SCANNER;

const KEY: &str = "AKIAQWERTYUIOPASDFGH";

#[test]
fn only_the_secret_is_replaced() {
    let text = format!("export AWS_ACCESS_KEY_ID={KEY} # prod\npassword = \"hQ7vL2pX9mR4tZ\"\n");
    let r = SCANNER.redact(&text);
    assert_eq!(
        r.text,
        "export AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key] # prod\npassword = \"[REDACTED:generic_secret]\"\n"
    );
    assert_eq!(r.receipts.len(), 2);
    let receipt = &r.receipts[0];
    assert_eq!(
        (receipt.rule_id.as_str(), receipt.kind.as_str()),
        ("aws-access-key-id", "aws_access_key")
    );
    assert_eq!(&text[receipt.start as usize..receipt.end as usize], KEY);
    assert_eq!(receipt.sha256_prefix.len(), 16);
    let serialized = serde_json::to_string(&r.receipts).unwrap();
    assert!(!serialized.contains(KEY) && !serialized.contains("hQ7vL2pX9mR4tZ"));
}

#[test]
fn redaction_is_idempotent_and_finds_nothing_new() {
    let texts = [
        format!("k={KEY} mail jane@example.com card 4111 1111 1111 1111"),
        // A phone number at the head of a run of more digits than a phone number has, once
        // found only after redaction shortened the run before it.
        "password=ghp_AKIA4111 1111 1111 1111(+14111 1111 1111 1111AKIA".to_owned(),
        // A phone number that starts at a `+` only once the card before it is a label.
        "4111 1111 1111 1111+4111 1111 1111 1111AKIA".to_owned(),
        // A URL whose user is redacted with its password: the label's `:` must not read as
        // the URL's user and password once more.
        "postgres://123456789:AAaB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3@db/app".to_owned(),
        // Secrets found in escapes decoded with their neighbours, redacted over their own span.
        r#"pass\u0077ord = "Xk9#mQ2vLp7rT4" card \u0034111 1111 1111 1111"#.to_owned(),
        "to=bob%40example.org&pass%77ord=Xk9mQ2vLp7rT4zW".to_owned(),
    ];
    for text in texts {
        let once = SCANNER.redact(&text);
        let twice = SCANNER.redact(&once.text);
        assert_eq!(twice.text, once.text);
        assert!(twice.receipts.is_empty(), "{text}: {:?}", twice.receipts);
    }
}

#[test]
fn json_keys_and_values_are_redacted_with_paths() {
    let mut event = json!({
        "tool": "shell",
        "args": {"command": format!("aws s3 ls --key {KEY}"), "env": ["HOME=/root", format!("K={KEY}")]},
        KEY: "a key that is itself a secret",
        "n": 3
    });
    let receipts = SCANNER.redact_json(&mut event, &Limits::default());
    let fields: Vec<&str> = receipts.iter().map(|r| r.field.as_str()).collect();
    assert!(fields.contains(&"args.command"), "{fields:?}");
    assert!(fields.contains(&"args.env[1]"), "{fields:?}");
    assert!(fields.iter().any(|f| f.starts_with("{")), "{fields:?}");
    let text = event.to_string();
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(
        event["args"]["command"],
        "aws s3 ls --key [REDACTED:aws_access_key]"
    );
    assert_eq!(event["n"], 3);
}

/// Keys redacted alike stay apart: each takes the first `#n` that no other key holds, and a
/// name that a key being renamed gives up is free again.
#[test]
fn keys_redacted_alike_get_names_of_their_own() {
    let other = "AKIAZXCVBNMLKJHGFDSA";
    let mut object = json!({
        KEY: 1,
        other: 2,
        "[REDACTED:aws_access_key]#2": 3,
        "[REDACTED:aws_access_key]": 4,
    });
    SCANNER.redact_json(&mut object, &Limits::default());
    assert_eq!(
        object,
        json!({
            "[REDACTED:aws_access_key]": 4,
            "[REDACTED:aws_access_key]#2": 3,
            "[REDACTED:aws_access_key]#3": 1,
            "[REDACTED:aws_access_key]#4": 2,
        })
    );
    // Many at once: every one kept, under a name of its own.
    let keys = 3_000;
    let mut many = serde_json::Map::new();
    for n in 0..keys {
        many.insert(format!("user{n}@example.com"), json!(n));
    }
    let mut many = serde_json::Value::Object(many);
    let receipts = SCANNER.redact_json(&mut many, &Limits::default());
    assert_eq!(receipts.len(), keys);
    let names = many.as_object().unwrap();
    assert_eq!(names.len(), keys);
    assert!(names.contains_key("[REDACTED:email]"));
    assert!(names.contains_key(&format!("[REDACTED:email]#{keys}")));
}

/// Nine digits are an SSN only where a label says so; in a JSON document the label may be the
/// value's key.
#[test]
fn a_key_that_labels_personal_data_makes_its_value_found() {
    let mut record = json!({
        "user_ssn": "219099999",
        "SSN": "536 22 1914",
        "order_id": "219099999",
        "note": "SSN: 078051120"
    });
    let receipts = SCANNER.redact_json(&mut record, &Limits::default());
    let mut fields: Vec<&str> = receipts.iter().map(|r| r.field.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["SSN", "note", "user_ssn"], "{receipts:?}");
    assert_eq!(record["user_ssn"], "[REDACTED:ssn]");
    assert_eq!(record["SSN"], "[REDACTED:ssn]");
    assert_eq!(record["order_id"], "219099999");
    assert_eq!(record["note"], "SSN: [REDACTED:ssn]");
}

#[test]
fn oversized_fields_and_events_are_capped() {
    let limits = Limits {
        max_field_bytes: 100,
        max_event_bytes: 150,
        oversize: Oversize::Redact,
    };
    let mut event =
        json!({"small": "fine", "big": "x".repeat(101), "a": "y".repeat(90), "b": "z".repeat(90)});
    let receipts = SCANNER.redact_json(&mut event, &limits);
    assert_eq!(event["big"], OVERSIZED);
    assert_eq!(event["small"], "fine");
    // "a" and "b" fit the field cap, but not both fit the event cap.
    let capped = [&event["a"], &event["b"]]
        .iter()
        .filter(|v| **v == OVERSIZED)
        .count();
    assert_eq!(capped, 1, "{event}");
    assert_eq!(receipts.iter().filter(|r| r.kind == "OVERSIZED").count(), 2);

    let scan_all = Limits {
        oversize: Oversize::Scan,
        ..limits
    };
    let mut event = json!({"big": format!("{}{KEY}", "x ".repeat(100))});
    SCANNER.redact_json(&mut event, &scan_all);
    assert!(
        event["big"]
            .as_str()
            .unwrap()
            .ends_with("[REDACTED:aws_access_key]")
    );
}

/// A hostile event: a long key over many tiny strings past the allowance. Each string is still
/// replaced, but the receipts neither grow with their number nor repeat the key whole.
#[test]
fn many_strings_past_the_allowance_share_a_receipt() {
    let limits = Limits {
        max_event_bytes: 16 * 1024,
        ..Limits::default()
    };
    let long_key = "k".repeat(8 * 1024);
    let strings = 20_000;
    let mut event = json!({ long_key.as_str(): vec!["ab"; strings] });
    let receipts = SCANNER.redact_json(&mut event, &limits);
    let values = event[long_key.as_str()].as_array().unwrap();
    // The key takes 8 KiB of the allowance, and each string 2 bytes of it.
    let scanned = (limits.max_event_bytes - long_key.len()) / 2;
    assert!(values[..scanned].iter().all(|v| v == "ab"));
    assert!(
        values[scanned..].iter().all(|v| v == OVERSIZED),
        "{values:?}"
    );
    let (each, rest): (Vec<_>, Vec<_>) = receipts.iter().partition(|r| r.rule_id == "oversized");
    assert_eq!(each.len(), 32);
    assert_eq!(rest.len(), 1, "{rest:?}");
    let rest = rest[0];
    assert_eq!((rest.kind.as_str(), rest.start), ("OVERSIZED", 0));
    assert_eq!(rest.end as usize, 2 * (strings - scanned - 32));
    let covered = "ab".repeat(strings - scanned - 32);
    let digest = sha2::Sha256::digest(covered.as_bytes());
    assert_eq!(rest.sha256_prefix, aa_core::hex::encode(&digest[..8]));
    assert_eq!(rest.field, format!("{}…[{}]", "k".repeat(64), scanned + 32));
    assert!(receipts.iter().all(|r| r.field.len() < 100), "{receipts:?}");
}

/// Deep down, every string is still rewritten, and a receipt's field name keeps its end.
#[test]
fn a_deeply_nested_field_is_named_by_its_end() {
    let limits = Limits {
        max_event_bytes: 40 * 64 + 100,
        ..Limits::default()
    };
    let key = "k".repeat(64);
    let mut leaf = json!([KEY]);
    leaf.as_array_mut()
        .unwrap()
        .extend((0..200).map(|_| json!("ab")));
    let event = (0..40).fold(leaf, |inner, _| json!({ key.as_str(): inner }));
    let mut redacted = event.clone();
    let receipts = SCANNER.redact_json(&mut redacted, &limits);
    let mut leaf = &redacted;
    while let Some(inner) = leaf.get(key.as_str()) {
        leaf = inner;
    }
    let leaf = leaf.as_array().unwrap();
    assert_eq!(leaf[0], "[REDACTED:aws_access_key]");
    // 40 keys of 64 bytes, the secret's 20 and 40 strings of two fit the allowance.
    assert!(leaf[1..=40].iter().all(|v| v == "ab"), "{leaf:?}");
    assert!(leaf[41..].iter().all(|v| v == OVERSIZED), "{leaf:?}");
    let secret = receipts
        .iter()
        .find(|r| r.kind == "aws_access_key")
        .unwrap();
    assert!(secret.field.starts_with('…'), "{}", secret.field);
    assert!(
        secret.field.ends_with(&format!("{key}[0]")),
        "{}",
        secret.field
    );
    assert!(
        receipts
            .iter()
            .all(|r| r.field.len() <= 256 + '…'.len_utf8())
    );
}

/// A key renamed for its secret makes the document read again, with its labels in place; the
/// allowance is spent in the first reading only, so a label longer than what it replaced
/// cuts no string the first reading scanned, and nothing is receipted twice.
#[test]
fn a_second_reading_does_not_receipt_oversized_strings_again() {
    let limits = Limits {
        max_field_bytes: 100,
        max_event_bytes: 40,
        oversize: Oversize::Redact,
    };
    // Keys and values in reading order: 20 + 1 + 2 + 12 + 2 bytes fit, "tiny" does not.
    let mut event = json!({ KEY: "a", "z1": "y".repeat(12), "z2": "tiny" });
    let receipts = SCANNER.redact_json(&mut event, &limits);
    assert!(event.get("[REDACTED:aws_access_key]").is_some(), "{event}");
    assert_eq!(event["z2"], OVERSIZED, "{event}");
    let oversized: Vec<_> = receipts.iter().filter(|r| r.kind == "OVERSIZED").collect();
    assert_eq!(oversized.len(), 1, "{receipts:?}");
    assert_eq!(oversized[0].field, "z2");
}
#[test]
fn raw_events_json_or_not_and_invalid_utf8() {
    let json_event = format!(r#"{{"msg": "key {KEY}"}}"#);
    let r = SCANNER.redact_event(json_event.as_bytes(), &Limits::default());
    assert_eq!(r.bytes, br#"{"msg":"key [REDACTED:aws_access_key]"}"#);

    let mut raw = b"\xff\xfe key ".to_vec();
    raw.extend_from_slice(KEY.as_bytes());
    raw.extend_from_slice(b" \xc3");
    let r = SCANNER.redact_event(&raw, &Limits::default());
    assert_eq!(r.bytes, b"\xff\xfe key [REDACTED:aws_access_key] \xc3");
    assert_eq!(r.receipts[0].start, 7);
}

#[test]
fn keys_redacted_to_the_same_label_keep_both_entries() {
    let mut event = json!({
        "ghp_R8xkQ2mVt7LpZ3wN9cY4bH6jF1dS5aE0uGiK": 1,
        "ghp_Z8xkQ2mVt7LpZ3wN9cY4bH6jF1dS5aE0uGiK": 2
    });
    SCANNER.redact_json(&mut event, &Limits::default());
    let object = event.as_object().unwrap();
    assert_eq!(object.len(), 2, "{event}");
    assert!(
        object
            .keys()
            .all(|k| k.starts_with("[REDACTED:github_token]")),
        "{event}"
    );
}

#[test]
fn audit_events_are_redacted_in_every_field_an_agent_supplied_or_a_verdict_quotes() {
    let mut event: aa_core::AuditEvent = serde_json::from_value(json!({
        "event_id": "e1",
        "timestamp_ms": 1,
        "agent": {"id": "bot"},
        "session_id": format!("run {KEY}"),
        "action": {"type": "tool_call", "tool": "shell", "args": {"command": format!("echo {KEY}")}},
        "detail": {"error": "login as jane@example.com failed"},
        // A policy's reason quotes what the agent asked for.
        "verdict": {"decision": "deny", "rule": "files.deny", "policy": "base@1",
                    "reason": format!("path /keys/{KEY} is denied"), "mode": "enforce"},
        "kind": "tool_end",
        "redactions": [{"rule_id": "earlier", "kind": "k", "field": "f", "start": 0, "end": 1,
                        "sha256_prefix": "00"}]
    }))
    .unwrap();
    let added = SCANNER
        .redact_audit_event(&mut event, &Limits::default())
        .unwrap();
    assert_eq!(added, 4);
    let text = serde_json::to_string(&event).unwrap();
    assert!(
        !text.contains(KEY) && !text.contains("jane@example.com"),
        "{text}"
    );
    let fields: Vec<&str> = event.redactions.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(fields[0], "f", "earlier receipts are kept first");
    for field in [
        "session_id",
        "action.args.command",
        "detail.error",
        "verdict.reason",
    ] {
        assert!(fields.contains(&field), "{fields:?}");
    }

    // A clean event is left exactly as it was.
    let before = event.clone();
    assert_eq!(
        SCANNER
            .redact_audit_event(&mut event, &Limits::default())
            .unwrap(),
        0
    );
    assert_eq!(event, before);
}

#[test]
fn a_serialised_audit_event_is_redacted_as_the_event_is() {
    let event: aa_core::AuditEvent = serde_json::from_value(json!({
        "event_id": "e2",
        "timestamp_ms": 2,
        "agent": {"id": "bot", "team": format!("t {KEY}")},
        "action": {"type": "tool_call", "tool": "http", "args": {"url": "https://x", "token": KEY}},
        "detail": {"result": format!("{KEY} and jane@example.com")},
        "verdict": {"decision": "allow", "rule": "default", "policy": "base@1",
                    "reason": format!("host {KEY}.example.com is allowed"), "mode": "observe"},
        "kind": "tool_end",
        "origin": {"stream_id": "s", "sequence": 4, "received_at_ms": 3, "peer_uid": 1, "peer_pid": 2}
    }))
    .unwrap();
    let mut as_struct = event.clone();
    let from_struct = SCANNER
        .redact_audit_event(&mut as_struct, &Limits::default())
        .unwrap();
    let mut as_value = serde_json::to_value(&event).unwrap();
    let from_value = SCANNER
        .redact_audit_value(&mut as_value, &Limits::default())
        .unwrap();
    assert!(from_struct >= 5, "{as_struct:?}");
    assert_eq!(from_value, from_struct);
    assert_eq!(as_value, serde_json::to_value(&as_struct).unwrap());

    // A detail that is there but null stays there: it is serialised, and so hashed.
    let mut null_detail = aa_core::AuditEvent {
        detail: Some(serde_json::Value::Null),
        ..as_struct.clone()
    };
    let before = null_detail.clone();
    SCANNER
        .redact_audit_event(&mut null_detail, &Limits::default())
        .unwrap();
    assert_eq!(null_detail, before);

    // What is not an event is refused and left alone.
    for mut bad in [json!([KEY]), json!({"redactions": "none", "detail": KEY})] {
        let before = bad.clone();
        assert!(
            SCANNER
                .redact_audit_value(&mut bad, &Limits::default())
                .is_err()
        );
        assert_eq!(bad, before);
    }
}

/// An event's names and tags are its types', not an agent's data: a piece of a secret glued to
/// a verdict's decision, a pattern matching a tag or a field's name, and arguments past the
/// event's allowance leave them as they are, so a redacted event always reads back as one (a
/// decision event that did not was once dropped).
#[test]
fn an_audit_events_names_and_tags_are_never_rewritten() {
    let scanner = aa_security::Scanner::with_patterns(&[aa_security::CustomPattern {
        name: "words".into(),
        regex: "(allow|enforce|tool_call|file|write|reason|session_id)".into(),
    }])
    .unwrap();
    let event = |action: serde_json::Value| -> aa_core::AuditEvent {
        serde_json::from_value(json!({
            "event_id": "e3",
            "timestamp_ms": 3,
            "agent": {"id": "bot"},
            // Too short for a Stripe key, alone or glued to the policy's name, its next
            // neighbour; glued to `allow` it would read as one.
            "session_id": "sk_live_abcdefghij012345678",
            "action": action,
            "verdict": {"decision": "allow", "rule": "default", "policy": "base@1",
                        "reason": "no rule matched", "mode": "enforce"},
            "kind": "decision"
        }))
        .unwrap()
    };
    let tool = event(json!({"type": "tool_call", "tool": "shell", "args": {"reason": "x"}}));
    let mut redacted = tool.clone();
    let added = scanner
        .redact_audit_event(&mut redacted, &Limits::default())
        .unwrap();
    assert_eq!(added, 1, "{redacted:?}");
    assert_eq!(
        redacted.redactions[0].field, "action.args{key}",
        "{redacted:?}"
    );
    assert_eq!(redacted.verdict, tool.verdict);
    assert_eq!(redacted.session_id, tool.session_id);

    let file = event(json!({"type": "file", "operation": "write", "path": "/tmp/a"}));
    let mut redacted = file.clone();
    let added = scanner
        .redact_audit_event(&mut redacted, &Limits::default())
        .unwrap();
    assert_eq!((added, &redacted), (0, &file));

    // Arguments past the allowance are cut; the action's type, read after them, is not.
    let long = "word ".repeat(100);
    let mut redacted = event(json!({"type": "tool_call", "tool": "shell", "args": {"a": long}}));
    let small = Limits {
        max_event_bytes: 100,
        ..Limits::default()
    };
    SCANNER.redact_audit_event(&mut redacted, &small).unwrap();
    assert!(
        matches!(&redacted.action, aa_core::Action::ToolCall { args, .. } if args["a"] == OVERSIZED),
        "{redacted:?}"
    );

    // The event as a store keeps it reads the same.
    let mut as_value = serde_json::to_value(&file).unwrap();
    scanner
        .redact_audit_value(&mut as_value, &Limits::default())
        .unwrap();
    assert_eq!(as_value, serde_json::to_value(&file).unwrap());
}

/// A text that is one run of assignments, as a hostile agent could send, is read in one go:
/// each assignment's window was once extended over the rest of the run, which took seconds
/// for a hundred kilobytes (and minutes for this test). A secret assigned after it is still
/// found, and a long one, past what the run left of the extensions' budget, still redacted
/// whole.
#[test]
fn a_run_of_assignments_is_not_read_again_for_each_one() {
    let run = "token=".repeat(16 * 1024);
    let secret = "hQ7vL2pX9mR4tZ8kWc3nB6yD";
    let text = format!("{run}; token={secret}");
    let found = SCANNER.scan(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(&text[found[0].start..found[0].end], secret);

    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let long: String = (0..5_000usize)
        .map(|i| char::from(alphabet[(i * i * 31 + i * 7) % alphabet.len()]))
        .collect();
    let text = format!("{run}; api_key={long} tail");
    let r = SCANNER.redact(&text);
    assert!(
        r.text.ends_with("api_key=[REDACTED:generic_secret] tail"),
        "{}",
        &r.text[r.text.len() - 80..]
    );
}

/// A key's body stops at the next `-----` line: a key cut off and followed by other output and
/// another key was read up to the second key's END line, taking the output between with it,
/// and a run of BEGIN lines each followed by base64 had each body read to the text's end (3.8 s
/// for 640 KB).
#[test]
fn a_key_cut_off_ends_at_its_base64_not_at_the_next_keys_end() {
    let body = "MIIEowIBAAKCAQEAq3xG7hJ2kL9pQ4rT8vW1yZ0aB5cD6eF3gH4iJ5kL6mN7oP8q";
    let text = format!(
        "-----BEGIN RSA PRIVATE KEY-----\n{body}\n... [truncated]\ndeploy finished in 3 s\n\
         -----BEGIN RSA PRIVATE KEY-----\n{body}\n{body}\n-----END RSA PRIVATE KEY-----\n"
    );
    assert_eq!(
        SCANNER.redact(&text).text,
        "[REDACTED:private_key]\n... [truncated]\ndeploy finished in 3 s\n[REDACTED:private_key]\n"
    );
    let unit = format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n");
    let found = SCANNER.scan(&unit.repeat(200));
    assert_eq!(found.len(), 200);
    assert!(found.iter().all(|f| f.end - f.start == unit.len() - 1));
}

/// A password is redacted, not what is around it. In JSON read raw, an assignment found in a
/// JSON escape's segment took the segment whole, the variable's name with it; a password
/// holding an `@` in a URL met a false address (its tail, the `@` and the host) and the two
/// merged, taking the host.
#[test]
fn a_password_is_redacted_without_its_name_or_its_host() {
    for (text, redacted) in [
        (
            r#"{"command": "export PASSWORD=\"Xk9#mQ2vLp7rT4\" && ./deploy"}"#,
            r#"{"command": "export PASSWORD=\"[REDACTED:generic_secret]\" && ./deploy"}"#,
        ),
        (
            "git clone https://bob:p@ssw0rd!x9Q@git.example.com/r.git",
            "git clone https://bob:[REDACTED:url_password]@git.example.com/r.git",
        ),
        (
            "postgres://u:p@ss@db.example.com/app",
            "postgres://u:[REDACTED:database_password]@db.example.com/app",
        ),
        (
            "redis://:p@ss@cache.example.com:6379",
            "redis://:[REDACTED:database_password]@cache.example.com:6379",
        ),
    ] {
        assert_eq!(SCANNER.redact(text).text, redacted, "{text}");
    }
}

/// Decoys standing alone are no finding: identifiers, digests, an encoded blob of random
/// bytes, versions, addresses and timestamps, as a log line holds them.
#[test]
fn decoys_standing_alone_are_no_finding() {
    use base64::Engine as _;
    let blob: Vec<u8> = (0u32..48)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let blob = base64::engine::general_purpose::STANDARD.encode(blob);
    let decoys = [
        "request_id=3f2b8c1e-9d4a-4e7b-a1c2-5f6e7d8c9b0a".to_owned(),
        "commit da39a3ee5e6b4b0d3255bfef95601890afd80709".to_owned(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
        format!("attachment {blob}"),
        "2026-11-23T00:58:48.123Z INFO v1.24.3 from 10.0.12.7 took 231ms".to_owned(),
    ];
    for text in decoys {
        let found = SCANNER.scan(&text);
        assert!(found.is_empty(), "{text}: {found:?}");
    }
}

/// Personal data sent as a JSON number is found as its digits, and the number becomes the
/// label; a number an event's schema names stays a number, whatever its digits.
#[test]
fn numbers_of_free_json_are_read_as_their_digits() {
    let mut doc = json!({
        "payment": {"card_number": 4111111111111111_u64, "amount": 1250},
        "ssn": 219099999,
        "as_float": 4111111111111111.0,
        "negative": -4111111111111111_i64,
        "order_id": 4111111111111112_u64,
        "ratio": 0.25
    });
    let receipts = SCANNER.redact_json(&mut doc, &Limits::default());
    assert_eq!(
        doc,
        json!({
            "payment": {"card_number": "[REDACTED:payment_card]", "amount": 1250},
            "ssn": "[REDACTED:ssn]",
            "as_float": "[REDACTED:payment_card]",
            "negative": "[REDACTED:payment_card]",
            "order_id": 4111111111111112_u64,
            "ratio": 0.25
        }),
        "{receipts:?}"
    );
    let fields: Vec<&str> = receipts.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(
        fields,
        ["as_float", "negative", "payment.card_number", "ssn"]
    );
    assert!(SCANNER.redact_json(&mut doc, &Limits::default()).is_empty());

    let event = |detail: serde_json::Value| -> aa_core::AuditEvent {
        serde_json::from_value(json!({
            "event_id": "e4",
            "timestamp_ms": 4111111111111111_u64,
            "agent": {"id": "bot", "depth": 4111111},
            "action": {"type": "llm_call", "model": "m", "token_estimate": 4111111111111111_u64},
            "kind": "tool_end",
            "detail": detail
        }))
        .unwrap()
    };
    for (detail, redacted_detail) in [
        (
            json!({"card": 4111111111111111_u64}),
            json!({"card": "[REDACTED:payment_card]"}),
        ),
        (
            json!(4111111111111111_u64),
            json!("[REDACTED:payment_card]"),
        ),
    ] {
        let mut redacted = event(detail.clone());
        let added = SCANNER
            .redact_audit_event(&mut redacted, &Limits::default())
            .unwrap();
        assert_eq!(added, 1, "{redacted:?}");
        assert_eq!(redacted.detail, Some(redacted_detail.clone()));
        assert_eq!(redacted.timestamp_ms, 4111111111111111);
        let mut as_value = serde_json::to_value(event(detail)).unwrap();
        let added = SCANNER
            .redact_audit_value(&mut as_value, &Limits::default())
            .unwrap();
        assert_eq!(added, 1, "{as_value}");
        assert_eq!(as_value["detail"], redacted_detail);
        assert_eq!(as_value["timestamp_ms"], 4111111111111111_u64);
        assert_eq!(as_value["agent"]["depth"], 4111111);
    }
}

/// With a key, every way of redacting gives the keyed digest of the secret, the one
/// `receipt_digest` gives for it: not the plain SHA-256 prefix anyone could compute (and so
/// invert for an SSN, one of 10⁹), and the same under the same key wherever it is made.
#[test]
fn receipts_made_with_a_key_digest_the_secret_under_it() {
    let ssn = "219-09-9999";
    let plain = aa_core::hex::encode(&sha2::Sha256::digest(ssn.as_bytes())[..8]);
    assert_eq!(SCANNER.receipt_digest(ssn.as_bytes()), plain);
    let key = || aa_security::ReceiptKey::derive(b"runtime-token");
    let keyed = aa_security::Scanner::new().unwrap().with_receipt_key(key());
    let digest = keyed.receipt_digest(ssn.as_bytes());
    assert_eq!(digest.len(), 16);
    assert_ne!(digest, plain);
    let other = aa_security::Scanner::new()
        .unwrap()
        .with_receipt_key(aa_security::ReceiptKey::derive(b"another-token"));
    assert_ne!(other.receipt_digest(ssn.as_bytes()), digest);

    let text = format!("ssn {ssn} on file");
    let limits = Limits::default();
    let mut value = json!({ "note": text });
    let event = serde_json::to_vec(&value).unwrap();
    let with_patterns = std::sync::Arc::new(keyed.clone())
        .with_patterns_added(&[aa_security::CustomPattern {
            name: "badge".into(),
            regex: r"BADGE-\d{4}".into(),
        }])
        .unwrap();
    let digests: Vec<Vec<String>> = vec![
        keyed.redact(&text).receipts,
        keyed.redact_bytes(text.as_bytes()).receipts,
        keyed.redact_id(&text, 64).1,
        keyed.redact_json(&mut value, &limits),
        keyed.redact_event(&event, &limits).receipts,
        with_patterns.redact(&text).receipts,
    ]
    .into_iter()
    .map(|receipts| receipts.into_iter().map(|r| r.sha256_prefix).collect())
    .collect();
    for found in digests {
        assert_eq!(found, std::slice::from_ref(&digest));
    }
    // An id holding the SSN is kept as its digest, keyed as well.
    let kept = keyed.redact_id(&text, 64).0;
    assert_eq!(kept, keyed.id_digest(&text));
    assert!(kept.starts_with("sha256:") && kept.len() == 39, "{kept}");
    assert_ne!(kept, SCANNER.id_digest(&text));
    assert_eq!(SCANNER.redact_id(&text, 64).0, SCANNER.id_digest(&text));
    // A resent id is known by the keyed form and by the plain one ids were kept as before.
    assert_eq!(keyed.id_digests(&text), [kept, SCANNER.id_digest(&text)]);
    // Each use of the key has a label of its own: an id's digest is no receipt's.
    let prefix = SCANNER.receipt_digest(ssn.as_bytes());
    assert!(!keyed.id_digest(&prefix).contains(&digest));
}

/// A token after `Bearer` that another rule finds only a part of (a custom pattern without a
/// boundary at its end) is redacted whole, not left with its tail in the text.
#[test]
fn a_bearer_token_another_rule_finds_a_part_of_is_redacted_whole() {
    let scanner = aa_security::Scanner::with_patterns(&[aa_security::CustomPattern {
        name: "acme".into(),
        regex: r"ACME-\d{4}".into(),
    }])
    .unwrap();
    let text = "Authorization: Bearer ACME-1234Xk9mQ2vLp7rT4Zz8wB3n";
    let redacted = scanner.redact(text).text;
    assert!(!redacted.contains("Xk9mQ2vLp7rT4Zz8wB3n"), "{redacted}");
    assert!(
        redacted.starts_with("Authorization: Bearer [REDACTED:"),
        "{redacted}"
    );
    // Found whole by a provider's rule, the token keeps that rule's name.
    let stripe = "Authorization: Bearer sk_test_5ykYYqhXHdO2x93CJHLS45gqIO',";
    let redacted = SCANNER.redact(stripe).text;
    assert_eq!(redacted, "Authorization: Bearer [REDACTED:stripe_key]',");
}
