//! Scanner throughput on clean and secret-dense text, and the time to scan and redact a 4 KiB
//! JSON event. The corpora come from `aa-testkit::corpus` (deterministic).
//! Run with `cargo bench -p aa-security --bench scan`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use aa_security::{Limits, Scanner};
use aa_testkit::corpus;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CORPUS_BYTES: usize = 4 << 20;

fn throughput(c: &mut Criterion) {
    let scanner = Scanner::new().unwrap();
    let clean = corpus::clean_text(1, CORPUS_BYTES);
    let prose = corpus::prose_and_code(&clean);
    let (dense, planted) = corpus::dense_text(2, CORPUS_BYTES, 200);
    assert!(
        scanner.scan(&clean).len() < 5,
        "the clean corpus should be (nearly) clean"
    );
    assert!(scanner.scan(&dense).len() >= planted.len() * 9 / 10);
    let mut group = c.benchmark_group("scan");
    group.sample_size(20);
    for (name, text) in [("clean", &clean), ("prose", &prose), ("dense", &dense)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| scanner.scan(std::hint::black_box(text)))
        });
    }
    group.finish();
}

fn event(c: &mut Criterion) {
    let scanner = Scanner::new().unwrap();
    let event = corpus::event_4k(3);
    let limits = Limits::default();
    let redacted = scanner.redact_event(event.as_bytes(), &limits);
    assert_eq!(
        redacted.receipts.len(),
        2,
        "{}",
        String::from_utf8_lossy(&redacted.bytes)
    );
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Bytes(event.len() as u64));
    group.bench_function("redact_4k_json", |b| {
        b.iter(|| scanner.redact_event(std::hint::black_box(event.as_bytes()), &limits))
    });
    // What the runtime and the gateway do to each event of `aa-bench events`.
    let small: aa_core::AuditEvent = serde_json::from_str(corpus::SMALL_EVENT).unwrap();
    group.throughput(Throughput::Bytes(corpus::SMALL_EVENT.len() as u64));
    group.bench_function("redact_small_audit_event", |b| {
        b.iter_batched_ref(
            || small.clone(),
            |event| scanner.redact_audit_event(event, &limits),
            criterion::BatchSize::SmallInput,
        )
    });
    // The same under the default policy (`aasm up`), whose custom pattern every scan runs.
    let custom = std::sync::Arc::new(scanner)
        .with_patterns_added(&[default_policy_pattern()])
        .unwrap();
    group.bench_function("redact_small_audit_event_custom", |b| {
        b.iter_batched_ref(
            || small.clone(),
            |event| custom.redact_audit_event(event, &limits),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, throughput, event);
criterion_main!(benches);

fn default_policy_pattern() -> aa_security::CustomPattern {
    let (name, regex) = corpus::DEFAULT_POLICY_PATTERN;
    aa_security::CustomPattern {
        name: name.into(),
        regex: regex.into(),
    }
}
