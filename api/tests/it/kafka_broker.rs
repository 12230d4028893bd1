//! Kafka tests that stop the broker (holding [`BROKER`] exclusively), a
//! Kafka client call that never returns, and the plain-consumer check of the
//! topic's published schema.

use std::{
    collections::HashSet,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use herald_engine::{config::KafkaConfig, test_hooks};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::{
    distributed::fanout_commits_past_every_event,
    kafka::{
        all_delivered, emit_many, prefix, require_kafka, services, start_role, start_role_env,
        tenant, tenants, BrokerBackOnDrop, BROKER, BROKERS,
    },
    role_metrics::{cdc_topic, outbox_rows},
    support::{eventually, Herald, Receiver},
};

/// Restart the broker while events flow, and emit while it is down: every
/// acknowledged event is delivered; a refused emit (503) left nothing behind.
#[tokio::test]
async fn kafka_broker_restart_and_outage_lose_nothing() {
    let _broker = BROKER.write().await;
    require_kafka().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let prefix = prefix("restart");
    let receiver = Receiver::start(200).await;
    let api = start_role("api", &dir, &prefix, &["--kafka-append-timeout", "3s"]).await;
    let worker = start_role("worker", &dir, &prefix, &[]).await;
    let (keys, secrets) = tenants(&api.base, 4, &receiver).await;
    let http = reqwest::Client::new();

    // 1. Restart the broker under load.
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let emitting = tokio::spawn(emit_many(
        api.base.clone(),
        keys.clone(),
        1500,
        acked.clone(),
        refused.clone(),
    ));
    eventually("deliveries under way", Duration::from_secs(60), || async {
        (receiver.received().len() >= 100).then_some(())
    })
    .await;
    services(&["restart", "kafka"]).await;
    emitting.await.unwrap();
    let acked_set = acked.lock().await.clone();
    let refused_n = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(acked_set.len() + refused_n, 1500);
    let (delivered, duplicates) = all_delivered(
        &receiver,
        &acked_set,
        &secrets,
        &dir,
        Duration::from_secs(180),
    )
    .await;
    println!(
        "kafka broker restart: {} acknowledged, {refused_n} refused with 503 during the restart, \
         {delivered} delivered, 0 lost, {duplicates} duplicate deliveries",
        acked_set.len()
    );

    // 2. The broker is down: an emit is refused with 503 + Retry-After, and
    // leaves nothing behind once the broker is back.
    services(&["down", "kafka"]).await;
    let r = http
        .post(format!("{}/api/v1/integrations/events", api.base))
        .bearer_auth(&keys[0])
        .json(&json!({ "event_type": "work_order.completed", "payload": { "outage": true }, "dedupe_key": "outage-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "a problem document"
    );
    services(&["up", "kafka"]).await;
    // Ordering within the tenant's partition: once a later event is
    // delivered, the refused one would have been too, had it been appended.
    // The producer reconnects within moments; until then a 503 says retry.
    eventually(
        "an emit accepted after the broker is back",
        Duration::from_secs(60),
        || async {
            let r = http
                .post(format!("{}/api/v1/integrations/events", api.base))
                .bearer_auth(&keys[0])
                .json(
                    &json!({ "event_type": "work_order.completed", "payload": { "after": true } }),
                )
                .send()
                .await
                .unwrap();
            match r.status().as_u16() {
                202 => Some(()),
                503 => None,
                other => panic!("unexpected status {other}"),
            }
        },
    )
    .await;
    eventually(
        "the event after the outage",
        Duration::from_secs(60),
        || async {
            receiver
                .received()
                .iter()
                .any(|r| String::from_utf8_lossy(&r.body).contains("\"after\":true"))
                .then_some(())
        },
    )
    .await;
    assert!(
        !receiver
            .received()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("outage")),
        "a refused emit was delivered"
    );
    let list: Value = http
        .get(format!("{}/api/v1/integrations/events?limit=100", api.base))
        .bearer_auth(&keys[0])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !list.to_string().contains("outage-1"),
        "a refused emit is listed"
    );
    // The same dedupe key is free: the refused emit claimed nothing.
    let r = http
        .post(format!("{}/api/v1/integrations/events", api.base))
        .bearer_auth(&keys[0])
        .json(&json!({ "event_type": "work_order.completed", "payload": { "retried": true }, "dedupe_key": "outage-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let retried = r.json::<Value>().await.unwrap();
    assert_eq!(retried["payload"]["retried"], true);
    api.kill9().await;
    worker.kill9().await;
}

/// A commit of the schedule changelog whose `send_offsets_to_transaction`
/// never returns (as librdkafka's can after a broker restart: its issues
/// #5456 and #5511; the test hook blocks the first such call for good) is
/// given up, and fan-out goes on: an event emitted behind it is delivered,
/// and the offsets are committed past both events by a new producer.
#[tokio::test]
async fn kafka_a_changelog_commit_that_never_returns_is_given_up() {
    require_kafka().await;
    let _broker = BROKER.read().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let prefix = prefix("stuck-commit");
    let receiver = Receiver::start(200).await;
    let hook = [(test_hooks::CHANGELOG_STUCK_COMMITS, "1")];
    let herald = start_role_env("all", &dir, &prefix, &[], &hook).await;
    // The first event is delivered; fan-out's commit of its offset is the
    // one that never returns.
    let key = tenant_delivering(&herald.base, &receiver, "first").await;
    let log = dir.join("all.log");
    let stuck = || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("did not end in time").then_some(())
    };
    // The event behind it: delivered once the commit is given up (30 s).
    assert_eq!(emit_tagged(&herald.base, &key, "second").await, 202);
    wait_tagged(
        &receiver,
        "second",
        "the event emitted behind the stuck commit",
        Duration::from_secs(120),
    )
    .await;
    eventually("the stuck commit given up", Duration::from_secs(5), stuck).await;
    fanout_commits_past_every_event(&prefix).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the schedule changelog has a new producer"),
        "a new producer took over: {text}"
    );
}

/// A consumer group that stays without a coordinator (here: the broker
/// down for longer than `STALLED_AFTER`, 30 s) gets a new consumer, which
/// bootstraps afresh, in the worker (and, most often, in the CDC relay: a
/// new session); so does the API's producer when no append succeeded for
/// as long. Once the broker is back, an emit is accepted, the worker reads and delivers
/// again and commits past every event, and the relay relays a new outbox
/// row. (The stall this guards against is librdkafka's: a broker removed
/// from its metadata leaves the client no broker to ask,
/// docs/reliability.md.)
#[tokio::test]
async fn kafka_a_group_without_a_coordinator_joins_again_with_a_new_consumer() {
    let _broker = BROKER.write().await;
    require_kafka().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let prefix = prefix("rejoin");
    let receiver = Receiver::start(200).await;
    // Appends time out after 3 s, so emits fail often while the broker is away.
    let herald = start_role("all", &dir, &prefix, &["--kafka-append-timeout", "3s"]).await;
    let key = tenant_delivering(&herald.base, &receiver, "before").await;

    let log = dir.join("all.log");
    services(&["down", "kafka"]).await;
    let back = BrokerBackOnDrop;
    // Emits go on while the broker is away (each refused with 503).
    let emitting = {
        let (base, key) = (herald.base.clone(), key.clone());
        tokio::spawn(async move {
            loop {
                emit_tagged(&base, &key, "refused").await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    // The relay's consumer most often logs "the CDC relay's consumer group
    // found no coordinator" here too, but it was missed in 2 of about 20
    // runs before the stall watch timed the condition itself rather than
    // by `stateage` (the likely cause: docs/reliability.md). What the test
    // holds it to is that it relays again once the broker is back (below).
    let replaced = [
        "joined again with a new consumer",
        "replacing the Kafka producer, which bootstraps afresh",
    ];
    let missing = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        replaced
            .iter()
            .filter(|line| !text.contains(*line))
            .copied()
            .collect::<Vec<_>>()
    };
    let waited = tokio::time::timeout(Duration::from_secs(240), async {
        while !missing().is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "while the broker is away, the log of the all process never said {:?}",
        missing()
    );
    emitting.abort();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !text.contains("relay's consumer group found no coordinator") {
        let relay: Vec<&str> = text.lines().filter(|l| l.contains("relay")).collect();
        eprintln!("the relay logged no stall while the broker was away; its lines: {relay:#?}");
    }
    services(&["up", "kafka"]).await;
    drop(back);
    eventually(
        "an emit accepted again",
        Duration::from_secs(60),
        || async { (emit_tagged(&herald.base, &key, "after").await == 202).then_some(()) },
    )
    .await;
    wait_tagged(
        &receiver,
        "after",
        "the event after, read by the new consumer",
        Duration::from_secs(120),
    )
    .await;
    let relayed = outbox_rows(&cdc_topic(&prefix, 1).await, "acme", &["{}".into()]).await;
    eventually(
        "the outbox row after, relayed by the new session",
        Duration::from_secs(120),
        || async {
            let ids = receiver.received();
            ids.iter()
                .any(|r| r.header("webhook-id") == relayed[0])
                .then_some(())
        },
    )
    .await;
    fanout_commits_past_every_event(&prefix).await;
}

#[tokio::test]
async fn kafka_plain_consumer_validates_every_record_against_the_schema() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let prefix = prefix("schema");
    let kafka = KafkaConfig {
        topic_prefix: prefix.clone(),
        partitions: 3,
        ..KafkaConfig::new(BROKERS)
    };
    let herald = Herald::start_with(|c| c.kafka = Some(kafka)).await;
    let mut n = 0;
    for t in ["acme", "globex", "initech"] {
        let key = herald.tenant(t).await;
        for i in 0..10 {
            let mut body = json!({ "event_type": format!("work_order.step_{i}"), "payload": { "i": i, "nested": { "a": [1, 2] } } });
            if i % 2 == 0 {
                body["dedupe_key"] = json!(format!("{t}-{i}"));
            }
            if i % 3 == 0 {
                body["schema_version"] = json!(3);
            }
            let (status, _) = herald.post(&key, "/api/v1/integrations/events", body).await;
            assert_eq!(status, 202);
            n += 1;
        }
    }
    let summary = crate::kafka::plain_consumer(&prefix, n).await;
    assert_eq!(summary["records"], n);
    assert_eq!(summary["distinct_ids"], n);
    assert_eq!(summary["error_count"], 0);
    herald.engine.shutdown().await;
}

/// Emits one event whose payload is `{"tag": tag}`; its status (0 when the
/// request itself failed).
async fn emit_tagged(base: &str, key: &str, tag: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/integrations/events"))
        .bearer_auth(key)
        .json(&json!({ "event_type": "work_order.completed", "payload": { "tag": tag } }))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Creates the tenant `acme` delivering to `receiver` and has a first
/// event (tagged `tag`) emitted and delivered, so the worker is reading
/// before the test disturbs it; returns the tenant's key.
async fn tenant_delivering(base: &str, receiver: &Receiver, tag: &str) -> String {
    let (key, _) = tenant(base, "acme", receiver).await;
    assert_eq!(emit_tagged(base, &key, tag).await, 202);
    wait_tagged(receiver, tag, "the first event", Duration::from_secs(60)).await;
    key
}

/// Waits up to `limit` for the event tagged `tag` to reach `receiver`.
async fn wait_tagged(receiver: &Receiver, tag: &str, what: &str, limit: Duration) {
    eventually(what, limit, || async {
        got_tagged(receiver, tag).then_some(())
    })
    .await;
}

/// Whether an event emitted by [`emit_tagged`] with `tag` reached `receiver`.
fn got_tagged(receiver: &Receiver, tag: &str) -> bool {
    receiver
        .received()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(&format!("\"tag\":\"{tag}\"")))
}
