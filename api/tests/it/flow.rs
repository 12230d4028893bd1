//! The whole path through the API: subscribe, emit, signed delivery,
//! rotation, dedupe, replay, pagination, tenant isolation.

use std::time::Duration;

use serde_json::{json, Value};
use standardwebhooks::Webhook;

use crate::support::{eventually, Herald, Receiver};

const WAIT: Duration = Duration::from_secs(30);

fn verifies(secret: &str, r: &crate::support::Received) -> bool {
    Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok()
}

#[tokio::test]
async fn delivery_is_signed_logged_and_rotation_dual_signs() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    let sub = herald
        .subscribe(&key, &receiver.url, &["work_order.*"])
        .await;
    let secret1 = sub["secret"].as_str().unwrap().to_string();
    assert!(secret1.starts_with("whsec_"));

    let event = herald
        .emit(&key, "work_order.completed", json!({ "wo": 42 }))
        .await;
    let got = eventually("first delivery", WAIT, || async {
        receiver.received().first().cloned()
    })
    .await;
    assert!(
        verifies(&secret1, &got),
        "the standardwebhooks crate must verify our signature"
    );
    assert_eq!(got.header("webhook-id"), event["id"].as_str().unwrap());
    assert_eq!(got.header("herald-event-type"), "work_order.completed");
    assert_eq!(got.header("herald-attempt"), "1");
    assert_eq!(
        got.header("herald-subscription-id"),
        sub["id"].as_str().unwrap()
    );
    assert!(got.header("user-agent").starts_with("Herald-Webhooks/"));
    assert_eq!(got.header("content-type"), "application/json");
    let body: Value = serde_json::from_slice(&got.body).unwrap();
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
            "data",
            "dedupe_key",
            "id",
            "occurred_at",
            "schema_version",
            "tenant_id",
            "type"
        ]
    );
    assert_eq!(body["data"], json!({ "wo": 42 }));
    assert_eq!(body["tenant_id"], "acme");

    // The attempt is in the delivery log.
    let logs = eventually("a delivered log record", WAIT, || async {
        let logs = herald
            .logs(&key, &format!("event_id={}", event["id"].as_str().unwrap()))
            .await;
        (logs.len() == 1 && logs[0]["outcome"] == "delivered").then_some(logs)
    })
    .await;
    assert_eq!(logs[0]["status_code"], 200);
    assert_eq!(logs[0]["trigger"], "initial");
    assert_eq!(logs[0]["attempt"], 1);
    assert!(logs[0]["id"].as_str().unwrap().starts_with("att_"));

    // Rotation with a grace window: both secrets sign.
    let sub_id = sub["id"].as_str().unwrap();
    let (status, rotated) = herald
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{sub_id}/rotate-secret"),
            json!({ "grace_period_seconds": 3600 }),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let secret2 = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(secret1, secret2);
    assert!(rotated["previous_secret_expires_at"].is_string());
    herald.emit(&key, "work_order.started", json!({})).await;
    let dual = eventually("delivery after rotation", WAIT, || async {
        receiver.received().get(1).cloned()
    })
    .await;
    assert_eq!(dual.header("webhook-signature").split(' ').count(), 2);
    assert!(
        verifies(&secret1, &dual),
        "old secret verifies inside the grace window"
    );
    assert!(verifies(&secret2, &dual), "new secret verifies");

    // Rotation without grace: only the newest secret signs.
    let (_, rotated) = herald
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{sub_id}/rotate-secret"),
            json!({ "grace_period_seconds": 0 }),
        )
        .await;
    let secret3 = rotated["secret"].as_str().unwrap().to_string();
    assert!(rotated["previous_secret_expires_at"].is_null());
    herald.emit(&key, "work_order.paused", json!({})).await;
    let single = eventually("delivery after the grace ended", WAIT, || async {
        receiver.received().get(2).cloned()
    })
    .await;
    assert_eq!(single.header("webhook-signature").split(' ').count(), 1);
    assert!(verifies(&secret3, &single));
    assert!(!verifies(&secret1, &single) && !verifies(&secret2, &single));

    // The subscription read back shows no secret.
    let (status, read) = herald
        .get(&key, &format!("/api/v1/portal/webhooks/{sub_id}"))
        .await;
    assert_eq!(status, 200);
    assert!(read.get("secret").is_none());
}

/// A rotation's grace window ends: inside it both secrets sign, after it
/// only the new one does (the old one is not sent, and does not verify).
#[tokio::test]
async fn the_old_secret_stops_signing_when_its_grace_window_ends() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    let sub = herald
        .subscribe(&key, &receiver.url, &["work_order.*"])
        .await;
    let old = sub["secret"].as_str().unwrap().to_string();
    let sub_id = sub["id"].as_str().unwrap();
    let (status, rotated) = herald
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{sub_id}/rotate-secret"),
            json!({ "grace_period_seconds": 2 }),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    let expires = time::OffsetDateTime::parse(
        rotated["previous_secret_expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    herald.emit(&key, "work_order.started", json!({})).await;
    let inside = eventually("a delivery inside the window", WAIT, || async {
        receiver.received().first().cloned()
    })
    .await;
    let signed_at: i64 = inside.header("webhook-timestamp").parse().unwrap();
    if signed_at < expires.unix_timestamp() {
        assert_eq!(inside.header("webhook-signature").split(' ').count(), 2);
        assert!(verifies(&old, &inside) && verifies(&new, &inside));
    }

    // Wait for the window to end (on the clock, not for a fixed time).
    while time::OffsetDateTime::now_utc() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    herald.emit(&key, "work_order.paused", json!({})).await;
    let after = eventually("a delivery after the window", WAIT, || async {
        receiver.received().get(1).cloned()
    })
    .await;
    assert_eq!(
        after.header("webhook-signature").split(' ').count(),
        1,
        "one signature: {}",
        after.header("webhook-signature")
    );
    assert!(verifies(&new, &after), "the new secret signs");
    assert!(!verifies(&old, &after), "the expired secret no longer does");
}

/// A payload is stored, answered and delivered as the emitter wrote it,
/// less the whitespace between tokens: keys in their order, numbers as
/// written (`2.50`, an integer beyond 64 bits), strings untouched.
#[tokio::test]
async fn a_payload_is_delivered_as_written_less_its_whitespace() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let rx = Receiver::start(200).await;
    h.subscribe(&key, &rx.url, &["order.*"]).await;
    let sent = "{\"event_type\": \"order.placed\", \"payload\": {\n  \"z\": 1,\n\t\"price\" : 2.50,\r\n  \"big\": 18446744073709551616, \"note\": \"a  b\\\" c\" }\n}";
    let stored = r#"{"z":1,"price":2.50,"big":18446744073709551616,"note":"a  b\" c"}"#;
    let answer = h
        .http
        .post(h.url("/api/v1/integrations/events"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let answer = answer.text().await.unwrap();
    assert!(
        answer.contains(&format!("\"payload\":{stored}")),
        "{answer}"
    );
    let id = serde_json::from_str::<Value>(&answer).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let got = eventually("the delivery", WAIT, || async {
        rx.received().first().cloned()
    })
    .await;
    let delivered = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(
        delivered.contains(&format!("\"data\":{stored}")),
        "{delivered}"
    );
    let read = h
        .http
        .get(h.url(&format!("/api/v1/integrations/events/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(read.contains(&format!("\"payload\":{stored}")), "{read}");
}

#[tokio::test]
async fn dedupe_key_returns_the_original_and_delivers_once() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    herald
        .subscribe(&key, &receiver.url, &["inventory.moved"])
        .await;
    let body = json!({ "event_type": "inventory.moved", "payload": { "sku": "A" }, "dedupe_key": "move-1" });
    let (s1, first) = herald
        .post(&key, "/api/v1/integrations/events", body.clone())
        .await;
    let (s2, second) = herald.post(&key, "/api/v1/integrations/events", body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(
        first["id"], second["id"],
        "the same dedupe_key answers the original event"
    );

    // Another tenant may use the same key.
    let other = herald.tenant("globex").await;
    let (_, theirs) = herald
        .post(
            &other,
            "/api/v1/integrations/events",
            json!({ "event_type": "inventory.moved", "payload": {}, "dedupe_key": "move-1" }),
        )
        .await;
    assert_ne!(theirs["id"], first["id"]);

    eventually("the delivery", WAIT, || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    // A later event proves the pipeline moved past the duplicate without delivering it.
    herald
        .emit(&key, "inventory.moved", json!({ "sku": "B" }))
        .await;
    eventually("the next delivery", WAIT, || async {
        (receiver.received().len() >= 2).then_some(())
    })
    .await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    assert_eq!(
        ids.iter().filter(|id| **id == first["id"]).count(),
        1,
        "{ids:?}"
    );
    let (_, list) = herald.get(&key, "/api/v1/integrations/events").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn replay_creates_linked_deliveries_with_the_same_webhook_id() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let a = Receiver::start(200).await;
    let b = Receiver::start(200).await;
    let sub_a = herald.subscribe(&key, &a.url, &["quality.*"]).await;
    herald
        .subscribe(&key, &b.url, &["quality.gate_cleared"])
        .await;
    let event = herald
        .emit(&key, "quality.gate_cleared", json!({ "gate": 3 }))
        .await;
    let event_id = event["id"].as_str().unwrap();
    // Waits for at least the expected counts, then asserts them exactly: a
    // failure shows what each receiver got.
    let expect = |what: &'static str, want_a: usize, want_b: usize| {
        let (a, b) = (&a, &b);
        async move {
            eventually(what, WAIT, || async {
                (a.received().len() >= want_a && b.received().len() >= want_b).then_some(())
            })
            .await;
            let ids = |r: &Receiver| {
                r.received()
                    .iter()
                    .map(|m| m.header("webhook-id").to_string())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                (a.received().len(), b.received().len()),
                (want_a, want_b),
                "{what}: a got {:?}, b got {:?}",
                ids(a),
                ids(b)
            );
        }
    };
    expect("both deliveries", 1, 1).await;

    // Replay to one subscription only.
    let (status, replay) = herald
        .post(
            &key,
            &format!("/api/v1/integrations/events/{event_id}/replay"),
            json!({ "subscription_id": sub_a["id"] }),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    let created = replay["data"].as_array().unwrap();
    assert_eq!(created.len(), 1);
    assert!(created[0]["replay_of"]
        .as_str()
        .unwrap()
        .starts_with("dlv_"));
    expect("the replayed delivery", 2, 1).await;
    assert_eq!(a.received()[1].header("webhook-id"), event_id);

    let logs = eventually("the replay's log record", WAIT, || async {
        let logs = herald.logs(&key, &format!("event_id={event_id}")).await;
        logs.iter()
            .any(|l| l["trigger"] == "replay" && l["outcome"] == "delivered")
            .then_some(logs)
    })
    .await;
    let replayed = logs.iter().find(|l| l["trigger"] == "replay").unwrap();
    assert_eq!(replayed["replay_of"], created[0]["replay_of"]);
    assert_eq!(replayed["delivery_id"], created[0]["delivery_id"]);

    // Replay to all matching subscriptions.
    let (status, all) = herald
        .post(
            &key,
            &format!("/api/v1/integrations/events/{event_id}/replay"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{all}");
    assert_eq!(all["data"].as_array().unwrap().len(), 2, "{all}");
    expect("both replays", 3, 2).await;

    // The event with its deliveries.
    let (status, one) = herald
        .get(&key, &format!("/api/v1/integrations/events/{event_id}"))
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["id"], event_id);
    assert!(one["deliveries"].as_array().unwrap().len() >= 4, "{one}");
}

#[tokio::test]
async fn lists_page_with_cursors_and_filters() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    herald.subscribe(&key, &receiver.url, &["*"]).await;
    let mut emitted = Vec::new();
    for n in 0..25 {
        let t = if n % 5 == 0 {
            "order.cancelled"
        } else {
            "order.created"
        };
        emitted.push(
            herald.emit(&key, t, json!({ "n": n })).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Events: newest first, 10 per page, every event once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, page) = herald
            .get(
                &key,
                &format!("/api/v1/integrations/events?limit=10&cursor={cursor}"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    emitted.reverse();
    assert_eq!(seen, emitted);
    let (_, cancelled) = herald
        .get(
            &key,
            "/api/v1/integrations/events?event_type=order.cancelled&limit=100",
        )
        .await;
    assert_eq!(cancelled["data"].as_array().unwrap().len(), 5);
    let (_, family) = herald
        .get(
            &key,
            "/api/v1/integrations/events?event_type=order.*&limit=100",
        )
        .await;
    assert_eq!(family["data"].as_array().unwrap().len(), 25);

    // Delivery logs: pages and the status filter.
    eventually("25 deliveries", WAIT, || async {
        (herald.logs(&key, "status=delivered").await.len() == 25).then_some(())
    })
    .await;
    let (_, page) = herald
        .get(&key, "/api/v1/integrations/webhooks?limit=7")
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 7);
    assert!(page["next_cursor"].is_string());
    assert!(herald.logs(&key, "status=dead").await.is_empty());
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let herald = Herald::start().await;
    let acme = herald.tenant("acme").await;
    let globex = herald.tenant("globex").await;
    let receiver = Receiver::start(200).await;
    let sub = herald.subscribe(&acme, &receiver.url, &["*"]).await;
    let event = herald.emit(&acme, "secret.plan", json!({})).await;
    let (event_id, sub_id) = (event["id"].as_str().unwrap(), sub["id"].as_str().unwrap());
    eventually("delivery", WAIT, || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;

    let (s, _) = herald
        .get(&globex, &format!("/api/v1/integrations/events/{event_id}"))
        .await;
    assert_eq!(s, 404);
    let (s, _) = herald
        .post(
            &globex,
            &format!("/api/v1/integrations/events/{event_id}/replay"),
            json!({}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = herald
        .get(&globex, &format!("/api/v1/portal/webhooks/{sub_id}"))
        .await;
    assert_eq!(s, 404);
    let (s, _) = herald
        .post(
            &globex,
            &format!("/api/v1/portal/webhooks/{sub_id}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(s, 404);
    // A replay to another tenant's subscription is refused too.
    let theirs = herald.emit(&globex, "secret.plan", json!({})).await;
    let (s, _) = herald
        .post(
            &globex,
            &format!(
                "/api/v1/integrations/events/{}/replay",
                theirs["id"].as_str().unwrap()
            ),
            json!({ "subscription_id": sub_id }),
        )
        .await;
    assert_eq!(s, 404);
    let (_, list) = herald.get(&globex, "/api/v1/integrations/events").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(herald.logs(&globex, "").await.is_empty());
    assert_eq!(receiver.received().len(), 1);
}

/// The tests' late signature check ([`crate::support::Received::signed_by`])
/// judges the timestamp against the arrival time and still refuses a wrong
/// key or a request that was already stale when it came.
#[test]
fn a_signature_checked_late_is_judged_at_its_arrival() {
    use axum::http::{HeaderMap, HeaderValue};

    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hook = Webhook::new(secret).unwrap();
    let body = axum::body::Bytes::from_static(br#"{"n":1}"#);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sent = now - 600;
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_static("evt_1"));
    headers.insert("webhook-timestamp", HeaderValue::from(sent));
    let sig = hook.sign("evt_1", sent, &body).unwrap();
    headers.insert("webhook-signature", HeaderValue::try_from(sig).unwrap());
    let arrived = |at| crate::support::Received {
        headers: headers.clone(),
        body: body.clone(),
        at,
    };

    assert!(arrived(sent + 1)
        .signed_by(std::slice::from_ref(&hook))
        .is_ok());
    assert!(
        hook.verify(&body, &headers).is_err(),
        "the verifier alone refuses it now"
    );
    let other = Webhook::new("whsec_dGhpcyBpcyBhbm90aGVyIGtleSwgMzIgYnl0ZXM=").unwrap();
    assert!(arrived(sent + 1).signed_by(&[other]).is_err(), "wrong key");
    assert!(arrived(now).signed_by(&[hook]).is_err(), "stale on arrival");
}
