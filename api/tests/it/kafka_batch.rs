//! A batch emit on Kafka is all or nothing: a batch whose append fails
//! midway (the test hook `HERALD_TEST_HOOK_KAFKA_BATCH_FAIL_AFTER` fails it
//! after writing some of its records) answers 503, and none of its events
//! is visible to a `read_committed` reader or delivered.

use std::time::{Duration, Instant};

use herald_engine::test_hooks;
use rdkafka::Message;
use serde_json::{json, Value};

use crate::{
    kafka::{prefix, require_kafka, start_role_env, tenant, BROKER, BROKERS},
    support::{eventually, Receiver},
};

/// The payloads of `topic`'s records as `isolation` shows them, read from
/// the start until `enough` holds for them (panics after 60 s).
fn read_until(topic: &str, isolation: &str, enough: fn(&[String]) -> bool) -> Vec<String> {
    let c = crate::kafka::reader_from_start(topic, isolation);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !enough(&seen) {
        assert!(
            Instant::now() < deadline,
            "{isolation} read of {topic} stopped at {seen:?}"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            seen.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    seen
}

fn batch(tag: &str, n: usize) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({ "event_type": "work_order.created", "payload": { "item": format!("{tag}-{i}") } }))
        .collect();
    json!({ "events": events })
}

fn count(records: &[String], tag: &str) -> usize {
    records
        .iter()
        .filter(|r| r.contains(&format!("\"{tag}-")))
        .count()
}

/// Waits for the barrier batch's three deliveries (`whole-…`) and checks
/// that none of the failed batch's (`torn-…`) was delivered, and that the
/// events list shows the barrier's events only.
async fn only_the_barrier_arrives(base: &str, key: &str, receiver: &Receiver) {
    let got = eventually(
        "the barrier's deliveries",
        Duration::from_secs(60),
        || async {
            let bodies: Vec<String> = receiver
                .received()
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .collect();
            (count(&bodies, "whole") >= 3).then_some(bodies)
        },
    )
    .await;
    assert_eq!(count(&got, "torn"), 0);
    let list = crate::distributed::get(base, key, "/api/v1/integrations/events?limit=50").await;
    let items: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["item"].to_string())
        .collect();
    assert_eq!(
        (count(&items, "torn"), count(&items, "whole")),
        (0, 3),
        "{items:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_batch_failing_midway_leaves_no_event_visible_and_answers_503() {
    require_kafka().await;
    let _broker = BROKER.read().await;
    let prefix = prefix("batch-atomic");
    let tmp = tempfile::tempdir().unwrap();
    let hook = [(test_hooks::KAFKA_BATCH_FAIL_AFTER, "3")];
    let herald = start_role_env("all", &tmp.path().join("data"), &prefix, &[], &hook).await;
    let receiver = Receiver::start(200).await;
    let (key, _) = tenant(&herald.base, "acme", &receiver).await;
    let path = "/api/v1/integrations/events/batch";

    // Five events: the hook writes three, then the append fails.
    let (status, problem) = herald.post(&key, path, batch("torn", 5)).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "https://herald.dev/problems/unavailable");

    // Three events (the hook lets them through): the barrier.
    let (status, body) = herald.post(&key, path, batch("whole", 3)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 3);

    let topic = format!("{prefix}.events");
    let read = |isolation: &'static str, enough: fn(&[String]) -> bool| {
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || read_until(&topic, isolation, enough))
    };
    // The failed batch's records did reach the broker...
    let raw = read("read_uncommitted", |r| {
        count(r, "torn") == 3 && count(r, "whole") == 3
    })
    .await
    .unwrap();
    assert_eq!(count(&raw, "torn"), 3);
    // ...and a read_committed reader, once it has the barrier, has none of them.
    let committed = read("read_committed", |r| count(r, "whole") == 3)
        .await
        .unwrap();
    assert_eq!(
        (count(&committed, "torn"), count(&committed, "whole")),
        (0, 3)
    );

    only_the_barrier_arrives(&herald.base, &key, &receiver).await;
    herald.stop().await;
}

/// On Kafka + Cassandra a batch is indexed inside its transaction, its
/// records marked `herald.indexed` so that fan-out does not write the index
/// again. A batch whose transaction fails after its index (the hook: every
/// record and the index written, then no commit) answers 503, and its
/// events are neither listed nor delivered: the aborted transaction took
/// its index away. A batch that commits is marked, listed and delivered.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_cql_batch_aborted_after_its_index_is_not_listed() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("batch_index");
    let flags = crate::distributed::cql_flags(&cql.keyspace);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let prefix = prefix("batch-index");
    let tmp = tempfile::tempdir().unwrap();
    let hook = [(test_hooks::KAFKA_BATCH_FAIL_AFTER, "3")];
    let herald = start_role_env("all", &tmp.path().join("data"), &prefix, &args, &hook).await;
    let receiver = Receiver::start(200).await;
    let (key, _) = tenant(&herald.base, "acme", &receiver).await;
    let path = "/api/v1/integrations/events/batch";

    let (status, problem) = herald.post(&key, path, batch("torn", 5)).await;
    assert_eq!(status, 503, "{problem}");
    // Three events (the hook lets them through): the barrier.
    let (status, body) = herald.post(&key, path, batch("whole", 3)).await;
    assert_eq!(status, 202, "{body}");

    // The committed records are the barrier's, each marked.
    let topic = format!("{prefix}.events");
    let marks = tokio::task::spawn_blocking(move || {
        use rdkafka::message::Headers;
        let c = crate::kafka::reader_from_start(&topic, "read_committed");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut marks = Vec::new();
        while marks.len() < 3 {
            assert!(Instant::now() < deadline, "read {marks:?}");
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                let marked = m.headers().is_some_and(|h| {
                    h.iter()
                        .any(|h| h.key == "herald.indexed" && h.value == Some(b"1".as_slice()))
                });
                marks.push((count(&[value], "whole"), marked));
            }
        }
        marks
    })
    .await
    .unwrap();
    assert_eq!(marks, [(1, true); 3]);

    only_the_barrier_arrives(&herald.base, &key, &receiver).await;
    // A plain consumer reads the marked records as valid ones.
    let summary = crate::kafka::plain_consumer(&prefix, 3).await;
    assert_eq!(
        (&summary["records"], &summary["error_count"]),
        (&json!(3), &json!(0))
    );
    herald.stop().await;
}

/// A committed batch ends with a transaction marker, an offset no record is
/// read at: a read up to the partition's end returns the batch (it waited
/// for that offset until its timeout and failed as unavailable).
#[tokio::test(flavor = "multi_thread")]
async fn kafka_log_reads_a_committed_batch_to_the_partitions_end() {
    use herald_engine::{
        build_event, config::KafkaConfig, log::kafka::KafkaLog, log::EventLog, model::EventSource,
        NewEvent,
    };
    require_kafka().await;
    let _broker = BROKER.read().await;
    let config = KafkaConfig {
        topic_prefix: prefix("batch-read"),
        partitions: 1,
        ..KafkaConfig::new(BROKERS)
    };
    let log = KafkaLog::connect(config).await.unwrap();
    let events: Vec<_> = (0..3)
        .map(|i| {
            let new = NewEvent {
                event_type: "work_order.created".into(),
                payload: json!({ "item": i }).into(),
                dedupe_key: None,
                schema_version: None,
                occurred_at: None,
                trace_id: None,
            };
            build_event("acme", new, EventSource::Api).unwrap()
        })
        .collect();
    let positions = log.append_all(&events).await.unwrap();
    assert_eq!(positions.len(), 3);
    // The coordinator writes the commit marker after the commit returns:
    // wait for it, so the read below has a marker at the partition's end.
    eventually(
        "the commit marker takes an offset",
        Duration::from_secs(30),
        || async { (log.end_offset(0).await.unwrap() > 3).then_some(()) },
    )
    .await;
    let records = log.read(0, 0, 100).await.unwrap();
    let ids: Vec<_> = records.iter().map(|r| r.event.id.clone()).collect();
    let want: Vec<_> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, want);
}
