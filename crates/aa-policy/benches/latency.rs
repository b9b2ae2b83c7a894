//! Per-call latency percentiles (p50, p90, p99, p99.9) of one tool-call decision against 10,
//! 100 and 10,000 rules, each call timed on its own. Criterion reports medians; this reports
//! the tail. Run with `cargo bench -p aa-policy --bench latency`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod workload;

use std::time::{Duration, Instant};

const WARMUP: usize = 20_000;
const SAMPLES: usize = 200_000;

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent; keep that fast.
    let samples = if std::env::args().any(|a| a == "--bench") {
        SAMPLES
    } else {
        1_000
    };
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "case", "p50", "p90", "p99", "p99.9"
    );
    workload::for_each_case(|label, n, set, request| {
        for _ in 0..WARMUP.min(samples) {
            std::hint::black_box(set.evaluate(request));
        }
        let mut times: Vec<Duration> = (0..samples)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(set.evaluate(std::hint::black_box(request)));
                start.elapsed()
            })
            .collect();
        times.sort_unstable();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "{:<22} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.2?}",
            format!("{label}/{n}"),
            at(0.50),
            at(0.90),
            at(0.99),
            at(0.999)
        );
    });
}
