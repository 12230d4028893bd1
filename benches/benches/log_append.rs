//! Embedded log append (durable, fsync'd) by batch size:
//! `cargo bench -p herald-benches --bench log_append`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_engine::{
    log::{embedded::EmbeddedLog, EventLog},
    model::{DomainEvent, EventSource},
};
use time::OffsetDateTime;

fn event(n: usize) -> DomainEvent {
    let now = OffsetDateTime::now_utc();
    DomainEvent {
        id: herald_engine::ids::new_id("evt"),
        tenant_id: format!("tenant-{}", n % 16),
        event_type: "work_order.completed".into(),
        schema_version: 1,
        dedupe_key: None,
        occurred_at: now,
        received_at: now,
        payload: serde_json::json!({ "work_order": n, "site": "plant-7", "qty": 12 }).into(),
        source: EventSource::Api,
        aggregate_type: None,
        aggregate_id: None,
        trace_id: None,
    }
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 8).unwrap();
    let mut group = c.benchmark_group("log_append");
    group.sample_size(20);
    for batch in [1usize, 16, 256] {
        let events: Vec<_> = (0..batch).map(event).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &events, |b, events| {
            b.iter(|| rt.block_on(log.append(events)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
