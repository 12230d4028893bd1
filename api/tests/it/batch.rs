//! Batched emit: atomic per batch, dedupe per item, limits.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Herald, Receiver};

const BATCH: &str = "/api/v1/integrations/events/batch";
const WAIT: Duration = Duration::from_secs(30);

async fn event_count(herald: &Herald, key: &str) -> usize {
    let (status, page) = herald
        .get(key, "/api/v1/integrations/events?limit=500")
        .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().len()
}

/// Emits a barrier event of `event_type` (which `receiver`'s subscription
/// takes), emitted after everything the test sent, and waits until it
/// arrived; returns its id. What has not arrived by then never will.
async fn barrier(herald: &Herald, key: &str, receiver: &Receiver, event_type: &str) -> String {
    let event = herald
        .emit(key, event_type, json!({ "barrier": true }))
        .await;
    let id = event["id"].as_str().unwrap().to_string();
    eventually("the barrier", WAIT, || async {
        receiver
            .received()
            .iter()
            .any(|r| r.header("webhook-id") == id)
            .then_some(())
    })
    .await;
    id
}

#[tokio::test]
async fn batch_is_delivered_in_order_and_every_item_once() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    herald.subscribe(&key, &receiver.url, &["batch.*"]).await;
    let events: Vec<Value> = (0..50)
        .map(|i| json!({ "event_type": "batch.item", "payload": { "i": i } }))
        .collect();
    let (status, body) = herald.post(&key, BATCH, json!({ "events": events })).await;
    assert_eq!(status, 202, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 50);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["payload"]["i"], i, "answers keep the request's order");
        assert_eq!(item["deduplicated"], false);
        assert!(item["id"].as_str().unwrap().starts_with("evt_"));
    }
    let samples = crate::metrics::parse(&herald.engine.metrics().render());
    assert_eq!(
        crate::metrics::value(
            &samples,
            "herald_events_ingested_total",
            &[("source", "api")]
        ),
        Some(50.0),
        "each event of the batch is counted as ingested"
    );
    let mut ids: Vec<&str> = data.iter().map(|e| e["id"].as_str().unwrap()).collect();
    eventually("50 deliveries", WAIT, || async {
        (receiver.received().len() >= 50).then_some(())
    })
    .await;
    let barrier = barrier(&herald, &key, &receiver, "batch.barrier").await;
    let mut got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .filter(|id| *id != barrier)
        .collect();
    got.sort();
    ids.sort_unstable();
    assert_eq!(got, ids, "each event of the batch delivered exactly once");
}

#[tokio::test]
async fn one_bad_item_refuses_the_whole_batch() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let bad_items = [
        (
            json!({ "event_type": "ok.b", "payload": [1] }),
            "events[2].payload",
        ),
        (
            json!({ "event_type": "a b", "payload": {} }),
            "events[2].event_type",
        ),
        (
            json!({ "event_type": "ok.b", "payload": {}, "dedupe_key": "" }),
            "events[2].dedupe_key",
        ),
        (json!({ "payload": {} }), "events[2]"),
        (
            json!({ "event_type": "ok.b", "payload": {}, "extra": 1 }),
            "events[2]",
        ),
    ];
    for (bad, named) in bad_items {
        let events = json!([
            { "event_type": "ok.a", "payload": {} },
            { "event_type": "ok.a", "payload": {}, "dedupe_key": "k-1" },
            bad,
            { "event_type": "ok.a", "payload": {} },
        ]);
        let (status, body) = herald.post(&key, BATCH, json!({ "events": events })).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], "events", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains(named),
            "{body} should name {named}"
        );
    }
    assert_eq!(event_count(&herald, &key).await, 0, "nothing was stored");
    // The dedupe key of the refused batch was not claimed.
    let (status, body) = herald
        .post(
            &key,
            BATCH,
            json!({ "events": [{ "event_type": "ok.a", "payload": {}, "dedupe_key": "k-1" }] }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"][0]["deduplicated"], false);
}

#[tokio::test]
async fn dedupe_keys_hold_inside_a_batch_and_across_batches() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    herald.subscribe(&key, &receiver.url, &["d.*"]).await;
    let single = herald
        .post(
            &key,
            "/api/v1/integrations/events",
            json!({ "event_type": "d.x", "payload": { "n": 0 }, "dedupe_key": "before" }),
        )
        .await;
    assert_eq!(single.0, 202);
    let (status, body) = herald
        .post(
            &key,
            BATCH,
            json!({ "events": [
                { "event_type": "d.x", "payload": { "n": 1 }, "dedupe_key": "a" },
                { "event_type": "d.x", "payload": { "n": 2 }, "dedupe_key": "a" },
                { "event_type": "d.x", "payload": { "n": 3 }, "dedupe_key": "before" },
                { "event_type": "d.x", "payload": { "n": 4 } },
            ] }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let d = body["data"].as_array().unwrap();
    assert_eq!(d[0]["deduplicated"], false);
    assert_eq!(d[1]["deduplicated"], true);
    assert_eq!(
        d[1]["id"], d[0]["id"],
        "a repeated key inside the batch answers its first item"
    );
    assert_eq!(d[1]["payload"]["n"], 1);
    assert_eq!(d[2]["deduplicated"], true);
    assert_eq!(
        d[2]["id"], single.1["id"],
        "a key used before answers the original"
    );
    assert_eq!(d[3]["deduplicated"], false);

    let (status, again) = herald
        .post(
            &key,
            BATCH,
            json!({ "events": [
                { "event_type": "d.x", "payload": { "n": 5 }, "dedupe_key": "a" },
                { "event_type": "d.x", "payload": { "n": 6 }, "dedupe_key": "b" },
            ] }),
        )
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["data"][0]["id"], d[0]["id"], "across batches too");
    assert_eq!(again["data"][0]["deduplicated"], true);
    assert_eq!(again["data"][1]["deduplicated"], false);

    // Distinct events: before, a, n=4, b.
    eventually("4 deliveries", WAIT, || async {
        (receiver.received().len() >= 4).then_some(())
    })
    .await;
    barrier(&herald, &key, &receiver, "d.barrier").await;
    assert_eq!(
        receiver.received().len(),
        5,
        "duplicates delivered nothing new (4 events and the barrier)"
    );
    assert_eq!(
        event_count(&herald, &key).await,
        5,
        "4 events and the barrier"
    );
}

#[tokio::test]
async fn over_the_limits_is_refused() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let max = herald_engine::MAX_BATCH_EVENTS;
    let too_many: Vec<Value> = (0..=max)
        .map(|_| json!({ "event_type": "a.b", "payload": {} }))
        .collect();
    let (status, body) = herald
        .post(&key, BATCH, json!({ "events": too_many }))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "events");
    let (status, body) = herald.post(&key, BATCH, json!({ "events": [] })).await;
    assert_eq!(status, 422, "{body}");
    // 8 items of 200 KiB: each under the per-event limit, together over 1 MiB.
    let big: Vec<Value> = (0..8)
        .map(|_| json!({ "event_type": "a.b", "payload": { "x": "y".repeat(200 * 1024) } }))
        .collect();
    let (status, body) = herald.post(&key, BATCH, json!({ "events": big })).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = herald.post(&key, BATCH, json!({ "items": [] })).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(event_count(&herald, &key).await, 0);
    // No key → 401.
    let r = herald
        .http
        .post(herald.url(BATCH))
        .json(&json!({ "events": [{ "event_type": "a.b", "payload": {} }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
