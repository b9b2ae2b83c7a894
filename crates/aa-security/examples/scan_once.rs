//! Scans one corpus of the `scan` bench once, for counting instructions where wall time is too
//! noisy to compare builds: run it under `valgrind --tool=cachegrind --cache-sim=no` with the
//! case (`clean`, `prose`, `dense`, `event`, `small`, `audit`) and again with `none`; the
//! difference is the scan's cost (`event` redacts the 4 KiB event 100 times, `small` a clean
//! tool event of the size `aa-bench events` sends 1,000 times, as JSON bytes; `audit` the same
//! event 1,000 times as the runtime and gateway hold it, an `AuditEvent`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use aa_core::AuditEvent;
use aa_security::{Limits, Scanner};
use aa_testkit::corpus;

const CORPUS_BYTES: usize = 4 << 20;

/// A tool's end as an agent reports it, with nothing to redact.
const SMALL_EVENT: &str = r#"{"event_id":"e-7","timestamp_ms":1,"kind":"tool_end","agent":{"id":"bench-events-0","team":"bench","depth":0},"session_id":"bench-session","action":{"type":"tool_call","tool":"read_file","args":{"path":"/workspace/src/module_7.rs"}},"detail":{"result":"read 42 lines from module_7.rs: fn handle_7(request: Request) -> Response { let started = Instant::now(); let body = request.body(); tracing::info!(bytes = body.len(), \"handling request 7\"); respond(body) }","duration_ms":7}}"#;

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
                    .redact_event(SMALL_EVENT.as_bytes(), &Limits::default())
                    .receipts
                    .len()
            })
            .sum(),
        "audit" => {
            let mut event: AuditEvent = serde_json::from_str(SMALL_EVENT).unwrap();
            (0..1_000)
                .map(|_| {
                    scanner
                        .redact_audit_event(&mut event, &Limits::default())
                        .unwrap()
                })
                .sum()
        }
        "none" => 0,
        other => panic!("unknown case {other:?}: clean, prose, dense, event, small, audit or none"),
    };
    println!("{case}: {found} findings");
}
