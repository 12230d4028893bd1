//! Store-level tests of the CQL store against a real Apache Cassandra 5.0:
//! claims shared by several processes, recovery jobs and throughput figures
//! (time-range replay from the event log is in `cql_replay.rs`). What every store must do alike is
//! in the contract suite (`engine/tests/contract`), run on both backends.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use herald_engine::{
    ids,
    log::LogPosition,
    model::{DomainEvent, Outcome, ScheduledDelivery, WebhookDeliveryLog},
    resources::{RecoveryJob, RecoveryStatus},
    store::{
        scylla::ScyllaStore, DeliveryLogStore, EventFilter, EventStore, FanOut, FanOutResult,
        LogFilter, RecoveryScope, RecoveryStore, ScheduleStore, SubscriptionStore,
    },
};
use time::OffsetDateTime;

use crate::cql::{attempt, cipher, config, delivery, event, now_ms};

/// A new event of tenant `acme` without a dedupe key, indexed by `store`
/// at the log's first position.
async fn recorded_event(store: &ScyllaStore) -> DomainEvent {
    let mut ev = event("acme");
    ev.dedupe_key = None;
    store
        .record_event(
            &ev,
            LogPosition {
                partition: 0,
                offset: 0,
            },
            0,
        )
        .await
        .unwrap();
    ev
}

/// Reads the CQL store has sent so far.
fn reads(store: &ScyllaStore) -> u64 {
    store.op_counts().unwrap().snapshot()[0].1
}

/// Fan-out of events whose deliveries it hands over unscheduled reads
/// nothing: it writes their day index (here the emitter died after its
/// append and wrote none), and a dedupe key's loser is still found and kept
/// out of the list and of gets. An event it schedules costs one read of its
/// state, so that a re-read of the log schedules nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_fan_out_that_schedules_nothing_reads_nothing() {
    let _cassandra = crate::cql::shared().await;
    let store = ScyllaStore::connect(&config("blind"), cipher())
        .await
        .unwrap();
    let mut events: Vec<DomainEvent> = (0..20).map(|_| event("acme")).collect();
    for e in &mut events[..18] {
        e.dedupe_key = None;
    }
    let now = now_ms();
    let item = |e: &DomainEvent, unscheduled: bool| FanOut {
        event: e.clone(),
        position: LogPosition {
            partition: 0,
            offset: 0,
        },
        deliveries: vec![delivery(e, "sub_a", now)],
        lease_until_ms: unscheduled.then_some(now + 60_000),
        unscheduled,
        parked: vec![],
        indexed: false,
    };
    let before = reads(&store);
    let results = store
        .fan_out(
            events.iter().map(|e| item(e, true)).collect(),
            now + 60_000,
            now,
        )
        .await
        .unwrap();
    assert_eq!(reads(&store), before, "fan-out read the store");
    // The two events sharing a key claim it at once: either may win.
    assert!(results[..18].iter().all(|r| *r == FanOutResult::Scheduled));
    let loser = match results[18..] {
        [FanOutResult::Scheduled, FanOutResult::Duplicate] => 19,
        [FanOutResult::Duplicate, FanOutResult::Scheduled] => 18,
        ref other => panic!("{other:?}"),
    };
    let kept: Vec<&DomainEvent> = (0..20)
        .filter(|&i| i != loser)
        .map(|i| &events[i])
        .collect();
    let listed: Vec<String> = store
        .list_events("acme", &EventFilter::default(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut want: Vec<String> = kept.iter().map(|e| e.id.clone()).collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed, want, "every event listed but the duplicate");
    let got = store.get_event("acme", &events[0].id).await.unwrap();
    assert_eq!(got.as_ref(), Some(&events[0]));
    let duplicate = store.get_event("acme", &events[loser].id).await.unwrap();
    assert!(duplicate.is_none());
    assert!(store
        .get_event("globex", &events[0].id)
        .await
        .unwrap()
        .is_none());

    // Scheduled: one read, the event indexed; read again, nothing new.
    let mut scheduled = event("acme");
    scheduled.dedupe_key = None;
    let before = reads(&store);
    let first = store
        .fan_out(vec![item(&scheduled, false)], now + 60_000, now)
        .await
        .unwrap();
    assert_eq!(first, vec![FanOutResult::Scheduled]);
    assert_eq!(reads(&store), before + 1);
    assert!(store
        .get_event("acme", &scheduled.id)
        .await
        .unwrap()
        .is_some());
    let again = store
        .fan_out(vec![item(&scheduled, false)], now + 60_000, now)
        .await
        .unwrap();
    assert_eq!(again, vec![FanOutResult::AlreadyDone]);
    assert_eq!(store.schedule_backlog().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_claims_are_exclusive_across_processes() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("claims");
    // Two stores = two worker processes sharing one schedule.
    let a = Arc::new(ScyllaStore::connect(&cql, cipher()).await.unwrap());
    let b = Arc::new(ScyllaStore::connect(&cql, cipher()).await.unwrap());
    let ev = recorded_event(&a).await;
    let now = now_ms();
    let all: Vec<ScheduledDelivery> = (0..120)
        .map(|_| delivery(&ev, "sub_a", now - 1000))
        .collect();
    a.schedule(all.clone()).await.unwrap();
    assert_eq!(a.schedule_backlog().await.unwrap(), 120);
    let mut seen = Vec::new();
    for _ in 0..10 {
        let lease = now_ms() + 60_000;
        let (x, y) = tokio::join!(
            a.claim_due(now_ms(), lease, 50),
            b.claim_due(now_ms(), lease, 50)
        );
        seen.extend(x.unwrap().into_iter().map(|(d, _)| d.delivery_id));
        seen.extend(y.unwrap().into_iter().map(|(d, _)| d.delivery_id));
        if seen.len() >= 120 {
            break;
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no delivery claimed twice");
    assert_eq!(unique.len(), 120, "every due delivery claimed");
    // Leased: nothing due now; due again once the lease is over.
    assert!(a
        .claim_due(now_ms(), now_ms() + 60_000, 500)
        .await
        .unwrap()
        .is_empty());
    let again = b
        .claim_due(now_ms() + 61_000, now_ms() + 200_000, 500)
        .await
        .unwrap();
    assert_eq!(again.len(), 120, "expired leases fall due again");
    // A retry moves the row; a final attempt removes it.
    let first = &again[0].0;
    let mut retry = first.clone();
    retry.attempt = 2;
    retry.due_at_ms = now_ms() - 1;
    a.record_attempt(
        attempt(&ev, "sub_a", &first.delivery_id, Outcome::Failed),
        Some(retry),
    )
    .await
    .unwrap();
    let claimed = a.claim_due(now_ms(), now_ms() + 60_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].0.attempt, 2);
    for (d, _) in again {
        a.record_attempt(
            attempt(&ev, "sub_a", &d.delivery_id, Outcome::Delivered),
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(a.schedule_backlog().await.unwrap(), 0);
    assert!(b
        .claim_due(now_ms() + 10_000_000, now_ms() + 20_000_000, 500)
        .await
        .unwrap()
        .is_empty());
}

/// Claims read the due index from this process's marks, past the rows
/// they already took; a row a claim saw but could not take (an ordered
/// subscription's next delivery, waiting for its head) is read again
/// however old its due time, and the backlog counts only live rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_claims_skip_what_they_took_but_not_what_waits() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("marks");
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let ev = recorded_event(&store).await;
    // Due two minutes ago: older than any slack a read mark leaves.
    let old = now_ms() - 120_000;
    let ordered: Vec<ScheduledDelivery> = (1..=3)
        .map(|seq| ScheduledDelivery {
            seq,
            ordered: true,
            ..delivery(&ev, "sub_ordered", old + seq)
        })
        .collect();
    let unordered: Vec<ScheduledDelivery> =
        (0..50).map(|_| delivery(&ev, "sub_plain", old)).collect();
    store.schedule(ordered.clone()).await.unwrap();
    store.schedule(unordered).await.unwrap();
    assert_eq!(store.schedule_backlog().await.unwrap(), 53);
    for expected in &ordered {
        let lease = now_ms() + 600_000;
        let claimed = store.claim_due(now_ms(), lease, 500).await.unwrap();
        let heads: Vec<&ScheduledDelivery> = claimed
            .iter()
            .map(|(d, _)| d)
            .filter(|d| d.ordered)
            .collect();
        assert_eq!(
            heads.iter().map(|d| d.seq).collect::<Vec<_>>(),
            vec![expected.seq],
            "only the head of the ordered subscription is taken"
        );
        for (d, _) in claimed {
            store
                .record_attempt(
                    attempt(&ev, &d.subscription_id, &d.delivery_id, Outcome::Delivered),
                    None,
                )
                .await
                .unwrap();
        }
    }
    assert!(store
        .claim_due(now_ms(), now_ms() + 600_000, 500)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.schedule_backlog().await.unwrap(), 0);
}

/// A release of held deliveries that began a while ago (a long list, slow
/// compare-and-sets under load) dates each row when it writes it: a worker
/// whose read marks have moved past the release's start still claims them
/// at once, not after its marks' pull-back a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_held_deliveries_released_late_are_claimed_at_once() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("release");
    // The API process that resumes, and a worker reading the due index.
    let api = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let worker = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let ev = recorded_event(&api).await;
    // When the release began: 8 s ago, past the marks' 3 s slack.
    let began = now_ms() - 8_000;
    let held: Vec<ScheduledDelivery> = (1..=5)
        .map(|seq| ScheduledDelivery {
            seq,
            ..delivery(&ev, "sub_paused", now_ms() + 90_000)
        })
        .collect();
    api.schedule(held.clone()).await.unwrap();
    for d in &held {
        api.hold(d, now_ms() + 300_000).await.unwrap();
    }
    // Rows due when the release began, in every shard (8; 128 random ids
    // miss one with odds of 1 in 10^7): the worker claims them and marks
    // each partition read up to now.
    let fillers: Vec<ScheduledDelivery> = (0..128)
        .map(|_| delivery(&ev, "sub_plain", began))
        .collect();
    api.schedule(fillers).await.unwrap();
    let lease = now_ms() + 600_000;
    let taken = worker.claim_due(now_ms(), lease, 500).await.unwrap();
    assert_eq!(taken.len(), 128);

    let released = api
        .release_held("sub_paused", began, usize::MAX)
        .await
        .unwrap();
    assert_eq!(released, 5);
    let claimed = worker.claim_due(now_ms(), lease, 500).await.unwrap();
    let mut ids: Vec<&str> = claimed
        .iter()
        .map(|(d, _)| d.delivery_id.as_str())
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = held.iter().map(|d| d.delivery_id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "every released delivery, claimed at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_recovery_pages_through_a_time_range_and_resumes() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("recovery");
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let (tenant, sub) = ("acme", "sub_r");
    let since = OffsetDateTime::now_utc() - Duration::from_secs(1);
    let mut failed = HashSet::new();
    let mut events = Vec::new();
    for _ in 0..300 {
        let mut ev = event(tenant);
        ev.dedupe_key = None;
        events.push(ev.clone());
    }
    let writes = events.iter().enumerate().map(|(i, ev)| {
        let store = &store;
        async move {
            store
                .record_event(
                    ev,
                    LogPosition {
                        partition: 0,
                        offset: i as u64,
                    },
                    0,
                )
                .await?;
            let outcome = if i % 3 == 0 {
                Outcome::Dead
            } else {
                Outcome::Delivered
            };
            store
                .record_attempt(attempt(ev, sub, &format!("dlv_{i}"), outcome), None)
                .await
        }
    });
    futures::future::try_join_all(writes).await.unwrap();
    for (i, ev) in events.iter().enumerate() {
        if i % 3 == 0 {
            failed.insert(ev.id.clone());
        }
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let until = OffsetDateTime::now_utc();
    // One outside the range: never recovered.
    let mut late = event(tenant);
    late.dedupe_key = None;
    store
        .record_attempt(attempt(&late, sub, "dlv_late", Outcome::Dead), None)
        .await
        .unwrap();

    let id_at = |t: OffsetDateTime| {
        let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
        format!("evt_{ms:012x}{}", "0".repeat(20))
    };
    let scope = RecoveryScope {
        tenant_id: tenant.into(),
        subscription_id: sub.into(),
        from_event_id: id_at(since),
        to_event_id: id_at(until),
        only_failed: true,
    };
    assert_eq!(store.count_recovery_candidates(&scope).await.unwrap(), 100);
    assert_eq!(
        store
            .count_recovery_candidates(&RecoveryScope {
                only_failed: false,
                ..scope.clone()
            })
            .await
            .unwrap(),
        300
    );
    let now = OffsetDateTime::now_utc();
    let job = RecoveryJob {
        id: ids::new_id("rcv"),
        tenant_id: tenant.into(),
        subscription_id: sub.into(),
        since,
        until,
        only_failed: true,
        source: Default::default(),
        status: RecoveryStatus::Running,
        total: 100,
        scheduled: 0,
        done: 0,
        created_at: now,
        updated_at: now,
    };
    store.create_recovery(&job).await.unwrap();
    // Work two pages of 30, then "restart": a new store resumes from the stored cursor.
    let mut recovered = Vec::new();
    async fn step(
        store: &ScyllaStore,
        scope: &RecoveryScope,
        job: &RecoveryJob,
        out: &mut Vec<String>,
    ) -> bool {
        // As the engine steps it: the job as stored now, with its cursor.
        let (job, cursor) = &store
            .unfinished_recoveries()
            .await
            .unwrap()
            .into_iter()
            .find(|(j, _)| j.id == job.id)
            .expect("the job is unfinished");
        let cursor = cursor.clone();
        let page = store
            .recovery_candidates(scope, cursor.as_deref(), 30)
            .await
            .unwrap();
        let finished = page.len() < 30;
        let next = page.last().map(|c| c.event_id.clone()).or(cursor);
        let deliveries: Vec<ScheduledDelivery> = page
            .iter()
            .map(|c| {
                out.push(c.event_id.clone());
                ScheduledDelivery {
                    delivery_id: ids::new_id(ids::DELIVERY),
                    tenant_id: job.tenant_id.clone(),
                    event_id: c.event_id.clone(),
                    subscription_id: job.subscription_id.clone(),
                    attempt: 1,
                    replay_of: Some(c.delivery_id.clone()),
                    is_replay: true,
                    due_at_ms: 0,
                    seq: 0,
                    ordered: false,
                }
            })
            .collect();
        store
            .advance_recovery(job, deliveries, next, finished)
            .await
            .unwrap();
        finished
    }
    for _ in 0..2 {
        assert!(!step(&store, &scope, &job, &mut recovered).await);
    }
    assert_eq!(
        store
            .get_recovery(tenant, &job.id)
            .await
            .unwrap()
            .unwrap()
            .scheduled,
        60
    );
    drop(store);
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    while !step(&store, &scope, &job, &mut recovered).await {}
    let unique: HashSet<&String> = recovered.iter().collect();
    assert_eq!(
        unique.len(),
        recovered.len(),
        "no page repeated across the restart"
    );
    assert_eq!(unique.into_iter().cloned().collect::<HashSet<_>>(), failed);
    let done = store.get_recovery(tenant, &job.id).await.unwrap().unwrap();
    assert_eq!(done.status, RecoveryStatus::Completed);
    assert_eq!(done.scheduled, 100);
    assert_eq!(done.done, 0);
    assert!(store.unfinished_recoveries().await.unwrap().is_empty());
    // Delivering the replays moves `done`.
    let claimed = store
        .claim_due(now_ms(), now_ms() + 60_000, 1000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 100);
    for (d, e) in claimed.iter().take(40) {
        store
            .record_attempt(attempt(e, sub, &d.delivery_id, Outcome::Delivered), None)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .get_recovery(tenant, &job.id)
            .await
            .unwrap()
            .unwrap()
            .done,
        40
    );
    // Another tenant cannot see the job.
    assert!(store
        .get_recovery("globex", &job.id)
        .await
        .unwrap()
        .is_none());
    let logs = store
        .list_delivery_logs(
            tenant,
            &LogFilter {
                outcome: Some("dead".into()),
                ..LogFilter::default()
            },
            1000,
        )
        .await
        .unwrap();
    assert_eq!(logs.len(), 101);
}

/// Not a pass/fail on speed: prints the CQL store's write and read rates
/// on this machine (`cargo test -p herald-api --test it cql_throughput -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_throughput_figures() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("bench");
    let store = Arc::new(ScyllaStore::connect(&cql, cipher()).await.unwrap());
    let n = 2000usize;
    let ev = recorded_event(&store).await;
    let attempts: Vec<WebhookDeliveryLog> = (0..n)
        .map(|i| {
            attempt(
                &ev,
                &format!("sub_{}", i % 10),
                &format!("dlv_{i}"),
                Outcome::Delivered,
            )
        })
        .collect();
    let started = std::time::Instant::now();
    futures::stream::iter(attempts.into_iter().map(|a| {
        let store = store.clone();
        async move { store.record_attempt(a, None).await }
    }))
    .buffer_unordered(64)
    .try_collect::<Vec<()>>()
    .await
    .unwrap();
    let write = started.elapsed();
    let started = std::time::Instant::now();
    let mut read = 0;
    let mut before = None;
    loop {
        let page = store
            .list_delivery_logs(
                "acme",
                &LogFilter {
                    before: before.clone(),
                    ..LogFilter::default()
                },
                100,
            )
            .await
            .unwrap();
        read += page.len();
        match page.last() {
            Some(l) if page.len() == 100 => before = Some(l.id.clone()),
            _ => break,
        }
    }
    let read_time = started.elapsed();
    assert_eq!(read, n);
    let ev_started = std::time::Instant::now();
    let events: Vec<DomainEvent> = (0..n)
        .map(|_| {
            let mut e = event("acme");
            e.dedupe_key = None;
            e
        })
        .collect();
    futures::stream::iter(events.iter().map(|e| {
        let store = store.clone();
        async move {
            store
                .record_event(
                    e,
                    LogPosition {
                        partition: 0,
                        offset: 0,
                    },
                    0,
                )
                .await
        }
    }))
    .buffer_unordered(64)
    .try_collect::<Vec<()>>()
    .await
    .unwrap();
    let ev_time = ev_started.elapsed();
    println!(
        "CQL store on this machine: {n} delivery-log writes (4 tables each) in {write:?} = {:.0}/s; \
         {n} records read back in pages of 100 in {read_time:?} = {:.0}/s; {n} event index writes in {ev_time:?} = {:.0}/s",
        n as f64 / write.as_secs_f64(),
        n as f64 / read_time.as_secs_f64(),
        n as f64 / ev_time.as_secs_f64(),
    );
}

/// A keyspace made by an older Herald (subscriptions without `revision`):
/// connecting adds the column, and a row written before it is changed by
/// compare-and-set on its body, then carries a revision; a deleted row is
/// not brought back by a late change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_subscriptions_of_an_older_schema_gain_revisions() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("revision");
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&cql.nodes)
        .build()
        .await
        .unwrap();
    let ks = &cql.keyspace;
    for statement in [
        format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        format!("CREATE TABLE {ks}.subscriptions (tenant_id text, id text, body text, PRIMARY KEY ((tenant_id), id)) WITH CLUSTERING ORDER BY (id DESC)"),
    ] {
        session.query_unpaged(statement, ()).await.unwrap();
    }
    let body = |id: &str| {
        serde_json::json!({
            "id": id, "tenant_id": "acme", "url": "https://example.com/h",
            "event_types": ["a.*"], "status": "active", "secrets": [],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        })
        .to_string()
    };
    for id in ["sub_old1", "sub_old2"] {
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.subscriptions (tenant_id, id, body) VALUES ('acme', ?, ?)"
                ),
                (id, body(id)),
            )
            .await
            .unwrap();
    }
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let revision = |id: &'static str| {
        let session = &session;
        async move {
            session
                .query_unpaged(
                    format!("SELECT revision FROM {ks}.subscriptions WHERE tenant_id = 'acme' AND id = ?"),
                    (id,),
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .maybe_first_row::<(Option<i64>,)>()
                .unwrap()
                .map(|(r,)| r)
        }
    };
    assert_eq!(
        revision("sub_old1").await,
        Some(None),
        "a row from before revisions"
    );
    let describe = |text: &'static str| -> herald_engine::store::SubscriptionChange {
        Box::new(move |s| {
            s.description = Some(text.into());
            true
        })
    };
    let (changed, did) = store
        .modify_subscription("acme", "sub_old1", describe("first"))
        .await
        .unwrap()
        .unwrap();
    assert!(did);
    assert_eq!(changed.description.as_deref(), Some("first"));
    assert_eq!(revision("sub_old1").await, Some(Some(1)));
    store
        .modify_subscription("acme", "sub_old1", describe("second"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revision("sub_old1").await, Some(Some(2)));

    assert!(store.delete_subscription("acme", "sub_old2").await.unwrap());
    assert!(store
        .modify_subscription("acme", "sub_old2", describe("late"))
        .await
        .unwrap()
        .is_none());
    assert_eq!(revision("sub_old2").await, None, "not brought back");
    crate::cql::drop_keyspace(&session, ks).await;
}
