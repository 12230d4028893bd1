//! SQLite store writes (WAL, synchronous=FULL, group commit):
//! `fan_out` by batch size (one delivery per event) and `record_attempt`
//! one at a time and 256 concurrent (one group commit):
//! `cargo bench -p herald-benches --bench store_write`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_benches::{attempt, delivery, event, subscription};
use herald_engine::{
    encryption::SecretCipher,
    log::LogPosition,
    store::{
        embedded::EmbeddedStore, DeliveryLogStore, FanOut, ScheduleStore, SubscriptionStore,
        TenantStore,
    },
};

fn store_write(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), SecretCipher::random()).unwrap());
    let sub = subscription("acme", "https://example.com/hook", &["a.*".into()]);
    rt.block_on(async {
        let key = herald_engine::resources::ApiKey {
            id: herald_engine::ids::new_id(herald_engine::API_KEY),
            tenant_id: "acme".into(),
            name: None,
            prefix: "hk_bench".into(),
            created_at: time::OffsetDateTime::now_utc(),
            revoked_at: None,
            scopes: herald_engine::resources::Scope::full(),
            expires_at: None,
        };
        store.create_tenant("acme", &key, [7; 32]).await.unwrap();
        store.create_subscription(&sub).await.unwrap();
    });
    let mut offset = 0u64;
    let mut group = c.benchmark_group("store_fan_out");
    group.sample_size(20);
    for batch in [1usize, 64, 512] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|_| {
                            let e = event("acme", "a.b", 1024);
                            offset += 1;
                            FanOut {
                                deliveries: vec![delivery(&e, &sub.id)],
                                event: e,
                                position: LogPosition {
                                    partition: 0,
                                    offset,
                                },
                                lease_until_ms: None,
                                unscheduled: false,
                                parked: Vec::new(),
                                indexed: false,
                            }
                        })
                        .collect::<Vec<_>>()
                },
                |batch| rt.block_on(store.fan_out(batch, i64::MAX, 0)).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("store_record_attempt");
    group.sample_size(20);
    for concurrent in [1usize, 256] {
        group.throughput(Throughput::Elements(concurrent as u64));
        group.bench_function(BenchmarkId::from_parameter(concurrent), |b| {
            b.iter_batched(
                || {
                    let batch: Vec<FanOut> = (0..concurrent)
                        .map(|_| {
                            let e = event("acme", "a.b", 1024);
                            offset += 1;
                            FanOut {
                                deliveries: vec![delivery(&e, &sub.id)],
                                event: e,
                                position: LogPosition {
                                    partition: 0,
                                    offset,
                                },
                                lease_until_ms: None,
                                unscheduled: false,
                                parked: Vec::new(),
                                indexed: false,
                            }
                        })
                        .collect();
                    let attempts: Vec<_> = batch
                        .iter()
                        .map(|f| attempt(&f.deliveries[0], &sub.url))
                        .collect();
                    rt.block_on(store.fan_out(batch, i64::MAX, 0)).unwrap();
                    attempts
                },
                |attempts| {
                    rt.block_on(async {
                        let tasks: Vec<_> = attempts
                            .into_iter()
                            .map(|a| {
                                let store = store.clone();
                                tokio::spawn(async move { store.record_attempt(a, None).await })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap().unwrap();
                        }
                    })
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, store_write);
criterion_main!(benches);
