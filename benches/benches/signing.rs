//! Signing cost by payload size: `cargo bench -p herald-benches --bench signing`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_engine::signing::{signature_header, SigningSecret};

fn signing(c: &mut Criterion) {
    let secret = SigningSecret::generate();
    let rotated = [SigningSecret::generate(), SigningSecret::generate()];
    let mut group = c.benchmark_group("sign");
    for size in [256usize, 4 * 1024, 64 * 1024] {
        let body = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("one_secret", size), &body, |b, body| {
            b.iter(|| secret.sign("evt_0193", 1_700_000_000, body))
        });
        group.bench_with_input(BenchmarkId::new("dual_signed", size), &body, |b, body| {
            b.iter(|| signature_header(rotated.iter(), "evt_0193", 1_700_000_000, body))
        });
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
