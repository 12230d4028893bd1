//! Opening the embedded log, by how its sealed segments' indexes are found:
//! read from their index files, or rebuilt by scanning every segment (what
//! every start-up did before the index files). `cargo bench -p
//! herald-benches --bench log_open`; `HERALD_BENCH_LOG_MIB` sets the size of
//! the log (default 512 MiB, in 64 MiB segments, one partition), and
//! `HERALD_BENCH_COLD=1` empties the page cache before each open (root only:
//! a restart after a reboot reads from disk).

use std::{fs, path::Path};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald_benches::event;
use herald_engine::log::{embedded::EmbeddedLog, EventLog};

fn remove_index_files(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "idx") {
            fs::remove_file(path).unwrap();
        }
    }
}

fn open(c: &mut Criterion) {
    let mib: u64 = std::env::var("HERALD_BENCH_LOG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    let batch: Vec<_> = (0..1_000)
        .map(|_| event("tenant-1", "work_order.completed", 1_000))
        .collect();
    let per_batch = serde_json::to_vec(&batch).unwrap().len() as u64;
    for _ in 0..(mib << 20) / per_batch {
        rt.block_on(log.append(&batch)).unwrap();
    }
    drop(log);
    let bytes = EmbeddedLog::open(dir.path(), 1).unwrap().opened().bytes;

    let cold = std::env::var("HERALD_BENCH_COLD").is_ok_and(|v| v == "1");
    let before = |scan: bool| {
        if scan {
            remove_index_files(dir.path());
        }
        if cold {
            std::process::Command::new("sync").status().unwrap();
            fs::write("/proc/sys/vm/drop_caches", "1").expect("HERALD_BENCH_COLD needs root");
        }
    };
    let cache = if cold { "cold" } else { "warm" };
    let mut group = c.benchmark_group("log_open");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(format!("{mib}MiB/{cache}/index_files"), |b| {
        b.iter_batched(
            || before(false),
            |()| {
                let log = EmbeddedLog::open(dir.path(), 1).unwrap();
                assert_eq!(log.opened().scanned, 1);
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function(format!("{mib}MiB/{cache}/scan_every_segment"), |b| {
        b.iter_batched(
            || before(true),
            |()| {
                let log = EmbeddedLog::open(dir.path(), 1).unwrap();
                assert_eq!(log.opened().scanned, log.opened().segments);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
