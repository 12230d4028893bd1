//! The schedule changelog on a real broker: a consumer that keeps one
//! restores each partition it is assigned before it reads the partition's
//! events, gets the last record per delivery (tombstones remove), loses
//! what a rebalance moves to another member, which restores the same; its
//! offsets are committed in the changelog's transaction.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use herald_engine::{
    config::KafkaConfig,
    log::{
        kafka::KafkaLog, partition_for, EventLog, LogConsumer, LogPosition, LogRecord, Pending,
        PendingSink, ScheduleLog,
    },
    model::{DomainEvent, EventSource, ScheduledDelivery},
};
use time::OffsetDateTime;

use crate::kafka::{prefix, require_kafka, BROKER, BROKERS};

const PARTITIONS: u32 = 4;

/// What a consumer restored and lost.
#[derive(Default)]
struct Sink {
    restored: Mutex<BTreeMap<u32, Vec<Pending>>>,
    revoked: Mutex<BTreeSet<u32>>,
}

impl Sink {
    /// Every record is of a partition this sink was given already.
    fn assert_restored(&self, records: &[LogRecord]) {
        let restored = self.restored.lock().unwrap();
        for r in records {
            assert!(
                restored.contains_key(&r.position.partition),
                "partition {} was read before it was restored",
                r.position.partition
            );
        }
    }
}

impl PendingSink for Sink {
    fn restored(&self, partition: u32, pending: Vec<Pending>) {
        self.restored.lock().unwrap().insert(partition, pending);
    }

    fn revoked(&self, partition: u32) {
        self.revoked.lock().unwrap().insert(partition);
    }
}

fn event(tenant: &str, n: u64) -> DomainEvent {
    let now = OffsetDateTime::now_utc();
    DomainEvent {
        id: herald_engine::ids::new_id("evt"),
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

fn retry(id: &str, event: &DomainEvent, attempt: u32) -> Pending {
    Pending {
        delivery: ScheduledDelivery {
            delivery_id: id.into(),
            tenant_id: event.tenant_id.clone(),
            event_id: event.id.clone(),
            subscription_id: "sub_1".into(),
            attempt,
            replay_of: None,
            is_replay: false,
            due_at_ms: 1_000 * i64::from(attempt),
            seq: 0,
            ordered: false,
        },
        event: event.clone(),
    }
}

/// Polls `consumers` in turn (a rebalance needs every member to poll) until
/// `done`, panicking after a minute; every record returned must be of a
/// partition its consumer's sink was given already. Returns the records
/// each read.
async fn poll_until(
    consumers: &mut [(&mut Box<dyn LogConsumer>, &Sink)],
    what: &str,
    done: impl Fn() -> bool,
) -> Vec<Vec<LogRecord>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut read = vec![Vec::new(); consumers.len()];
    while !done() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        for (i, (c, sink)) in consumers.iter_mut().enumerate() {
            let records = c.poll(100, Duration::from_millis(100)).await.unwrap();
            sink.assert_restored(&records);
            read[i].extend(records);
        }
    }
    read
}

/// A Kafka log over a new topic of [`PARTITIONS`] partitions, and the name
/// of its fan-out group.
async fn log_and_group(name: &str) -> (KafkaLog, String) {
    let prefix = prefix(name);
    let mut config = KafkaConfig::new(BROKERS);
    config.topic_prefix = prefix.clone();
    config.partitions = PARTITIONS;
    (
        KafkaLog::connect(config).await.unwrap(),
        format!("{prefix}-fanout"),
    )
}

/// Whether a rebalance moved partitions from `first` to `second`: the new
/// member restored exactly what the first lost.
fn moved(first: &Sink, second: &Sink) -> bool {
    let (moved, lost) = (
        second.restored.lock().unwrap(),
        first.revoked.lock().unwrap(),
    );
    !moved.is_empty() && moved.keys().copied().collect::<BTreeSet<_>>() == *lost
}

#[tokio::test(flavor = "multi_thread")]
async fn changelog_restores_on_assignment_and_moves_with_a_rebalance() {
    require_kafka().await;
    let _broker = BROKER.read().await;
    let (log, group) = log_and_group("changelog").await;

    // One member: every partition is restored (empty) before it is read.
    let first = Arc::new(Sink::default());
    let (mut a, kept) = log.consumer_keeping(&group, first.clone()).await.unwrap();
    let kept = kept.expect("the Kafka log keeps a schedule changelog");
    let tenants: Vec<String> = (0..12).map(|i| format!("tenant-{i}")).collect();
    let events: Vec<DomainEvent> = tenants.iter().map(|t| event(t, 1)).collect();
    let positions = log.append(&events).await.unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < events.len() {
        assert!(Instant::now() < deadline, "read {read} of the events");
        let records = a.poll(100, Duration::from_millis(200)).await.unwrap();
        first.assert_restored(&records);
        read += records.len();
    }
    assert_eq!(
        first
            .restored
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        (0..PARTITIONS).collect::<Vec<_>>(),
        "every partition was restored before its events were read"
    );
    assert!(first.restored.lock().unwrap().values().all(Vec::is_empty));

    // Retries: two per tenant, one forgotten, one moved to attempt 3.
    let mut expected: BTreeMap<u32, BTreeMap<String, u32>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let (gone, moved) = (format!("dlv_gone_{i}"), format!("dlv_kept_{i}"));
        kept.keep(&retry(&gone, e, 2)).await.unwrap();
        kept.keep(&retry(&moved, e, 2)).await.unwrap();
        kept.forget(&e.tenant_id, &gone).await.unwrap();
        kept.keep(&retry(&moved, e, 3)).await.unwrap();
        expected
            .entry(partition_for(&e.tenant_id, PARTITIONS))
            .or_default()
            .insert(moved, 3);
    }
    // Offsets go through the changelog's transaction.
    let next: Vec<LogPosition> = positions
        .iter()
        .map(|p| LogPosition {
            partition: p.partition,
            offset: p.offset + 1,
        })
        .collect();
    a.commit(&next).await.unwrap();
    let committed = log.committed(&group).await.unwrap().unwrap();
    for p in &next {
        assert!(
            committed
                .get(&p.partition)
                .is_some_and(|&at| at >= p.offset),
            "partition {} committed at {:?}, not past {}",
            p.partition,
            committed.get(&p.partition),
            p.offset
        );
    }

    // Events past the committed offsets: whoever owns their partition after
    // the rebalance reads them, the new member as soon as it is assigned
    // (while it restores), yet hands none out before the restore.
    let late: Vec<DomainEvent> = tenants.iter().map(|t| event(t, 2)).collect();
    log.append(&late).await.unwrap();

    // A second member: what moves to it is restored there and lost here.
    let second = Arc::new(Sink::default());
    let (mut b, _) = log.consumer_keeping(&group, second.clone()).await.unwrap();
    let read = poll_until(
        &mut [(&mut a, &first), (&mut b, &second)],
        "a rebalance to move partitions",
        || moved(&first, &second),
    )
    .await;
    let is_late = |r: &LogRecord| r.event.payload.to_value().unwrap()["n"] == 2;
    let mut late_in_b = read[1].iter().filter(|r| is_late(r)).count();
    let want = {
        let moved = second.restored.lock().unwrap();
        late.iter()
            .filter(|e| moved.contains_key(&partition_for(&e.tenant_id, PARTITIONS)))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while late_in_b < want {
        assert!(
            Instant::now() < deadline,
            "the new member read {late_in_b} of the {want} late events of its partitions"
        );
        let records = b.poll(100, Duration::from_millis(100)).await.unwrap();
        second.assert_restored(&records);
        late_in_b += records.iter().filter(|r| is_late(r)).count();
    }
    assert_eq!(late_in_b, want, "each late event of its partitions, once");
    let moved = second.restored.lock().unwrap();
    assert!(
        moved.len() < PARTITIONS as usize,
        "both members hold partitions"
    );
    for (partition, pending) in moved.iter() {
        let got: BTreeMap<String, u32> = pending
            .iter()
            .map(|p| (p.delivery.delivery_id.clone(), p.delivery.attempt))
            .collect();
        let want = expected.get(partition).cloned().unwrap_or_default();
        assert_eq!(
            got, want,
            "partition {partition}: the last record per delivery"
        );
        for p in pending {
            assert_eq!(p.event.tenant_id, p.delivery.tenant_id);
            assert_eq!(
                p.event.payload,
                serde_json::json!({ "n": 1 }).into(),
                "the event travels along"
            );
        }
    }
    println!(
        "changelog: {} partitions moved, {} retries restored there",
        moved.len(),
        moved.values().map(Vec::len).sum::<usize>()
    );
}

/// A member writes nothing to the changelog of a partition it lost: a
/// record committed after the new owner's restore would stay out of that
/// restore and come back at the next one (a finished retry sent again, or
/// a kept one hidden by a stale tombstone). After a rebalance, the first
/// member's writes for a partition that moved are refused, and for one it
/// kept they commit; the new owner and a later restore see only records
/// written while their writer owned the partition.
#[tokio::test(flavor = "multi_thread")]
async fn changelog_writes_only_what_its_member_owns() {
    require_kafka().await;
    let _broker = BROKER.read().await;
    let (log, group) = log_and_group("changelog-owned").await;
    let first = Arc::new(Sink::default());
    let (mut a, kept) = log.consumer_keeping(&group, first.clone()).await.unwrap();
    let kept = kept.expect("the Kafka log keeps a schedule changelog");
    // One tenant per partition.
    let mut tenants: BTreeMap<u32, String> = BTreeMap::new();
    for i in 0.. {
        let t = format!("tenant-{i}");
        tenants.entry(partition_for(&t, PARTITIONS)).or_insert(t);
        if tenants.len() == PARTITIONS as usize {
            break;
        }
    }
    let events: BTreeMap<u32, DomainEvent> =
        tenants.iter().map(|(&p, t)| (p, event(t, 1))).collect();
    poll_until(&mut [(&mut a, &first)], "the first assignment", || {
        first.restored.lock().unwrap().len() == PARTITIONS as usize
    })
    .await;
    for (p, e) in &events {
        kept.keep(&retry(&format!("dlv_before_{p}"), e, 2))
            .await
            .unwrap();
    }

    let second = Arc::new(Sink::default());
    let (mut b, _) = log.consumer_keeping(&group, second.clone()).await.unwrap();
    poll_until(
        &mut [(&mut a, &first), (&mut b, &second)],
        "a rebalance to move partitions",
        || moved(&first, &second),
    )
    .await;
    let lost = first.revoked.lock().unwrap().clone();
    assert!(
        lost.len() < PARTITIONS as usize,
        "both members hold partitions"
    );
    for (p, e) in &events {
        let wrote = kept.keep(&retry(&format!("dlv_after_{p}"), e, 3)).await;
        if lost.contains(p) {
            let refused = wrote.expect_err("a record of a partition this member lost");
            assert!(
                refused.to_string().contains("not this worker's"),
                "says why: {refused}"
            );
        } else {
            wrote.unwrap_or_else(|e| panic!("partition {p} is still this member's: {e}"));
        }
    }

    // The new owner restored what was written before the move; a restore
    // now (a new group) finds the later records of kept partitions only.
    for p in &lost {
        let restored: Vec<String> = second.restored.lock().unwrap()[p]
            .iter()
            .map(|r| r.delivery.delivery_id.clone())
            .collect();
        assert_eq!(restored, [format!("dlv_before_{p}")], "partition {p}");
    }
    drop((a, b));
    let later = Arc::new(Sink::default());
    let (mut c, _) = log
        .consumer_keeping(&format!("{group}-later"), later.clone())
        .await
        .unwrap();
    poll_until(&mut [(&mut c, &later)], "a later restore", || {
        later.restored.lock().unwrap().len() == PARTITIONS as usize
    })
    .await;
    for (p, pending) in later.restored.lock().unwrap().iter() {
        let got: BTreeMap<String, u32> = pending
            .iter()
            .map(|r| (r.delivery.delivery_id.clone(), r.delivery.attempt))
            .collect();
        let mut want = BTreeMap::from([(format!("dlv_before_{p}"), 2)]);
        if !lost.contains(p) {
            want.insert(format!("dlv_after_{p}"), 3);
        }
        assert_eq!(got, want, "partition {p}");
    }
}

/// The group fences the flusher's transactions too, before the member
/// hears it lost its partitions. A member whose name (`--worker-id`) a
/// plain consumer took over (a static member replaced: the broker drops
/// the first at once) still thinks it owns every partition, and its
/// producer was not fenced (the new member keeps no changelog); yet a
/// retry it keeps now is refused, because its transaction carries the
/// offsets it committed under its old membership, and a later restore
/// finds only what it kept before. Without those offsets the broker
/// committed the record.
#[tokio::test(flavor = "multi_thread")]
async fn changelog_of_a_member_replaced_under_its_name_commits_nothing_more() {
    require_kafka().await;
    let _broker = BROKER.read().await;
    let prefix = prefix("changelog-replaced");
    let mut config = KafkaConfig::new(BROKERS);
    config.topic_prefix = prefix.clone();
    config.partitions = PARTITIONS;
    config.worker_id = Some("w1".into());
    let group = format!("{prefix}-fanout");
    let log = KafkaLog::connect(config.clone()).await.unwrap();
    let first = Arc::new(Sink::default());
    let (mut a, kept) = log.consumer_keeping(&group, first.clone()).await.unwrap();
    let kept = kept.expect("the Kafka log keeps a schedule changelog");
    let (e, at) = read_one_and_keep_a_retry(&log, a.as_mut(), kept.as_ref()).await;
    let next = [LogPosition {
        partition: at.partition,
        offset: at.offset + 1,
    }];
    a.commit(&next).await.unwrap();

    // Another process under the same name: the group drops the first
    // member for it, which the first hears at its next heartbeat at the
    // earliest (it is not polled from here on).
    let other = KafkaLog::connect(config).await.unwrap();
    let mut b = other.consumer(&group).await.unwrap();
    let late = event("tenant-0", 2);
    other.append(std::slice::from_ref(&late)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = b.poll(100, Duration::from_millis(200)).await.unwrap();
        if records.iter().any(|r| r.event.id == late.id) {
            break;
        }
        assert!(Instant::now() < deadline, "the new member read nothing");
    }
    assert!(first.revoked.lock().unwrap().is_empty(), "not told yet");

    let zombie = kept.keep(&retry("dlv_zombie", &e, 3)).await;
    assert!(
        zombie.is_err(),
        "a retry kept by a member the group replaced: {zombie:?}"
    );

    drop((a, b));
    let restored: Vec<String> = restore_in_a_new_group(&log, &format!("{group}-later"), &e)
        .await
        .iter()
        .map(|r| r.delivery.delivery_id.clone())
        .collect();
    assert_eq!(restored, ["dlv_before"]);
}

/// A broker outage does not end the changelog for the process: a commit
/// that fails while the broker is down (its transaction with it) is
/// followed, once the broker is back, by retries kept and offsets
/// committed again, and a new member restores what was kept before and
/// after. Before, the producer that could not open a transaction after the
/// failed commit refused every write until the worker restarted.
#[tokio::test(flavor = "multi_thread")]
async fn changelog_commits_again_after_a_broker_outage() {
    require_kafka().await;
    let _broker = BROKER.write().await;
    let (log, group) = log_and_group("changelog-outage").await;
    let sink = Arc::new(Sink::default());
    let (mut a, kept) = log.consumer_keeping(&group, sink.clone()).await.unwrap();
    let kept = kept.expect("the Kafka log keeps a schedule changelog");
    let (e, at) = read_one_and_keep_a_retry(&log, a.as_mut(), kept.as_ref()).await;

    crate::kafka::services(&["down", "kafka"]).await;
    let next = [LogPosition {
        partition: at.partition,
        offset: at.offset + 1,
    }];
    let down = a.commit(&next).await;
    assert!(down.is_err(), "a commit with the broker down: {down:?}");
    crate::kafka::services(&["up", "kafka"]).await;

    // Back: offsets and retries commit again, within a few tries. The
    // consumer polls between them, as the fan-out does (it rejoins its
    // group, which forgot it while the broker was down).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = a.poll(100, Duration::from_millis(200)).await;
        sink.assert_restored(&records.unwrap_or_default());
        match a.commit(&next).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "offsets still not committed two minutes after the broker came back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // If the group dropped the member while the broker was away, its
    // partition is its own again once the poll has served the new
    // assignment; until then the changelog refuses its records, and the
    // group its transactions (a worker's write retries, as this loop does).
    loop {
        match kept.keep(&retry("dlv_after", &e, 3)).await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "a retry kept two minutes after the broker came back: {e}"
            ),
        }
        let records = a.poll(100, Duration::from_millis(200)).await;
        sink.assert_restored(&records.unwrap_or_default());
    }
    let committed = log.committed(&group).await.unwrap().unwrap();
    assert_eq!(committed.get(&at.partition), Some(&(at.offset + 1)));

    // Another member of a new group restores both retries from the changelog.
    drop(a);
    let restored: BTreeMap<String, u32> = restore_in_a_new_group(&log, &format!("{group}-2"), &e)
        .await
        .iter()
        .map(|p| (p.delivery.delivery_id.clone(), p.delivery.attempt))
        .collect();
    assert_eq!(
        restored,
        BTreeMap::from([("dlv_after".to_string(), 3), ("dlv_before".to_string(), 2)])
    );
}

/// A measurement, not a check (no test asserts a time): how long a worker
/// taking over partitions waits for their changelog. Keeps `HERALD_RETRIES`
/// (default 100,000) retries of 1 KiB events over the topic's partitions,
/// then times a new member's restore of all of them.
///
/// `cargo test -p herald-api --test it changelog_restore_rate -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run it by name"]
async fn changelog_restore_rate() {
    require_kafka().await;
    let _broker = BROKER.read().await;
    let n: usize = std::env::var("HERALD_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (log, group) = log_and_group("changelog-rate").await;
    let owner = Arc::new(Sink::default());
    let (mut a, kept) = log.consumer_keeping(&group, owner.clone()).await.unwrap();
    let kept = kept.unwrap();
    // A member writes records only of the partitions it owns.
    poll_until(&mut [(&mut a, &owner)], "the first assignment", || {
        owner.restored.lock().unwrap().len() == PARTITIONS as usize
    })
    .await;
    let mut e = event("tenant-0", 1);
    e.payload = serde_json::json!({ "pad": "x".repeat(1000) }).into();
    let started = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..n {
        let (kept, mut e) = (kept.clone(), e.clone());
        e.tenant_id = format!("tenant-{}", i % 64);
        writes.spawn(async move { kept.keep(&retry(&format!("dlv_{i}"), &e, 2)).await });
        if writes.len() >= 5_000 {
            writes.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(w) = writes.join_next().await {
        w.unwrap().unwrap();
    }
    let kept_in = started.elapsed();
    drop(a);
    let sink = Arc::new(Sink::default());
    let started = Instant::now();
    let (mut b, _) = log.consumer_keeping(&group, sink.clone()).await.unwrap();
    poll_until(&mut [(&mut b, &sink)], "the restore", || {
        sink.restored.lock().unwrap().len() == PARTITIONS as usize
    })
    .await;
    let took = started.elapsed();
    let restored: usize = sink.restored.lock().unwrap().values().map(Vec::len).sum();
    assert_eq!(restored, n);
    println!(
        "changelog: {n} retries kept in {:.1} s ({:.0}/s); a new member joined and restored them in {:.1} s ({:.0}/s)",
        kept_in.as_secs_f64(),
        n as f64 / kept_in.as_secs_f64(),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

/// Appends one event of `tenant-0`, polls `consumer` until it has read it,
/// and keeps a retry of it (`dlv_before`, attempt 2); returns the event
/// and its position.
async fn read_one_and_keep_a_retry(
    log: &KafkaLog,
    consumer: &mut dyn LogConsumer,
    kept: &dyn ScheduleLog,
) -> (DomainEvent, LogPosition) {
    let e = event("tenant-0", 1);
    let at = log.append(std::slice::from_ref(&e)).await.unwrap()[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer
        .poll(100, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the event was not read");
    }
    kept.keep(&retry("dlv_before", &e, 2)).await.unwrap();
    (e, at)
}

/// What a member of the new group `group` restores from the changelog for
/// the partition of `e`'s tenant (waits for the restore, 60 s at most).
async fn restore_in_a_new_group(log: &KafkaLog, group: &str, e: &DomainEvent) -> Vec<Pending> {
    let sink = Arc::new(Sink::default());
    let (mut consumer, _) = log.consumer_keeping(group, sink.clone()).await.unwrap();
    let partition = partition_for(&e.tenant_id, PARTITIONS);
    poll_until(&mut [(&mut consumer, &sink)], "the restore", || {
        sink.restored.lock().unwrap().contains_key(&partition)
    })
    .await;
    let restored = sink.restored.lock().unwrap()[&partition].clone();
    restored
}
