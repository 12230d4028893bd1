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
        payload: serde_json::json!({ "n": n }).into(),
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
    assert_eq!(all[2].event.payload.to_value().unwrap()["n"], 2);
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

fn small_segments() -> LogFiles {
    LogFiles {
        segment_bytes: 2_000,
    }
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_str().unwrap();
            name.starts_with("partition-") && name.ends_with(".log")
        })
        .count()
}

#[tokio::test]
async fn segments_roll_and_offsets_run_on_across_them_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open_with(dir.path(), 1, small_segments()).unwrap();
    let mut events = Vec::new();
    for n in 0..60 {
        let batch = [event("t", n)];
        let pos = log.append(&batch).await.unwrap();
        assert_eq!(pos[0].offset, n);
        events.extend(batch);
    }
    let files = segment_files(dir.path());
    assert!(
        files > 3,
        "60 records of ~250 bytes in 2 kB segments: {files} files"
    );
    drop(log);

    let log = EmbeddedLog::open_with(dir.path(), 1, small_segments()).unwrap();
    assert_eq!(log.end_offset(0).await.unwrap(), 60);
    let mut read = Vec::new();
    let mut next = 0;
    while next < 60 {
        let records = log.read(0, next, 100).await.unwrap();
        assert!(!records.is_empty(), "a read at {next} found nothing");
        next = records.last().unwrap().position.offset + 1;
        read.extend(records);
    }
    let offsets: Vec<u64> = read.iter().map(|r| r.position.offset).collect();
    assert_eq!(offsets, (0..60).collect::<Vec<_>>());
    assert!(read.iter().zip(&events).all(|(r, e)| r.event == *e));
    assert_eq!(log.append(&[event("t", 60)]).await.unwrap()[0].offset, 60);
}

/// The partition's sealed segments, the entries their indexes hold, and
/// the entries of the one being written.
fn index_entries(log: &EmbeddedLog, p: usize) -> (usize, usize, usize) {
    let segments = log.shared.partitions[p].segments.read();
    let (sealed, open) = segments.split_at(segments.len() - 1);
    (
        sealed.len(),
        sealed.iter().map(|s| s.index.entries()).sum(),
        open[0].index.entries(),
    )
}

#[tokio::test]
async fn sealed_segments_index_sparsely_and_read_every_record_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    // ~1.1 kB records in 512 kB segments: ~460 records and 8 marks a segment.
    let files = LogFiles {
        segment_bytes: 512 * 1024,
    };
    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    let events = append_padded(&log).await;
    // Sealed as the writer rolled them, then as the log opened them again
    // from their index files, then scanned (no index files).
    read_every_range(&log, dir.path(), &events).await;
    drop(log);
    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    read_every_range(&log, dir.path(), &events).await;
    drop(log);
    for file in index_files(dir.path()) {
        std::fs::remove_file(file).unwrap();
    }
    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    read_every_range(&log, dir.path(), &events).await;
}

/// 2,000 records of ~1.1 kB, appended in batches of 50.
async fn append_padded(log: &EmbeddedLog) -> Vec<DomainEvent> {
    let pad = "x".repeat(1000);
    let mut events = Vec::new();
    for chunk in 0..40 {
        let batch: Vec<DomainEvent> = (0..50)
            .map(|i| {
                let mut e = event("t", chunk * 50 + i);
                let mut payload = e.payload.to_value().unwrap();
                payload["pad"] = serde_json::json!(pad);
                e.payload = payload.into();
                e
            })
            .collect();
        log.append(&batch).await.unwrap();
        events.extend(batch);
    }
    events
}

/// The sealed segments' index files, in segment order.
fn index_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_reopen_scans_only_the_segment_being_written_and_refuses_a_wrong_index_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = LogFiles {
        segment_bytes: 512 * 1024,
    };
    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    let events = append_padded(&log).await;
    let sealed = index_entries(&log, 0).0;
    drop(log);
    let written = index_files(dir.path());
    assert_eq!(
        written.len(),
        sealed,
        "the writer wrote an index file for each segment it sealed"
    );
    let originals: Vec<Vec<u8>> = written.iter().map(|f| std::fs::read(f).unwrap()).collect();

    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    let opened = log.opened();
    assert_eq!(
        (opened.segments, opened.scanned),
        (sealed as u64 + 1, 1),
        "only the segment being written is read at open"
    );
    read_every_range(&log, dir.path(), &events).await;
    drop(log);

    // One missing, one altered, one another segment's (same shape, other
    // records): each is refused, its segment scanned, the file written again.
    std::fs::remove_file(&written[0]).unwrap();
    let mut altered = originals[1].clone();
    altered[20] ^= 1;
    std::fs::write(&written[1], altered).unwrap();
    std::fs::write(&written[2], &originals[1]).unwrap();
    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    assert_eq!(
        log.opened().scanned,
        4,
        "three wrong index files and the last"
    );
    read_every_range(&log, dir.path(), &events).await;
    let rewritten: Vec<Vec<u8>> = index_files(dir.path())
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(
        rewritten == originals,
        "the index files are as the writer wrote them"
    );
    assert_eq!(
        log.append(&[event("t", 2000)]).await.unwrap()[0].offset,
        2000
    );
}

/// Reads of the 2,000 records of the test above, from offsets within and
/// across sealed segments, return each record once and in order, and the
/// index stays sparse.
async fn read_every_range(log: &EmbeddedLog, dir: &Path, events: &[DomainEvent]) {
    let (segments, sealed, open) = index_entries(log, 0);
    assert!(
        segments >= 3 && segment_files(dir) == segments + 1,
        "2,000 records of ~1.1 kB in 512 kB segments: {segments} sealed"
    );
    // Each sealed segment: one entry per 64 kB and its last (not ~460).
    assert!(
        sealed <= segments * (512 / 64 + 2),
        "{sealed} entries for {segments} sealed segments"
    );
    assert!(open < 470, "{open} entries for the segment being written");
    for (from, max) in [(0, 2000), (1, 7), (459, 3), (460, 1), (777, 100), (1999, 5)] {
        let mut next = from;
        let mut got = Vec::new();
        while got.len() < max && next < 2000 {
            let records = log.read(0, next, max - got.len()).await.unwrap();
            assert!(!records.is_empty(), "a read at {next} found nothing");
            next = records.last().unwrap().position.offset + 1;
            got.extend(records);
        }
        let offsets: Vec<u64> = got.iter().map(|r| r.position.offset).collect();
        let want: Vec<u64> = (from..(from + max as u64).min(2000)).collect();
        assert_eq!(offsets, want, "read {max} from {from}");
        assert!(got
            .iter()
            .all(|r| r.event == events[r.position.offset as usize]));
    }
    let earlier = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(log.offset_for_time(0, earlier).await.unwrap(), 0);
}

#[tokio::test]
async fn expired_segments_go_only_once_every_group_committed_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open_with(dir.path(), 1, small_segments()).unwrap();
    for n in 0..40 {
        log.append(&[event("t", n)]).await.unwrap();
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 1000;
    // No consumer group yet: nothing is known to be done.
    assert_eq!(log.drop_segments(now).unwrap(), Dropped::default());

    let mut fast = log.consumer("fast").await.unwrap();
    let mut slow = log.consumer("slow").await.unwrap();
    let at = |offset| {
        [LogPosition {
            partition: 0,
            offset,
        }]
    };
    fast.commit(&at(40)).await.unwrap();
    slow.commit(&at(10)).await.unwrap();
    let before = segment_files(dir.path());
    // Past the retention but the slow group has read only 10 records.
    let dropped = log.drop_segments(now).unwrap();
    assert!(dropped.records <= 10, "{dropped:?}");
    assert!(
        dropped.records > 0,
        "the segments wholly before 10 go: {dropped:?}"
    );
    // Not yet past the retention: nothing, whatever was committed.
    slow.commit(&at(40)).await.unwrap();
    assert_eq!(log.drop_segments(0).unwrap(), Dropped::default());

    let dropped_all = log.drop_segments(now).unwrap();
    assert_eq!(
        dropped.segments + dropped_all.segments,
        before as u64 - 1,
        "all but the segment being written"
    );
    assert_eq!(segment_files(dir.path()), 1);
    assert!(
        index_files(dir.path()).is_empty(),
        "their index files went with them"
    );
    let first_kept = dropped.records + dropped_all.records;
    // Appends go on; a read below the oldest kept record starts at it.
    assert_eq!(log.append(&[event("t", 40)]).await.unwrap()[0].offset, 40);
    let read = log.read(0, 0, 100).await.unwrap();
    assert_eq!(read.first().unwrap().position.offset, first_kept);
    assert_eq!(log.end_offset(0).await.unwrap(), 41);
    assert_eq!(
        log.offset_for_time(0, time::OffsetDateTime::UNIX_EPOCH)
            .await
            .unwrap(),
        first_kept
    );

    // A new group starts at the oldest kept record, and a reopen finds
    // the same offsets.
    let mut late = log.consumer("late").await.unwrap();
    let got = late.poll(100, Duration::from_millis(10)).await.unwrap();
    assert_eq!(got.last().unwrap().position.offset, 40);
    drop((fast, slow, late, log));
    let log = EmbeddedLog::open_with(dir.path(), 1, small_segments()).unwrap();
    assert_eq!(log.end_offset(0).await.unwrap(), 41);
}

#[tokio::test]
async fn a_record_damaged_in_a_sealed_segment_is_refused_when_read_not_returned_altered() {
    let dir = tempfile::tempdir().unwrap();
    let files = LogFiles {
        segment_bytes: 512 * 1024,
    };
    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    append_padded(&log).await;
    drop(log);
    // One letter of a record's padding in the second segment: still JSON.
    let segment = index_files(dir.path())[1].with_extension("log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 2
        + bytes[bytes.len() / 2..]
            .iter()
            .position(|&b| b == b'x')
            .unwrap();
    bytes[at] = b'y';
    std::fs::write(&segment, &bytes).unwrap();

    let log = EmbeddedLog::open_with(dir.path(), 1, files).unwrap();
    assert_eq!(
        log.opened().scanned,
        1,
        "the segment's index file is still valid"
    );
    let mut refused = Vec::new();
    for offset in 0..2000 {
        match log.read(0, offset, 1).await {
            Ok(records) => assert_eq!(records[0].position.offset, offset),
            Err(LogError::Corrupt { offset, reason, .. }) => {
                assert!(
                    reason.contains("checksum") && reason.contains(segment.to_str().unwrap()),
                    "{reason}"
                );
                refused.push(offset);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused.len(), 1, "exactly the damaged record: {refused:?}");
    let around = log.read(0, refused[0] - 2, 5).await;
    assert!(
        matches!(around, Err(LogError::Corrupt { .. })),
        "{around:?}"
    );
}
