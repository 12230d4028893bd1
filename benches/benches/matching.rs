//! Subscription matching with 1k and 100k subscriptions, a mix of exact
//! types and `prefix.*` wildcards over 10 tenants:
//! `cargo bench -p herald-benches --bench matching`. Also one event against
//! 100 subscriptions of its type, each with a payload filter, against the
//! same without filters (`matching_event`, as fan-out calls it).

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

fn payload_filters(c: &mut Criterion) {
    let mut group = c.benchmark_group("payload_filters");
    let mut event = herald_benches::event("t", "inventory.adjusted", 0);
    event.payload = serde_json::json!({"warehouse": "EU-2", "quantity": 150, "tags": ["x"]}).into();
    for filtered in [false, true] {
        let subs = (0..100).map(|i| {
            let mut s = subscription("t", "https://example.com/hook", &["inventory.*".into()]);
            s.filter =
                filtered.then(|| format!(r#"data.warehouse == "EU-2" && data.quantity > {i}"#));
            s
        });
        let idx = SubscriptionIndex::new(subs);
        let name = if filtered {
            "100_filtered"
        } else {
            "100_unfiltered"
        };
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new(name, 100), &idx, |b, idx| {
            b.iter(|| idx.matching_event(&event))
        });
    }
    group.finish();
}

criterion_group!(benches, matching, payload_filters);
criterion_main!(benches);
