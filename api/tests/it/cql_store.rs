//! Store-level tests of the CQL store against a real Apache Cassandra 5.0:
//! claims shared by several processes, recovery jobs, time-range replay from
//! the event log, issue 3's resources, and throughput figures.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use herald_engine::{
    ids,
    log::LogPosition,
    model::{DomainEvent, Outcome, ScheduledDelivery, WebhookDeliveryLog},
    resources::{RecoveryJob, RecoveryStatus},
    store::{scylla::ScyllaStore, LogFilter, RecoveryScope, Store},
};
use serde_json::{json, Value};
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

/// Two processes on one keyspace step a recovery job one at a time
/// (conditional writes on `recovery_leases`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_store_holds_and_releases_in_event_order() {
    let _cassandra = crate::cql::shared().await;
    let store = ScyllaStore::connect(&config("held"), cipher())
        .await
        .unwrap();
    crate::support::held_contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_recovery_leases_hold_across_processes() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("leases");
    let a = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let b = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    crate::support::recovery_lease_contract(&a, &b, "rcv_lease").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_log_range_replay_is_throttled_resumable_and_counted() {
    use herald_engine::{
        log::{embedded::EmbeddedLog, EventLog},
        log_recovery::run_log_recovery,
        model::{SubscriptionStatus, WebhookSubscription},
    };
    let _cassandra = crate::cql::shared().await;
    let cql = config("range");
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 2).unwrap();
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let sub = WebhookSubscription {
        id: ids::new_id(ids::SUBSCRIPTION),
        tenant_id: "acme".into(),
        url: "http://127.0.0.1:1/hook".into(),
        event_types: vec!["order.*".into()],
        description: None,
        status: SubscriptionStatus::Active,
        disabled_reason: None,
        secrets: Vec::new(),
        headers: Default::default(),
        rate_limit: None,
        ordering: Default::default(),
        max_in_flight: None,
        timeout_seconds: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    store.put_subscription(&sub).await.unwrap();
    let make = |tenant: &str, t: &str| {
        let mut e = event(tenant);
        e.dedupe_key = None;
        e.event_type = t.into();
        e
    };
    let append = |events: Vec<DomainEvent>| {
        let (log, store) = (&log, &store);
        async move {
            let positions = log.append(&events).await.unwrap();
            let writes = events
                .iter()
                .zip(positions)
                .map(|(e, p)| store.record_event(e, p, 0));
            futures::future::try_join_all(writes).await.unwrap();
            events
        }
    };
    append(vec![make("acme", "order.created")]).await; // before the range
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = OffsetDateTime::now_utc();
    let mut wanted = HashSet::new();
    for _ in 0..6 {
        let mut batch: Vec<DomainEvent> = (0..50).map(|_| make("acme", "order.created")).collect();
        batch.extend((0..10).map(|_| make("acme", "user.created"))); // not subscribed
        batch.extend((0..10).map(|_| make("globex", "order.created"))); // another tenant
        for e in append(batch).await {
            if e.tenant_id == "acme" && e.event_type == "order.created" {
                wanted.insert(e.id);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = OffsetDateTime::now_utc();
    append(vec![make("acme", "order.created")]).await; // after the range
    assert_eq!(wanted.len(), 300);

    let job = RecoveryJob {
        id: ids::new_id("rcv"),
        tenant_id: "acme".into(),
        subscription_id: sub.id.clone(),
        since,
        until,
        only_failed: false,
        source: herald_engine::resources::RecoverySource::Log,
        status: RecoveryStatus::Running,
        total: 300,
        scheduled: 0,
        done: 0,
        created_at: now,
        updated_at: now,
    };
    store.create_recovery(&job).await.unwrap();
    // First run at 100 deliveries/s, stopped after 300 ms (a process going away).
    let cancel = tokio_util::sync::CancellationToken::new();
    let stopper = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        })
    };
    let finished = run_log_recovery(&store, &log, &job, None, 100, &cancel)
        .await
        .unwrap();
    stopper.await.unwrap();
    assert!(
        !finished,
        "the throttle keeps 300 replays from going out in 300 ms at 100/s"
    );
    let partial = store.get_recovery("acme", &job.id).await.unwrap().unwrap();
    assert!(
        partial.scheduled > 0 && partial.scheduled < 300,
        "{}",
        partial.scheduled
    );
    assert_eq!(partial.status, RecoveryStatus::Running);
    // "Restart": a new store resumes from the stored cursor.
    drop(store);
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let (resumed, cursor) = store.unfinished_recoveries().await.unwrap().pop().unwrap();
    assert_eq!(resumed.id, job.id);
    assert!(cursor.is_some());
    let started = std::time::Instant::now();
    let finished = run_log_recovery(
        &store,
        &log,
        &resumed,
        cursor,
        1_000,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    println!(
        "resumed range replay: {} replays in {:?}",
        300 - partial.scheduled,
        started.elapsed()
    );
    assert!(finished);
    let job_now = store.get_recovery("acme", &job.id).await.unwrap().unwrap();
    assert_eq!(job_now.status, RecoveryStatus::Completed);
    assert_eq!(job_now.scheduled, 300, "each event of the range once");
    assert_eq!(job_now.done, 0);
    let claimed = store
        .claim_due(now_ms() + 1_000, now_ms() + 60_000, 1_000)
        .await
        .unwrap();
    let got: HashSet<String> = claimed.iter().map(|(d, _)| d.event_id.clone()).collect();
    assert_eq!(claimed.len(), 300);
    assert_eq!(got, wanted);
    assert!(claimed
        .iter()
        .all(|(d, _)| d.is_replay && d.subscription_id == sub.id));
    for (d, e) in &claimed {
        store
            .record_attempt(
                attempt(e, &sub.id, &d.delivery_id, Outcome::Delivered),
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .get_recovery("acme", &job.id)
            .await
            .unwrap()
            .unwrap()
            .done,
        300
    );
}

/// Issue 3's store methods (subscriptions list/delete, API keys, the
/// event-type catalogue) on the CQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_management_resources() {
    use herald_engine::resources::{ApiKey, EventTypeSchema};
    let _cassandra = crate::cql::shared().await;
    let cql = config("manage");
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let key = |id: &str, tenant: &str| ApiKey {
        id: id.into(),
        tenant_id: tenant.into(),
        name: Some("ci".into()),
        prefix: "hk_abcd".into(),
        created_at: now,
        revoked_at: None,
    };
    store
        .create_tenant_with_key("acme", &key("key_01", "acme"), [1; 32])
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_tenant_with_key("acme", &key("key_02", "acme"), [2; 32])
            .await,
        Err(herald_engine::store::StoreError::Conflict(_))
    ));
    assert!(store.tenant_exists("acme").await.unwrap());
    assert!(!store.tenant_exists("globex").await.unwrap());
    assert!(matches!(
        store
            .create_api_key(&key("key_09", "globex"), [9; 32])
            .await,
        Err(herald_engine::store::StoreError::NotFound(_))
    ));
    store
        .create_api_key(&key("key_03", "acme"), [3; 32])
        .await
        .unwrap();
    let keys = store.list_api_keys("acme").await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["key_01", "key_03"]
    );
    assert_eq!(
        store.tenant_for_key([3; 32]).await.unwrap().as_deref(),
        Some("acme")
    );
    let revoked = store
        .revoke_api_key("acme", "key_03", now_ms())
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(store.tenant_for_key([3; 32]).await.unwrap(), None);
    assert_eq!(
        store.tenant_for_key([1; 32]).await.unwrap().as_deref(),
        Some("acme")
    );
    assert!(store
        .revoke_api_key("globex", "key_01", now_ms())
        .await
        .unwrap()
        .is_none());

    // Subscriptions: newest first, paged by id, deleted once.
    let mut ids_made = Vec::new();
    for _ in 0..5 {
        let mut sub: herald_engine::model::WebhookSubscription = serde_json::from_value(json!({
            "id": ids::new_id(ids::SUBSCRIPTION), "tenant_id": "acme", "url": "https://example.com/h",
            "event_types": ["a.*"], "status": "active", "secrets": [],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        sub.description = Some("x".into());
        store.put_subscription(&sub).await.unwrap();
        ids_made.push(sub.id);
    }
    let first = store.list_subscriptions("acme", None, 3).await.unwrap();
    let rest = store
        .list_subscriptions("acme", Some(&first[2].id), 3)
        .await
        .unwrap();
    let listed: Vec<String> = first.iter().chain(&rest).map(|s| s.id.clone()).collect();
    ids_made.reverse();
    assert_eq!(listed, ids_made);
    assert!(store
        .list_subscriptions("globex", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(!store
        .delete_subscription("globex", &ids_made[0])
        .await
        .unwrap());
    assert!(store
        .delete_subscription("acme", &ids_made[0])
        .await
        .unwrap());
    assert!(!store
        .delete_subscription("acme", &ids_made[0])
        .await
        .unwrap());
    // A concurrent change of a deleted subscription does not bring it back.
    let gone = store
        .modify_subscription(
            "acme",
            &ids_made[0],
            Box::new(|s| {
                s.description = Some("late".into());
                true
            }),
        )
        .await
        .unwrap();
    assert!(gone.is_none());
    assert!(store
        .get_subscription("acme", &ids_made[0])
        .await
        .unwrap()
        .is_none());
    let changed = store
        .modify_subscription(
            "acme",
            &ids_made[1],
            Box::new(|s| {
                s.description = Some("changed".into());
                true
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(changed.1);
    assert_eq!(
        store
            .get_subscription("acme", &ids_made[1])
            .await
            .unwrap()
            .unwrap()
            .description
            .as_deref(),
        Some("changed")
    );

    // The event-type catalogue.
    let schema = |v: u32, s: Value| EventTypeSchema {
        tenant_id: "acme".into(),
        event_type: "order.created".into(),
        schema_version: v,
        schema: s,
        created_at: now,
    };
    assert!(store
        .put_event_type(&schema(1, json!({"type": "object"})))
        .await
        .unwrap());
    assert!(!store
        .put_event_type(&schema(1, json!({"type": "object"})))
        .await
        .unwrap());
    assert!(matches!(
        store
            .put_event_type(&schema(1, json!({"type": "array"})))
            .await,
        Err(herald_engine::store::StoreError::Conflict(_))
    ));
    assert!(store
        .put_event_type(&schema(2, json!({"type": "array"})))
        .await
        .unwrap());
    assert_eq!(store.all_event_types().await.unwrap().len(), 2);
}
