//! Scans one corpus of the `scan` bench once, for counting instructions where wall time is too
//! noisy to compare builds: run it under `valgrind --tool=cachegrind --cache-sim=no` with the
//! case (`clean`, `prose`, `dense`, `event`, `small`, `audit`, `custom`) and again with `none`;
//! the difference is the scan's cost (`event` redacts the 4 KiB event 100 times, `small` a
//! clean tool event of the size `aa-bench events` sends 1,000 times, as JSON bytes; `audit` the
//! same event 1,000 times as the runtime and gateway hold it, an `AuditEvent`; `custom` that
//! again with the default policy's custom pattern added, as `aasm up` runs it). `file PATH`
//! scans a file's bytes once, for timing a hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use aa_core::AuditEvent;
use aa_security::{Limits, Scanner};
use aa_testkit::corpus;

const CORPUS_BYTES: usize = 4 << 20;

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    let scanner = Scanner::new().unwrap();
    let clean = corpus::clean_text(1, CORPUS_BYTES);
    let prose = corpus::prose_and_code(&clean);
    let (dense, _) = corpus::dense_text(2, CORPUS_BYTES, 200);
    let event = corpus::event_4k(3);
    let found = match case.as_str() {
        "clean" => scanner.scan(&clean).len(),
        "prose" => scanner.scan(&prose).len(),
        "dense" => scanner.scan(&dense).len(),
        "event" => (0..100)
            .map(|_| {
                scanner
                    .redact_event(event.as_bytes(), &Limits::default())
                    .receipts
                    .len()
            })
            .sum(),
        "small" => (0..1_000)
            .map(|_| {
                scanner
                    .redact_event(corpus::SMALL_EVENT.as_bytes(), &Limits::default())
                    .receipts
                    .len()
            })
            .sum(),
        "audit" => {
            let mut event: AuditEvent = serde_json::from_str(corpus::SMALL_EVENT).unwrap();
            (0..1_000)
                .map(|_| {
                    scanner
                        .redact_audit_event(&mut event, &Limits::default())
                        .unwrap()
                })
                .sum()
        }
        "custom" => {
            let custom = std::sync::Arc::new(scanner)
                .with_patterns_added(&[default_policy_pattern()])
                .unwrap();
            let mut event: AuditEvent = serde_json::from_str(corpus::SMALL_EVENT).unwrap();
            (0..1_000)
                .map(|_| {
                    custom
                        .redact_audit_event(&mut event, &Limits::default())
                        .unwrap()
                })
                .sum()
        }
        "file" => {
            let path = std::env::args().nth(2).expect("file PATH");
            scanner.scan_bytes(&std::fs::read(path).unwrap()).len()
        }
        "none" => 0,
        other => panic!(
            "unknown case {other:?}: clean, prose, dense, event, small, audit, custom, file or none"
        ),
    };
    println!("{case}: {found} findings");
}

fn default_policy_pattern() -> aa_security::CustomPattern {
    let (name, regex) = corpus::DEFAULT_POLICY_PATTERN;
    aa_security::CustomPattern {
        name: name.into(),
        regex: regex.into(),
    }
}
