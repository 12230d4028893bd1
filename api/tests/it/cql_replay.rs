//! Time-range replay from the event log into the CQL store, on a real
//! Apache Cassandra 5.0: throttled, resumable after a stop, and counted.

use std::{collections::HashSet, time::Duration};

use herald_engine::{
    ids,
    model::{DomainEvent, Outcome},
    resources::{RecoveryJob, RecoveryStatus},
    store::{
        scylla::ScyllaStore, DeliveryLogStore, EventStore, RecoveryStore, ScheduleStore,
        SubscriptionStore,
    },
};
use time::OffsetDateTime;

use crate::cql::{attempt, cipher, config, event, now_ms};

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
        signature: Default::default(),
        signing_keys: Vec::new(),
        headers: Default::default(),
        rate_limit: None,
        ordering: Default::default(),
        payload: Default::default(),
        max_in_flight: None,
        timeout_seconds: None,
        filter: None,
        kafka: None,
        auth: None,
        tls: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    store.create_subscription(&sub).await.unwrap();
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
