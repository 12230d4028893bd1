use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;

use super::*;
use crate::model::EventSource;

fn event(tenant: &str, n: u64) -> DomainEvent {
    let now = OffsetDateTime::now_utc();
    DomainEvent {
        id: crate::ids::new_id("evt"),
        tenant_id: tenant.into(),
        event_type: "work_order.completed".into(),
        schema_version: 1,
        dedupe_key: None,
        occurred_at: now,
        received_at: now,
        payload: serde_json::json!({ "n": n }),
        source: EventSource::Api,
        aggregate_type: None,
        aggregate_id: None,
        trace_id: None,
    }
}

#[tokio::test]
async fn appends_are_readable_by_offset_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 4).unwrap();
    let events: Vec<_> = (0..10).map(|n| event("acme", n)).collect();
    let positions = log.append(&events).await.unwrap();
    let p = log.partition_for("acme");
    assert!(positions.iter().all(|pos| pos.partition == p));
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    drop(log);

    let log = EmbeddedLog::open(dir.path(), 16).unwrap();
    assert_eq!(
        log.partitions(),
        4,
        "an existing log keeps its partition count"
    );
    let read = log.read(p, 3, 4).await.unwrap();
    assert_eq!(read.len(), 4);
    assert_eq!(read[0].event, events[3]);
    assert_eq!(read[3].position.offset, 6);
    assert_eq!(log.end_offset(p).await.unwrap(), 10);
    assert!(log.read(p, 10, 5).await.unwrap().is_empty());
}

#[tokio::test]
async fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.append(&[event("t", 0), event("t", 1)]).await.unwrap();
    drop(log);
    let path = dir.path().join("partition-000.log");
    let len = std::fs::metadata(&path).unwrap().len();
    // A crash in the middle of a write: half a header and some garbage.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);

    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    assert_eq!(log.end_offset(0).await.unwrap(), 2);
    let pos = log.append(&[event("t", 2)]).await.unwrap();
    assert_eq!(pos[0].offset, 2);
    let all = log.read(0, 0, 10).await.unwrap();
    assert_eq!(all[2].event.payload["n"], 2);
}

#[tokio::test]
async fn corrupt_record_is_cut_at_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.append(&[event("t", 0), event("t", 1)]).await.unwrap();
    drop(log);
    let path = dir.path().join("partition-000.log");
    let bytes = std::fs::read(&path).unwrap();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0xff;
    std::fs::write(&path, &flipped).unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    assert_eq!(log.end_offset(0).await.unwrap(), 1);
}

#[tokio::test]
async fn consumer_positions_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    let events: Vec<_> = (0..6)
        .map(|n| event(if n % 2 == 0 { "a" } else { "b" }, n))
        .collect();
    log.append(&events).await.unwrap();
    let mut consumer = log.consumer("workers").await.unwrap();
    let got = consumer.poll(100, Duration::from_millis(10)).await.unwrap();
    assert_eq!(got.len(), 6);
    // Commit only the first record of each partition.
    let mut firsts: Vec<LogPosition> = Vec::new();
    for r in &got {
        if r.position.offset == 0 {
            firsts.push(LogPosition {
                partition: r.position.partition,
                offset: 1,
            });
        }
    }
    consumer.commit(&firsts).await.unwrap();
    drop(consumer);
    drop(log);

    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    let mut consumer = log.consumer("workers").await.unwrap();
    let again = consumer.poll(100, Duration::from_millis(10)).await.unwrap();
    assert_eq!(again.len(), 6 - firsts.len());
    assert!(again.iter().all(|r| r.position.offset >= 1));
    let mut other = log.consumer("another-group").await.unwrap();
    assert_eq!(
        other
            .poll(100, Duration::from_millis(10))
            .await
            .unwrap()
            .len(),
        6
    );
}

#[tokio::test]
async fn poll_wakes_on_append_and_times_out_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path(), 2).unwrap());
    let mut consumer = log.consumer("g").await.unwrap();
    assert!(consumer
        .poll(10, Duration::from_millis(20))
        .await
        .unwrap()
        .is_empty());
    let writer = log.clone();
    let handle = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.append(&[event("x", 1)]).await.unwrap();
    });
    let got = consumer.poll(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    handle.await.unwrap();
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_keep_dense_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path(), 1).unwrap());
    let mut tasks = Vec::new();
    for n in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(&[event("t", n)]).await.unwrap()[0].offset
        }));
    }
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..64).collect::<Vec<_>>());
    let all = log.read(0, 0, 100).await.unwrap();
    assert_eq!(all.len(), 64);
}

#[tokio::test]
async fn offset_for_time_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 1).unwrap();
    log.append(&[event("t", 0)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.append(&[event("t", 1), event("t", 2)]).await.unwrap();
    assert_eq!(
        log.offset_for_time(0, OffsetDateTime::UNIX_EPOCH)
            .await
            .unwrap(),
        0
    );
    assert_eq!(log.offset_for_time(0, middle).await.unwrap(), 1);
    let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert_eq!(log.offset_for_time(0, later).await.unwrap(), 3);
}
