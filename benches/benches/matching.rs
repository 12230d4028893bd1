//! Subscription matching with 1k and 100k subscriptions, a mix of exact
//! types and `prefix.*` wildcards over 10 tenants:
//! `cargo bench -p herald-benches --bench matching`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_benches::subscription;
use herald_engine::subscriptions::SubscriptionIndex;

fn index(n: usize) -> SubscriptionIndex {
    let subs = (0..n).map(|i| {
        let tenant = format!("tenant-{}", i % 10);
        let domain = format!("domain{}", (i / 10) % 100);
        let filter = match i % 4 {
            0 => format!("{domain}.*"),
            1 => format!("{domain}.entity{}.*", i % 50),
            _ => format!("{domain}.entity{}.changed", i % 50),
        };
        subscription(&tenant, "https://example.com/hook", &[filter])
    });
    SubscriptionIndex::new(subs)
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("matching");
    for n in [1_000usize, 100_000] {
        let idx = index(n);
        let matched = idx.matching("tenant-3", "domain13.entity33.changed").len();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new(format!("{matched}_matches"), n),
            &idx,
            |b, idx| b.iter(|| idx.matching("tenant-3", "domain13.entity33.changed")),
        );
        group.bench_with_input(BenchmarkId::new("no_match", n), &idx, |b, idx| {
            b.iter(|| idx.matching("tenant-3", "other.thing.happened"))
        });
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
