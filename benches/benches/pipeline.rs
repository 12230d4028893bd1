//! The whole embedded pipeline in one process: `Engine::emit_batch` →
//! durable log → fan-out → schedule → signed HTTP delivery to an axum
//! receiver on loopback, measured in events delivered per second:
//! `cargo bench -p herald-benches --bench pipeline`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, routing::post, Router};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_engine::{Engine, EngineConfig, NewEvent, NewSubscription};

const EVENTS: u64 = 2_000;
const BATCH: usize = 200;

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let engine = rt.block_on(async {
        let app = Router::new()
            .route(
                "/hook",
                post(|State(n): State<Arc<AtomicU64>>| async move {
                    n.fetch_add(1, Ordering::Relaxed);
                    StatusCode::NO_CONTENT
                }),
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = EngineConfig {
            data_dir: dir.path().to_path_buf(),
            allow_targets: vec!["127.0.0.0/8".parse().unwrap()],
            ..EngineConfig::default()
        };
        let engine = Engine::start(config).await.unwrap();
        engine.create_tenant("acme").await.unwrap();
        engine
            .subscribe(
                "acme",
                NewSubscription {
                    url,
                    event_types: vec!["bench.*".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        engine
    });
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function(BenchmarkId::new("emit_to_delivery", EVENTS), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let target = received.load(Ordering::Relaxed) + EVENTS;
                    for _ in 0..EVENTS as usize / BATCH {
                        let items = (0..BATCH)
                            .map(|i| NewEvent {
                                event_type: "bench.tick".into(),
                                payload: serde_json::json!({ "i": i, "pad": "x".repeat(1000) })
                                    .into(),
                                ..Default::default()
                            })
                            .collect();
                        engine.emit_batch("acme", items).await.unwrap();
                    }
                    while received.load(Ordering::Relaxed) < target {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    rt.block_on(engine.shutdown());
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
