//! Criterion: one tool-call decision against 10, 100 and 10,000 tool rules with conditions.
//! Run with `cargo bench -p aa-policy --bench eval`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod workload;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn tool_call_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("tool_call");
    workload::for_each_case(|label, n, set, request| {
        group.bench_with_input(BenchmarkId::new(label, n), request, |b, r| {
            b.iter(|| set.evaluate(std::hint::black_box(r)))
        });
    });
    group.finish();
}

criterion_group!(benches, tool_call_decision);
criterion_main!(benches);
