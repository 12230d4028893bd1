//! Thin payloads: a `"payload": "thin"` subscription's requests carry the
//! envelope without `data`, signed as sent; the receiver fetches the event
//! with its key. `full` is the default, and PATCH switches between them.

use std::time::Duration;

use serde_json::{json, Value};
use standardwebhooks::Webhook;

use crate::support::{eventually, Herald, Receiver};

const WAIT: Duration = Duration::from_secs(30);

fn body_of(r: &crate::support::Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn a_thin_subscription_gets_the_envelope_without_data_signed_and_fetches_the_event() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let thin_rx = Receiver::start(200).await;
    let full_rx = Receiver::start(200).await;
    let (s, thin) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": thin_rx.url, "event_types": ["patient.*"], "payload": "thin" }),
        )
        .await;
    assert_eq!(s, 201, "{thin}");
    assert_eq!(thin["payload"], "thin");
    let full = h.subscribe(&key, &full_rx.url, &["patient.*"]).await;
    assert_eq!(full["payload"], "full", "full is the default");
    let (s, p) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": thin_rx.url, "event_types": ["x.*"], "payload": "summary" }),
        )
        .await;
    assert_eq!(s, 422, "an unknown payload form is refused: {p}");

    let event = h
        .emit(
            &key,
            "patient.admitted",
            json!({ "name": "Ada", "ward": 7 }),
        )
        .await;
    let id = event["id"].as_str().unwrap();
    let got = eventually("the thin delivery", WAIT, || async {
        thin_rx.received().first().cloned()
    })
    .await;
    let body = body_of(&got);
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "dedupe_key",
            "id",
            "occurred_at",
            "received_at",
            "schema_version",
            "tenant_id",
            "type"
        ],
        "{body}"
    );
    assert_eq!(
        (body["id"].as_str(), body["type"].as_str()),
        (Some(id), Some("patient.admitted"))
    );
    assert!(
        !String::from_utf8_lossy(&got.body).contains("Ada"),
        "no data travels"
    );
    assert!(
        Webhook::new(thin["secret"].as_str().unwrap())
            .unwrap()
            .verify(&got.body, &got.headers)
            .is_ok(),
        "the thin body is signed as sent"
    );
    // The receiver fetches the whole event with the tenant's key.
    let (s, fetched) = h
        .get(&key, &format!("/api/v1/integrations/events/{id}"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(fetched["payload"]["name"], "Ada");
    // The full subscription got the data, as before.
    let full_got = eventually("the full delivery", WAIT, || async {
        full_rx.received().first().cloned()
    })
    .await;
    assert_eq!(body_of(&full_got)["data"]["name"], "Ada");

    // PATCH to full: the next delivery carries the data again.
    let thin_id = thin["id"].as_str().unwrap();
    let (s, changed) = h
        .call(
            "PATCH",
            &key,
            &format!("/api/v1/portal/webhooks/{thin_id}"),
            Some(json!({ "payload": "full" })),
        )
        .await;
    assert_eq!(
        (s, changed["payload"].as_str()),
        (200, Some("full")),
        "{changed}"
    );
    h.emit(&key, "patient.discharged", json!({ "name": "Ada" }))
        .await;
    let second = eventually("the second delivery", WAIT, || async {
        thin_rx.received().get(1).cloned()
    })
    .await;
    assert_eq!(body_of(&second)["data"]["name"], "Ada");
}
