//! `tests/data/rules.json`: for every rule, texts with the secret marked `«…»` that must be
//! found at exactly that span, and near misses that must not be.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::SCANNER;

fn fixtures() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rules.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The text without markers, and the marked span.
fn unmark(marked: &str) -> (String, usize, usize) {
    let start = marked.find('«').unwrap();
    let end = marked.find('»').unwrap() - '«'.len_utf8();
    (marked.replace(['«', '»'], ""), start, end)
}

#[test]
fn every_rule_finds_its_positives_at_the_exact_span() {
    let mut failures = Vec::new();
    for fixture in fixtures() {
        let rule = fixture["rule"].as_str().unwrap();
        for marked in fixture["positive"].as_array().unwrap() {
            let (text, start, end) = unmark(marked.as_str().unwrap());
            let found = SCANNER.scan(&text);
            let hit = found
                .iter()
                .any(|f| f.rule_id == rule && f.start == start && f.end == end);
            if !hit {
                let got: Vec<String> = found
                    .iter()
                    .map(|f| format!("{}@{}..{}", f.rule_id, f.start, f.end))
                    .collect();
                failures.push(format!(
                    "{rule}: {text:?} expected {start}..{end}, got {got:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} misses:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn no_rule_fires_on_its_near_misses() {
    let mut failures = Vec::new();
    for fixture in fixtures() {
        let rule = fixture["rule"].as_str().unwrap();
        for text in fixture["negative"].as_array().unwrap() {
            let text = text.as_str().unwrap();
            let found = SCANNER.scan(text);
            if let Some(f) = found.iter().find(|f| f.rule_id == rule) {
                failures.push(format!("{rule}: {text:?} matched {}..{}", f.start, f.end));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} false alarms:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_builtin_rule_has_fixtures() {
    let covered: BTreeSet<String> = fixtures()
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&str> = aa_security::rules::builtin_ids()
        .filter(|id| !covered.contains(*id))
        .collect();
    assert!(missing.is_empty(), "rules without fixtures: {missing:?}");
    let credentials = aa_security::rules::builtin_ids().count() - 5;
    assert!(credentials >= 60, "{credentials} credential rules");
}
