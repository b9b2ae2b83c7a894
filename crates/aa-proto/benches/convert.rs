//! An event to the wire and back, as each one of `aa-bench events` travels: the SDK client and
//! the runtime encode it (the runtime again after redaction, for its outbox), the runtime and
//! the gateway decode it. Run with `cargo bench -p aa-proto --bench convert`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use aa_core::AuditEvent;
use aa_proto::pb;
use aa_testkit::corpus;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message as _;

fn convert(c: &mut Criterion) {
    let event: AuditEvent = serde_json::from_str(corpus::SMALL_EVENT).unwrap();
    let wire = pb::AuditEvent::from(&event).encode_to_vec();
    assert_eq!(
        AuditEvent::try_from(pb::AuditEvent::decode(&*wire).unwrap()).unwrap(),
        event
    );
    let mut group = c.benchmark_group("event");
    group.bench_function("to_wire", |b| {
        b.iter(|| pb::AuditEvent::from(std::hint::black_box(&event)).encode_to_vec())
    });
    group.bench_function("from_wire", |b| {
        b.iter(|| {
            AuditEvent::try_from(pb::AuditEvent::decode(std::hint::black_box(&*wire)).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, convert);
criterion_main!(benches);
