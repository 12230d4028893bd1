//! Encoding the wire envelope (the webhook request body) by payload size:
//! `cargo bench -p herald-benches --bench envelope`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_benches::event;

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for size in [256usize, 1024, 64 * 1024] {
        let e = event("acme", "work_order.completed", size);
        group.throughput(Throughput::Bytes(e.envelope_bytes().len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &e, |b, e| {
            b.iter(|| e.envelope_bytes())
        });
    }
    group.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
