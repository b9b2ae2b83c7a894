//! A credential cut into pieces across strings (two fields, a key and its value, array items,
//! an encoded run) is found when the pieces are read together, and each piece is redacted.

use aa_security::Limits;
use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::SCANNER;

const KEY: &str = "AKIAQWERTYUIOPASDFGH";

fn redact(mut doc: Value) -> (Value, Vec<aa_core::RedactionReceipt>) {
    let receipts = SCANNER.redact_json(&mut doc, &Limits::default());
    (doc, receipts)
}

#[test]
fn a_key_split_across_fields_keys_and_items_is_redacted_in_every_piece() {
    let whole_digest = SCANNER.redact(KEY).receipts[0].sha256_prefix.clone();
    let cases = [
        (
            "two fields",
            json!({"a": "AKIAQWERTY", "b": "UIOPASDFGH"}),
            2,
        ),
        ("key and value", json!({"AKIAQWERTY": "UIOPASDFGH"}), 2),
        (
            "three items",
            json!({"parts": ["AKIAQW", "ERTYUIOP", "ASDFGH"]}),
            3,
        ),
        (
            "fields at different depths",
            json!({"x": {"y": "id AKIAQWERTY"}, "z": "UIOPASDFGH rest"}),
            2,
        ),
        (
            "whole fields between others",
            json!({"a": "env", "b": "AKIAQWERTY", "c": "UIOPASDFGH", "d": "xyz"}),
            2,
        ),
        (
            "a nested key and its value",
            json!({"env": {"AKIAQWERTY": "UIOPASDFGH"}, "n": 1}),
            2,
        ),
    ];
    for (name, doc, pieces) in cases {
        let (doc, receipts) = redact(doc);
        let text = doc.to_string();
        for piece in ["AKIAQW", "ERTYUIOP", "ASDFGH", "QWERTY", "UIOPASDFGH"] {
            assert!(!text.contains(piece), "{name}: {piece} kept in {text}");
        }
        assert_eq!(receipts.len(), pieces, "{name}: {receipts:?}");
        for r in &receipts {
            assert_eq!(r.kind, "aws_access_key", "{name}");
            assert_eq!(
                r.sha256_prefix, whole_digest,
                "{name}: the digest is the whole key's"
            );
            assert!(
                !r.field.contains("AKIA") && !r.field.contains("UIOP"),
                "{name}: {r:?}"
            );
        }
    }

    // The rest of each string is kept, and receipts name the fields and the pieces' bytes.
    let (doc, receipts) = redact(json!({"x": {"y": "id AKIAQWERTY"}, "z": "UIOPASDFGH rest"}));
    assert_eq!(
        doc,
        json!({"x": {"y": "id [REDACTED:aws_access_key]"}, "z": "[REDACTED:aws_access_key] rest"})
    );
    let spans: Vec<(&str, u64, u64)> = receipts
        .iter()
        .map(|r| (r.field.as_str(), r.start, r.end))
        .collect();
    assert_eq!(spans, [("x.y", 3, 13), ("z", 0, 10)]);
    let (doc, receipts) = redact(json!({"AKIAQWERTY": "UIOPASDFGH"}));
    assert_eq!(
        doc,
        json!({"[REDACTED:aws_access_key]": "[REDACTED:aws_access_key]"})
    );
    // The value's path names its key as redacted, never the piece it held.
    let fields: Vec<&str> = receipts.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(fields, ["{key}", "[REDACTED:aws_access_key]"]);
}

#[test]
fn an_encoded_secret_split_in_two_is_found() {
    let token = "ghp_R8xkQ2mVt7LpZ3wN9cY4bH6jF1dS5aE0uGiK";
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("gh auth {token}"));
    let (head, tail) = encoded.split_at(encoded.len() / 2);
    for half in [head, tail] {
        assert!(SCANNER.scan(half).is_empty(), "{half} is found on its own");
    }
    let (doc, receipts) = redact(json!({"a": head, "b": tail}));
    let kinds: Vec<(&str, &str)> = receipts
        .iter()
        .map(|r| (r.field.as_str(), r.kind.as_str()))
        .collect();
    assert_eq!(kinds, [("a", "github_token"), ("b", "github_token")]);
    assert_eq!(
        doc,
        json!({"a": "[REDACTED:github_token]", "b": "[REDACTED:github_token]"})
    );
}

#[test]
fn a_key_glued_to_a_secret_value_is_not_taken_for_part_of_it() {
    let (doc, receipts) = redact(json!({"k": KEY, "id": format!("x{KEY}")}));
    let fields: Vec<&str> = receipts.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(fields, ["k"], "{doc}");
    assert_eq!(doc["k"], "[REDACTED:aws_access_key]");
}

#[test]
fn a_secret_across_a_seam_beside_another_finding_is_redacted_in_one_go() {
    // Read together, the card number and the assignment across the seam overlap, and the
    // scan keeps the card; the assignment shows only once the card is cut, and it is found in
    // the same call, so redacting the result finds nothing new.
    let (mut doc, receipts) =
        redact(json!({"": ["a password=", "%4AKIApassword=4111 1111 1111 1111"]}));
    let kinds: Vec<&str> = receipts.iter().map(|r| r.kind.as_str()).collect();
    assert!(
        kinds.contains(&"payment_card") && kinds.contains(&"generic_secret"),
        "{kinds:?} {doc}"
    );
    let again = SCANNER.redact_json(&mut doc, &Limits::default());
    assert!(again.is_empty(), "found again: {again:?} in {doc}");
}

/// The seams are read with each string's own findings already labels, so a piece found after
/// one stands elsewhere in the labelled text than in the string as it came: its receipt
/// gives it where it came.
#[test]
fn a_piece_after_a_strings_own_finding_is_cut_where_it_came() {
    let token = "ghp_0123456789abcdefghijABCDEFGHIJKLMNOP";
    let first = format!("{KEY} and {}", &token[..20]);
    let doc = json!({"a": first, "b": &token[20..]});
    let (doc, receipts) = redact(doc);
    assert_eq!(
        doc,
        json!({"a": "[REDACTED:aws_access_key] and [REDACTED:github_token]", "b": "[REDACTED:github_token]"})
    );
    let spans: Vec<(&str, &str, u64, u64)> = receipts
        .iter()
        .map(|r| (r.field.as_str(), r.kind.as_str(), r.start, r.end))
        .collect();
    let piece_at = (KEY.len() + " and ".len()) as u64;
    assert_eq!(
        spans,
        [
            ("a", "aws_access_key", 0, KEY.len() as u64),
            ("a", "github_token", piece_at, piece_at + 20),
            ("b", "github_token", 0, 20),
        ]
    );
}

#[test]
fn ordinary_documents_and_personal_data_in_neighbouring_cells_are_left_alone() {
    for doc in [
        json!({"tool": "shell", "args": {"command": "ls -la", "cwd": "/tmp"}, "exit_code": 0}),
        json!({"cells": ["555", "0123", "4567"], "user": "jane", "domain": "@example.com"}),
        json!({"password": "os.environ['DB_PASSWORD']", "token": "", "id": "3f2a9c1e"}),
        json!({"sha": "9fceb02d0ae598e95dc970b74767f19372d61af8", "next": "9fceb02d0ae598e95dc970b74767f19372d61af8"}),
        // Only names of secrets make a value an assignment, and code under one is left.
        json!({"comment": "Tr0ub4dor-and-3xK9qLm"}),
        json!({"password": "get_password(user)"}),
        json!({"token_count": 12, "token": "short"}),
    ] {
        let (redacted, receipts) = redact(doc.clone());
        assert_eq!(redacted, doc);
        assert!(receipts.is_empty(), "{receipts:?}");
    }
}

/// The runs of neighbours are read in one text, a line each; an assignment's operator ending
/// one run does not take the next run's start as its value.
#[test]
fn a_match_reaching_from_one_run_into_the_next_is_no_credential() {
    let doc = json!({"0": "_aH1-----BEGIN PRIVATE KEY-----", "a": "@password="});
    let (redacted, receipts) = redact(doc.clone());
    assert!(receipts.is_empty(), "{receipts:?}");
    assert_eq!(redacted, doc);
}

/// Redacting `doc` cuts the string at `path` whole, as a generic secret, and nothing else;
/// redacting the result finds nothing new.
fn assert_one_value_redacted_whole(doc: Value, path: &str) {
    let (mut redacted, receipts) = redact(doc.clone());
    assert_eq!(receipts.len(), 1, "{doc}: {receipts:?}");
    assert_eq!(
        redacted.pointer(path).and_then(Value::as_str),
        Some("[REDACTED:generic_secret]"),
        "{doc} -> {redacted}"
    );
    let again = SCANNER.redact_json(&mut redacted, &Limits::default());
    assert!(again.is_empty(), "found again: {again:?}");
}

/// A string value is assigned to its key, as `"key": "value"` reads in the serialised
/// document: a secret under a secret's name is redacted though neither string holds one alone.
#[test]
fn a_value_under_a_secrets_name_is_redacted() {
    for (doc, path) in [
        (json!({"password": "Tr0ub4dor-and-3xK9qLm"}), "/password"),
        (
            json!({"env": {"DB_PASSWORD": "Tr0ub4dor-and-3xK9qLm"}}),
            "/env/DB_PASSWORD",
        ),
        (json!({"api_key": "kq8Wz1vN0pL4xR7tY2mB"}), "/api_key"),
        // Whole, past the punctuation and white space that end an assignment in code.
        (
            json!({"db_password": "Tr0ub4dor&3xK9;qLm#2Vw"}),
            "/db_password",
        ),
        (
            json!({"password": "Xk9#mQ2vLp, hunter2 zebra"}),
            "/password",
        ),
        // Punctuation no name in code has: a literal, though a `(` follows its first part.
        (json!({"password": "Zq8!vR2#kL9(pW4)"}), "/password"),
        (
            json!({"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQWERTYKEY1"}),
            "/aws_secret_access_key",
        ),
    ] {
        assert_one_value_redacted_whole(doc, path);
    }
}

/// A command's arguments pass a secret as the string after its name: a name standing alone
/// in an array assigns the next string, as a key does its value.
#[test]
fn a_value_after_a_secrets_name_in_an_array_is_redacted() {
    for (doc, path) in [
        (
            json!({"argv": ["mysql", "-u", "root", "--password", "Tr0ub4dor&3xK9;qLm"]}),
            "/argv/4",
        ),
        (json!(["password=", "Tr0ub4dor-and-3xK9qLm"]), "/1"),
        (
            json!({"args": ["--api-key", "kq8Wz1vN0pL4xR7tY2mB", "--verbose"]}),
            "/args/1",
        ),
        (
            json!({"headers": [["X-Api-Token:", "kq8Wz1vN0pL4xR7tY2mB"]]}),
            "/headers/0/1",
        ),
        (json!(["Password: ", "Tr0ub4dor-and-3xK9qLm"]), "/1"),
        // Not a name alone: the seam between the two strings reads as an assignment whose
        // value is the second string.
        (
            json!({"lines": ["export DB_PASSWORD=", "Tr0ub4dor-and-3xK9qLm"]}),
            "/lines/1",
        ),
        (
            json!({"a": "set the password=", "b": "kq8Wz1vN0pL4xR7tY2mB"}),
            "/b",
        ),
    ] {
        assert_one_value_redacted_whole(doc, path);
    }
}

/// Only a name standing alone, and only the string right after it in the same array, is read
/// as an assignment; what ordinary commands pass after a secret's name is left.
#[test]
fn arguments_after_other_names_or_elsewhere_are_left_alone() {
    for doc in [
        json!([
            "docker",
            "login",
            "--password-stdin",
            "registry.example.com"
        ]),
        json!(["app", "--password-file", "/run/secrets/db_password"]),
        json!(["git", "credential", "reject", "password", "reset"]),
        json!(["--password=", "--verbose"]),
        // A string holding its own value, or words, names nothing after it.
        json!(["--label=password", "Tr0ub4dor-and-3xK9qLm"]),
        json!(["forgot your password", "Tr0ub4dor-and-3xK9qLm"]),
        // Not the next item of the same array.
        json!({"a": ["--password"], "b": ["Tr0ub4dor-and-3xK9qLm"]}),
        json!(["--password", ["Tr0ub4dor-and-3xK9qLm"]]),
        // Past the reach of a seam the value is read cut short, and what a cut end makes is
        // not taken for a secret.
        json!(["a password=", "kq8Wz1vN0pL4xR7tY2mB".repeat(16)]),
    ] {
        let (redacted, receipts) = redact(doc.clone());
        assert!(receipts.is_empty(), "{doc}: {receipts:?}");
        assert_eq!(redacted, doc);
    }
}

/// A value under a secret's name is the secret whole: its receipt's digest is the whole
/// value's as it reads (an invisible character removed), not the part first found.
#[test]
fn a_value_under_a_secrets_name_is_digested_whole() {
    let value = "Tr0ub4dor\u{200B}&3xK9;qLm#2Vw";
    let (doc, receipts) = redact(json!({ "password": value }));
    assert_eq!(doc["password"], "[REDACTED:generic_secret]");
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!(
        (receipts[0].start, receipts[0].end),
        (0, value.len() as u64)
    );
    let read = value.replace('\u{200B}', "");
    let digest: String = sha2::Sha256::digest(read.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(receipts[0].sha256_prefix, digest);
}
