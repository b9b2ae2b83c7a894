//! Scans one corpus of the `scan` bench once, for counting instructions where wall time is too
//! noisy to compare builds: run it under `valgrind --tool=cachegrind --cache-sim=no` with the
//! case (`clean`, `prose`, `dense`, `event`) and again with `none`; the difference is the
//! scan's cost (`event` redacts the event 100 times).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

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
        "none" => 0,
        other => panic!("unknown case {other:?}: clean, prose, dense, event or none"),
    };
    println!("{case}: {found} findings");
}
