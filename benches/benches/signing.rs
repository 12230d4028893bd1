//! Signing cost by payload size, HMAC (`v1`) next to Ed25519 (`v1a`):
//! `cargo bench -p herald-benches --bench signing`. Each iteration signs
//! one delivery on one core, so signs/s per core = 1 / time per iteration.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_engine::{
    ed25519::SigningKey,
    signing::{signature_header, SigningSecret},
};

fn signing(c: &mut Criterion) {
    let secret = SigningSecret::generate();
    let rotated = [SigningSecret::generate(), SigningSecret::generate()];
    let key = SigningKey::generate();
    let rotated_keys = [SigningKey::generate(), SigningKey::generate()];
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
        group.bench_with_input(BenchmarkId::new("ed25519", size), &body, |b, body| {
            b.iter(|| key.sign("evt_0193", 1_700_000_000, body))
        });
        group.bench_with_input(
            BenchmarkId::new("ed25519_dual_signed", size),
            &body,
            |b, body| {
                b.iter(|| {
                    rotated_keys
                        .iter()
                        .map(|k| k.sign("evt_0193", 1_700_000_000, body))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
