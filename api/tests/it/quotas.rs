//! Per-tenant quotas, set by the admin: subscriptions, event size, events
//! per second. A refused call (422 `quota-exceeded`, or 429 with
//! `Retry-After`) changes nothing; what the quota lets through is accepted
//! and delivered. On the embedded store and on the CQL store.

use std::time::Duration;

use herald_engine::encryption::KeyRing;
use serde_json::{json, Value};

use crate::support::{eventually, Herald, Receiver, ADMIN};

const BATCH: &str = "/api/v1/integrations/events/batch";

async fn put_quotas(h: &Herald, tenant: &str, body: Value) -> (u16, Value) {
    h.call(
        "PUT",
        ADMIN,
        &format!("/api/v1/admin/tenants/{tenant}/quotas"),
        Some(body),
    )
    .await
}

async fn event_ids(h: &Herald, key: &str) -> Vec<String> {
    let (s, page) = h.get(key, "/api/v1/integrations/events?limit=500").await;
    assert_eq!(s, 200, "{page}");
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// The ids of the events in `of` that `receiver` got, sorted.
fn delivered(receiver: &Receiver, of: &[String]) -> Vec<String> {
    let mut got: Vec<String> = receiver
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .filter(|id| of.contains(id))
        .collect();
    got.sort();
    got
}

fn quota_problem(status: u16, body: &Value, expected: u16, slug: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(
        body["type"],
        format!("https://herald.dev/problems/{slug}"),
        "{body}"
    );
}

/// Every quota of a tenant on `h`, end to end.
async fn quotas_are_enforced(h: &Herald) {
    let key = h.tenant("acme").await;
    let other = h.tenant("globex").await;

    // The admin API: none by default, bad values refused, unknown tenants 404.
    let (s, q) = h
        .call("GET", ADMIN, "/api/v1/admin/tenants/acme/quotas", None)
        .await;
    assert_eq!(s, 200, "{q}");
    assert_eq!(
        q,
        json!({"max_subscriptions": null, "max_event_bytes": null, "events_per_second": null})
    );
    let (s, p) = put_quotas(h, "acme", json!({ "events_per_second": 0 })).await;
    assert_eq!(
        (s, p["field"].as_str()),
        (422, Some("events_per_second")),
        "{p}"
    );
    let (s, p) = put_quotas(h, "acme", json!({ "max_event_bytes": 10_000_000 })).await;
    assert_eq!(
        (s, p["field"].as_str()),
        (422, Some("max_event_bytes")),
        "{p}"
    );
    let (s, p) = put_quotas(h, "acme", json!({ "max_subscription": 1 })).await;
    assert_eq!(s, 422, "an unknown field is refused: {p}");
    let (s, _) = put_quotas(h, "nobody", json!({})).await;
    assert_eq!(s, 404);
    let (s, _) = h
        .call("GET", &key, "/api/v1/admin/tenants/acme/quotas", None)
        .await;
    assert_eq!(s, 401, "a tenant key is not the admin token");
    let (s, q) = h
        .call("GET", ADMIN, "/api/v1/admin/tenants/acme/quotas", None)
        .await;
    assert_eq!(
        (s, q["events_per_second"].clone()),
        (200, Value::Null),
        "refused changes changed nothing"
    );

    // Subscriptions: two allowed, the third refused, none created by it.
    let receiver = Receiver::start(200).await;
    let (s, _) = put_quotas(
        h,
        "acme",
        json!({ "max_subscriptions": 2, "max_event_bytes": 200 }),
    )
    .await;
    assert_eq!(s, 200);
    h.subscribe(&key, &receiver.url, &["order.*"]).await;
    h.subscribe(&key, &receiver.url, &["nothing.*"]).await;
    let (s, p) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": receiver.url, "event_types": ["*"] }),
        )
        .await;
    quota_problem(s, &p, 422, "quota-exceeded");
    assert!(p["detail"].as_str().unwrap().contains("quota is 2"), "{p}");
    let (_, list) = h.get(&key, "/api/v1/portal/webhooks").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    // Another tenant is not limited by acme's quotas.
    for _ in 0..3 {
        h.subscribe(&other, &receiver.url, &["other.*"]).await;
    }

    // Event size: a payload over 200 bytes is refused, alone or in a batch,
    // and nothing of the batch is accepted.
    let big = json!({ "blob": "x".repeat(300) });
    let (s, p) = h
        .post(
            &key,
            "/api/v1/integrations/events",
            json!({ "event_type": "order.big", "payload": big }),
        )
        .await;
    quota_problem(s, &p, 422, "quota-exceeded");
    assert!(p["detail"].as_str().unwrap().contains("200 bytes"), "{p}");
    let (s, p) = h
        .post(
            &key,
            BATCH,
            json!({ "events": [
                { "event_type": "order.small", "payload": { "n": 1 } },
                { "event_type": "order.big", "payload": big },
            ] }),
        )
        .await;
    quota_problem(s, &p, 422, "quota-exceeded");
    assert!(p["detail"].as_str().unwrap().contains("events[1]"), "{p}");
    assert!(
        event_ids(h, &key).await.is_empty(),
        "nothing of a refused call is accepted"
    );
    let (s, _) = h
        .post(
            &other,
            "/api/v1/integrations/events",
            json!({ "event_type": "other.big", "payload": big }),
        )
        .await;
    assert_eq!(s, 202, "globex has no size quota");

    // Events per second: 3. A batch of 4 can never pass (422); emits past
    // the rate get 429 with Retry-After and are not accepted; after waiting
    // that long an emit is accepted again. Every accepted event is delivered.
    let (s, _) = put_quotas(h, "acme", json!({ "events_per_second": 3 })).await;
    assert_eq!(s, 200);
    let four: Vec<Value> = (0..4)
        .map(|n| json!({ "event_type": "order.placed", "payload": { "n": n } }))
        .collect();
    let (s, p) = h.post(&key, BATCH, json!({ "events": four })).await;
    quota_problem(s, &p, 422, "quota-exceeded");
    let mut accepted = Vec::new();
    let mut limited = None;
    for n in 0..50 {
        let r = h
            .http
            .post(h.url("/api/v1/integrations/events"))
            .bearer_auth(&key)
            .json(&json!({ "event_type": "order.placed", "payload": { "n": n } }))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 202);
        accepted.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let r = limited.expect("emits past 3 per second are refused");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    let p: Value = r.json().await.unwrap();
    quota_problem(429, &p, 429, "rate-limited");
    assert!(!accepted.is_empty());
    let mut stored = event_ids(h, &key).await;
    stored.sort();
    accepted.sort();
    assert_eq!(
        stored, accepted,
        "exactly the answered-202 events are stored"
    );
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let last = h.emit(&key, "order.placed", json!({ "n": "last" })).await;
    accepted.push(last["id"].as_str().unwrap().to_string());
    // Every accepted event reaches the order.* subscription, exactly once.
    accepted.sort();
    let got = eventually(
        "every accepted event delivered",
        Duration::from_secs(20),
        || async {
            let got = delivered(&receiver, &accepted);
            (got.len() >= accepted.len()).then_some(got)
        },
    )
    .await;
    assert_eq!(got, accepted);

    // Lifting the limits: a batch of 4 passes.
    let (s, _) = put_quotas(h, "acme", json!({})).await;
    assert_eq!(s, 200);
    let four: Vec<Value> = (0..4)
        .map(|n| json!({ "event_type": "order.again", "payload": { "n": n } }))
        .collect();
    let (s, p) = h.post(&key, BATCH, json!({ "events": four })).await;
    assert_eq!(s, 202, "{p}");
}

#[tokio::test]
async fn quotas_are_enforced_on_the_embedded_store() {
    let h = Herald::start().await;
    quotas_are_enforced(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_are_enforced_on_the_cql_store() {
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("quotas");
    let h = Herald::start_with(move |c| {
        c.scylla = Some(cql);
        c.secret_keys = Some(KeyRing::parse(crate::cql::TEST_KEY).unwrap());
    })
    .await;
    quotas_are_enforced(&h).await;
    h.engine.shutdown().await;
}
