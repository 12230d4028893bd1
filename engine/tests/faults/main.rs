//! The engine's guarantees under injected faults (issue 17, item 6): a log
//! and a store whose calls fail, lose their acknowledgement or stall (one
//! plan drives both: `append`, `poll`, `commit` are the log's; `fan_out`,
//! `record_attempt`, `record_event`, `claim_due`, `release_held` the
//! store's). Each test asserts
//! what must arrive (waiting for it, or for a barrier event sent after it),
//! then counts: no acknowledged event lost, none delivered twice.

mod log;
mod plan;
mod receiver;
mod store;

use std::{path::Path, sync::Arc, time::Duration};

use herald_engine::{
    config::FANOUT_GROUP, log::EventLog, store::Store, Backends, Engine, EngineConfig, EngineError,
    NewEvent, NewSubscription,
};
use serde_json::json;

use log::FaultyLog;
use plan::{Effect, Plan};
use receiver::Receiver;
use store::FaultyStore;

/// Long enough for any delivery on a loaded machine; only a guard against a hang.
const PATIENCE: Duration = Duration::from_secs(30);
const TENANT: &str = "acme";

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig {
        data_dir: dir.to_path_buf(),
        allow_targets: vec!["127.0.0.0/8".parse().unwrap()],
        retry_schedule: "1s,1s,1s".parse().unwrap(),
        log_partitions: 2,
        ..EngineConfig::default()
    };
    config.delivery.retry_jitter = 0.0;
    config
}

/// An engine on the configured backends, its log and store wrapped by `plan`.
async fn start(dir: &Path, plan: Arc<Plan>) -> Arc<Engine> {
    start_tuned(dir, plan, |_| {}).await
}

async fn start_tuned(
    dir: &Path,
    plan: Arc<Plan>,
    tune: impl FnOnce(&mut EngineConfig),
) -> Arc<Engine> {
    start_with_log(dir, plan, tune).await.0
}

/// [`start_tuned`], also returning the engine's (unwrapped) log.
async fn start_with_log(
    dir: &Path,
    plan: Arc<Plan>,
    tune: impl FnOnce(&mut EngineConfig),
) -> (Arc<Engine>, Arc<dyn EventLog>) {
    let mut config = config(dir);
    tune(&mut config);
    let (inner, store): (Arc<dyn EventLog>, Arc<dyn Store>) =
        Backends::choose(&config).open(&config).await.unwrap();
    let log: Arc<dyn EventLog> = Arc::new(FaultyLog::new(inner.clone(), plan.clone()));
    let store: Arc<dyn Store> = Arc::new(FaultyStore::new(store, plan));
    let engine = Engine::start_with(config, log, store).await.unwrap();
    (engine, inner)
}

/// A tenant with one subscription to every event, delivering to `rx`.
async fn subscribe(engine: &Engine, rx: &Receiver) {
    engine.create_tenant(TENANT).await.unwrap();
    engine
        .subscribe(
            TENANT,
            NewSubscription {
                url: rx.url.clone(),
                event_types: vec!["*".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

fn event(n: u32, dedupe_key: Option<&str>) -> NewEvent {
    NewEvent {
        event_type: "work_order.completed".into(),
        payload: json!({ "n": n }).into(),
        dedupe_key: dedupe_key.map(String::from),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_refused_append_is_not_acknowledged_and_the_next_emit_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    plan.on("append", 1..=1, Effect::Fail);
    let engine = start(dir.path(), plan.clone()).await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let refused = engine.emit(TENANT, event(1, None)).await;
    assert!(
        matches!(refused, Err(EngineError::Unavailable(_))),
        "a failed append is a transient error (503), not an acknowledgement: {refused:?}"
    );
    let (barrier, fresh) = engine.emit(TENANT, event(2, None)).await.unwrap();
    assert!(fresh);
    rx.wait_for(&barrier.id, PATIENCE).await;

    let listed = engine
        .list_events(TENANT, None, None, 10)
        .await
        .unwrap()
        .data;
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [barrier.id.as_str()],
        "only the acknowledged event exists"
    );
    assert_eq!(rx.counts().len(), 1, "{:?}", rx.received());
    assert_eq!(plan.calls("append"), 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn an_append_whose_acknowledgement_is_lost_is_delivered_once_after_the_client_retries() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    // The first append is written but the caller hears a failure.
    plan.on("append", 1..=1, Effect::FailAfter);
    let engine = start(dir.path(), plan.clone()).await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let first = engine.emit(TENANT, event(1, Some("wo-1"))).await;
    assert!(first.is_err(), "the client was told it failed: {first:?}");
    // The client retries with the same dedupe key, as the API tells it to.
    // It is told the event that will be delivered: the one written the
    // first time when fan-out claimed its key already, else the new one.
    let (retried, _) = engine.emit(TENANT, event(1, Some("wo-1"))).await.unwrap();
    let (barrier, _) = engine.emit(TENANT, event(2, Some("wo-2"))).await.unwrap();
    rx.wait_for(&barrier.id, PATIENCE).await;
    rx.wait_for(&retried.id, PATIENCE).await;

    let with_key: Vec<_> = rx
        .received()
        .into_iter()
        .filter(|d| d.body["dedupe_key"] == "wo-1")
        .collect();
    assert_eq!(
        with_key.len(),
        1,
        "the event behind one dedupe key is delivered once: {with_key:?}"
    );
    assert_eq!(with_key[0].event_id, retried.id, "the id the client holds");
    engine.shutdown().await;
}

#[tokio::test]
async fn failed_polls_are_retried_and_every_event_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    plan.on("poll", 1..=3, Effect::Fail);
    let engine = start(dir.path(), plan.clone()).await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(engine.emit(TENANT, event(n, None)).await.unwrap().0.id);
    }
    for id in &ids {
        rx.wait_for(id, PATIENCE).await;
    }
    assert!(plan.calls("poll") > 3, "the failed polls were retried");
    let counts = rx.counts();
    assert!(ids.iter().all(|id| counts[id] == 1), "{counts:?}");
    engine.shutdown().await;
}

#[tokio::test]
async fn batches_re_read_after_lost_commits_schedule_no_delivery_twice() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let mut ids = Vec::new();
    {
        // Every commit of the log position fails: after a restart the
        // fan-out re-reads everything from the start.
        let plan = Arc::new(Plan::default());
        plan.on("commit", 1..=u64::MAX, Effect::Fail);
        let engine = start(dir.path(), plan.clone()).await;
        subscribe(&engine, &rx).await;
        for n in 0..30 {
            ids.push(engine.emit(TENANT, event(n, None)).await.unwrap().0.id);
        }
        for id in &ids {
            rx.wait_for(id, PATIENCE).await;
        }
        assert!(plan.calls("commit") >= 1, "fan-out tried to commit");
        engine.shutdown().await;
    }
    let engine = start(dir.path(), Arc::new(Plan::default())).await;
    let (barrier, _) = engine.emit(TENANT, event(99, None)).await.unwrap();
    rx.wait_for(&barrier.id, PATIENCE).await;
    let counts = rx.counts();
    assert_eq!(counts.len(), ids.len() + 1);
    assert!(
        counts.values().all(|&c| c == 1),
        "the re-read batches were recognised as fanned out: {counts:?}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_stalled_append_holds_back_only_its_own_emit() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    plan.stall("append", 1..=1, Duration::from_secs(2));
    let engine = start(dir.path(), plan.clone()).await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let slow = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.emit(TENANT, event(1, None)).await })
    };
    // Wait until the stalled append has started, then emit past it.
    while plan.calls("append") < 1 {
        tokio::task::yield_now().await;
    }
    let (fast, _) = engine.emit(TENANT, event(2, None)).await.unwrap();
    rx.wait_for(&fast.id, PATIENCE).await;
    assert!(
        !slow.is_finished(),
        "the stalled emit is not acknowledged before its append returns"
    );
    let (stalled, _) = slow.await.unwrap().unwrap();
    rx.wait_for(&stalled.id, PATIENCE).await;
    assert_eq!(rx.counts().len(), 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_store_outage_at_fan_out_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    plan.on("fan_out", 1..=3, Effect::Fail);
    let engine = start(dir.path(), plan.clone()).await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(engine.emit(TENANT, event(n, None)).await.unwrap().0.id);
    }
    for id in &ids {
        rx.wait_for(id, PATIENCE).await;
    }
    assert!(
        plan.calls("fan_out") > 3,
        "the failed fan-outs were retried"
    );
    let counts = rx.counts();
    assert!(ids.iter().all(|id| counts[id] == 1), "{counts:?}");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_lost_fan_out_acknowledgement_neither_delays_nor_doubles_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    // The first fan-out commits, but fan-out hears a failure and tries again.
    plan.on("fan_out", 1..=1, Effect::FailAfter);
    // A lease far longer than the test's patience: a delivery left to wait
    // for its own lease would fail the test instead of arriving.
    let engine = start_tuned(dir.path(), plan.clone(), |c| {
        c.delivery.lease_margin = Duration::from_secs(3600);
    })
    .await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let (first, _) = engine.emit(TENANT, event(1, None)).await.unwrap();
    rx.wait_for(&first.id, PATIENCE).await;
    let (barrier, _) = engine.emit(TENANT, event(2, None)).await.unwrap();
    rx.wait_for(&barrier.id, PATIENCE).await;
    assert!(plan.calls("fan_out") >= 2, "the batch was tried again");
    let counts = rx.counts();
    assert_eq!(
        (counts[&first.id], counts[&barrier.id]),
        (1, 1),
        "{counts:?}"
    );
    engine.shutdown().await;
}

/// The first attempt of a delivery fan-out handed over unscheduled (no
/// schedule row, its event's log offset held until it is recorded): the
/// store refuses its record past every try. It is sent again when a lease
/// would have ended, recorded then, and its event's offset is committed.
#[tokio::test]
async fn an_attempt_record_the_store_keeps_refusing_is_given_up_counted_and_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    // Every try of the first record fails (eight), then the store is back.
    plan.on("log_attempt", 1..=8, Effect::Fail);
    // A short lease, so the given-up delivery is sent again soon.
    let (engine, log) = start_with_log(dir.path(), plan.clone(), |c| {
        c.delivery.request_timeout = Duration::from_millis(500);
        c.delivery.lease_margin = Duration::from_secs(1);
    })
    .await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let (sent, _) = engine.emit(TENANT, event(1, None)).await.unwrap();
    // The first send, whose record is given up, then the send after its
    // lease ended, whose record is stored.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while rx.counts().get(&sent.id).copied().unwrap_or(0) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery was not sent again after its record was given up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(engine.metrics().attempt_records_abandoned.get(), 1);
    let logged = loop {
        let (_, logs) = engine.event(TENANT, &sent.id).await.unwrap();
        if !logs.is_empty() {
            break logs;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(logged.len(), 1, "only the recorded attempt is logged");
    assert_eq!(logged[0].outcome.as_str(), "delivered");
    assert!(plan.calls("log_attempt") > 8);
    // Settled by the second attempt's record: the offset moves past it.
    let partition = herald_engine::log::partition_for(TENANT, 2);
    loop {
        let committed = log.committed(FANOUT_GROUP).await.unwrap().unwrap();
        if committed.get(&partition) == Some(&1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event's offset was never committed: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.counts()[&sent.id], 2, "not sent a third time");
    engine.shutdown().await;
}

/// A burst to a new endpoint, twenty times its queue, while the shard's
/// first release (its look for deliveries an earlier process parked) is
/// slow: what the full queue parked meanwhile is released as the queue
/// drains, not left to its re-check (five minutes, far past the patience
/// here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_parked_while_a_release_is_slow_are_released_too() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::default());
    plan.stall("release_held", 1..=1, Duration::from_millis(100));
    let engine = start_tuned(dir.path(), plan.clone(), |c| {
        c.delivery.max_queued_per_endpoint = 10;
        // The queue held to its configured size, however fast the endpoint
        // answers: this test is about what the full queue parks.
        c.delivery.queue_pace = Duration::ZERO;
        c.delivery.max_in_flight_per_endpoint = 2;
        c.delivery.lease_margin = Duration::from_secs(3600);
    })
    .await;
    let rx = Receiver::start().await;
    subscribe(&engine, &rx).await;

    let mut ids = Vec::new();
    for b in 0..20 {
        let batch = (0..100).map(|i| event(b * 100 + i, None)).collect();
        let emitted = engine.emit_batch(TENANT, batch).await.unwrap();
        ids.extend(emitted.into_iter().map(|(e, _)| e.id));
    }
    for id in &ids {
        rx.wait_for(id, PATIENCE).await;
    }
    assert!(
        engine.metrics().deliveries_parked.get() > 0,
        "the queue overflowed into the schedule"
    );
    assert!(
        plan.calls("release_held") > 1,
        "parked deliveries were released"
    );
    let counts = rx.counts();
    assert!(ids.iter().all(|id| counts[id] == 1), "{counts:?}");
    engine.shutdown().await;
}
