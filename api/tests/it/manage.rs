//! Subscription management (list, update, pause, resume, delete) and API keys.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Herald, HeraldProcess, Receiver, ADMIN};

/// The `n` of every event `rx` received, in arrival order.
pub(crate) fn numbers(rx: &Receiver) -> Vec<i64> {
    rx.received()
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["data"]["n"].as_i64().unwrap()
        })
        .collect()
}

/// A lease margin so long that a delivery waiting for its lease to end
/// would time out every `eventually` of these tests.
pub(crate) const LONG_LEASE: Duration = Duration::from_secs(900);

#[tokio::test]
async fn subscriptions_list_update_pause_resume_delete() {
    let h = Herald::start_with(|c| c.delivery.lease_margin = LONG_LEASE).await;
    let key = h.tenant("acme").await;
    let rx = Receiver::start(200).await;
    let other = Receiver::start(200).await;
    let a = h.subscribe(&key, &rx.url, &["order.created"]).await;
    let b = h.subscribe(&key, &rx.url, &["order.*"]).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    // List, newest first, paged.
    let (s, page) = h.get(&key, "/api/v1/portal/webhooks?limit=1").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["data"][0]["id"], b);
    assert!(
        page["data"][0].get("secret").is_none(),
        "lists never show secrets"
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2) = h
        .get(
            &key,
            &format!("/api/v1/portal/webhooks?limit=1&cursor={cursor}"),
        )
        .await;
    assert_eq!(page2["data"][0]["id"], a);
    assert!(page2["next_cursor"].is_null());
    let (s, _) = h.get(&key, "/api/v1/portal/webhooks?limit=0").await;
    assert_eq!(s, 422);
    let (s, _) = h.get(&key, "/api/v1/portal/webhooks?cursor=bogus").await;
    assert_eq!(s, 422);

    // Update: url, types, description, headers, rate limit; null clears.
    let (s, up) = h
        .call(
            "PATCH",
            &key,
            &format!("/api/v1/portal/webhooks/{a}"),
            Some(
                json!({"url": other.url, "event_types": ["invoice.paid"], "description": "d",
                        "headers": {"x-team": "ops"}, "rate_limit": 5}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["url"], other.url.as_str());
    assert_eq!(up["event_types"], json!(["invoice.paid"]));
    assert_eq!(up["headers"]["x-team"], "ops");
    assert_eq!(up["rate_limit"], 5);
    let (_, up) = h
        .call(
            "PATCH",
            &key,
            &format!("/api/v1/portal/webhooks/{a}"),
            Some(json!({"description": null, "rate_limit": null})),
        )
        .await;
    assert!(
        up["description"].is_null() && up["rate_limit"].is_null(),
        "{up}"
    );
    assert_eq!(up["url"], other.url.as_str(), "absent fields stay");
    // Bad updates change nothing.
    for bad in [
        json!({"url": "ftp://x"}),
        json!({"event_types": []}),
        json!({"headers": {"content-type": "x"}}),
        json!({"rate_limit": 0}),
        json!({"nope": 1}),
    ] {
        let (s, body) = h
            .call(
                "PATCH",
                &key,
                &format!("/api/v1/portal/webhooks/{a}"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s, 422, "{bad} → {body}");
        assert!(body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://herald.dev/problems/"));
    }
    let (_, now) = h.get(&key, &format!("/api/v1/portal/webhooks/{a}")).await;
    assert_eq!(now["event_types"], json!(["invoice.paid"]));

    // The index follows the update: invoice.paid goes to `other`.
    h.emit(&key, "invoice.paid", json!({"n": 1})).await;
    eventually(
        "delivery to the updated url",
        Duration::from_secs(10),
        || async { (other.received().len() == 1).then_some(()) },
    )
    .await;

    // Pause: deliveries are held (the thorough check is
    // `paused_subscriptions_hold_events_until_resumed`); resume: they go out.
    let (s, p) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{b}/pause"),
            json!({}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (200, Some("paused")));
    h.emit(&key, "order.shipped", json!({"n": 2})).await;
    // Barrier: emitted after, to the active subscription `a`.
    h.emit(&key, "invoice.paid", json!({"n": 20})).await;
    eventually("the barrier", Duration::from_secs(10), || async {
        (other.received().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        rx.received().len(),
        0,
        "paused subscriptions receive nothing"
    );
    let (s, p) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{b}/resume"),
            json!({}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (200, Some("active")));
    // The held event goes out, and events emitted after the resume too.
    h.emit(&key, "order.created", json!({"n": 3})).await;
    eventually(
        "deliveries after resume",
        Duration::from_secs(10),
        || async {
            let got = numbers(&rx);
            (got.contains(&2) && got.contains(&3)).then_some(())
        },
    )
    .await;

    // Delete: gone, and nothing more is delivered there.
    let (s, _) = h
        .call(
            "DELETE",
            &key,
            &format!("/api/v1/portal/webhooks/{a}"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, body) = h.get(&key, &format!("/api/v1/portal/webhooks/{a}")).await;
    assert_eq!(s, 404, "{body}");
    let (s, _) = h
        .call(
            "DELETE",
            &key,
            &format!("/api/v1/portal/webhooks/{a}"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    h.emit(&key, "invoice.paid", json!({"n": 4})).await;
    // Barrier: an event after it, to a new subscription on the same receiver.
    h.subscribe(&key, &other.url, &["barrier.sent"]).await;
    h.emit(&key, "barrier.sent", json!({"n": 5})).await;
    eventually("the barrier", Duration::from_secs(10), || async {
        numbers(&other).contains(&5).then_some(())
    })
    .await;
    assert_eq!(
        numbers(&other),
        [1, 20, 5],
        "a deleted subscription gets nothing"
    );
    for path in ["pause", "resume", "rotate-secret"] {
        let (s, _) = h
            .post(
                &key,
                &format!("/api/v1/portal/webhooks/{a}/{path}"),
                json!({}),
            )
            .await;
        assert_eq!(s, 404, "{path}");
    }
}

/// Events held for a paused subscription: `N` events emitted while it is
/// paused, then a barrier event to another, active subscription. Once the
/// barrier arrived, the paused one has received nothing; after the resume
/// every held event arrives once, in emit order (one in flight at a time),
/// within `wait`, which is far shorter than the server's lease.
pub(crate) async fn held_until_resumed(h: &Herald, tenant: &str, wait: Duration) {
    const N: i64 = 6;
    let key = h.tenant(tenant).await;
    let held = Receiver::start(200).await;
    let barrier = Receiver::start(200).await;
    let (s, sub) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": held.url, "event_types": ["order.*"], "max_in_flight": 1 }),
        )
        .await;
    assert_eq!(s, 201, "{sub}");
    let id = sub["id"].as_str().unwrap();
    h.subscribe(&key, &barrier.url, &["barrier.sent"]).await;
    let (s, p) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{id}/pause"),
            json!({}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (200, Some("paused")));
    for n in 0..N {
        h.emit(&key, "order.placed", json!({ "n": n })).await;
    }
    h.emit(&key, "barrier.sent", json!({ "n": -1 })).await;
    eventually("the barrier", wait, || async {
        (barrier.received().len() == 1).then_some(())
    })
    .await;
    assert_eq!(held.received().len(), 0, "nothing goes out while paused");
    let logs = h.logs(&key, &format!("subscription_id={id}")).await;
    assert!(logs.is_empty(), "no attempt while paused: {logs:?}");

    let (s, p) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{id}/resume"),
            json!({}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (200, Some("active")));
    eventually("every held event after the resume", wait, || async {
        (held.received().len() >= N as usize).then_some(())
    })
    .await;
    // A last event, after them all: once it is in, nothing else is coming.
    h.emit(&key, "order.placed", json!({ "n": N })).await;
    eventually("the last event", wait, || async {
        numbers(&held).contains(&N).then_some(())
    })
    .await;
    assert_eq!(
        numbers(&held),
        (0..=N).collect::<Vec<_>>(),
        "held events arrive once each, in emit order"
    );
}

#[tokio::test]
async fn paused_subscriptions_hold_events_until_resumed() {
    let h = Herald::start_with(|c| c.delivery.lease_margin = LONG_LEASE).await;
    held_until_resumed(&h, "acme", Duration::from_secs(20)).await;
}

#[tokio::test]
async fn held_events_survive_a_restart_and_go_out_on_resume() {
    const N: i64 = 5;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("herald.log");
    let args = ["--lease-margin", "15m"];
    let start = || async {
        HeraldProcess::start(&dir, &log, &args, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let held = Receiver::start(200).await;
    let barrier = Receiver::start(200).await;
    let server = start().await;
    let key = server.tenant("acme").await;
    let subscribe = |body: Value| {
        let (server, key) = (&server, &key);
        async move {
            let (s, sub) = server
                .post(key, "/api/v1/portal/webhooks/subscribe", body)
                .await;
            assert_eq!(s, 201, "{sub}");
            sub["id"].as_str().unwrap().to_string()
        }
    };
    let id =
        subscribe(json!({ "url": held.url, "event_types": ["order.*"], "ordering": "strict" }))
            .await;
    subscribe(json!({ "url": barrier.url, "event_types": ["barrier.sent"] })).await;
    let (s, _) = server
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{id}/pause"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    for n in 0..N {
        let (s, _) = server
            .post(
                &key,
                "/api/v1/integrations/events",
                json!({ "event_type": "order.placed", "payload": { "n": n } }),
            )
            .await;
        assert_eq!(s, 202);
    }
    let (s, _) = server
        .post(
            &key,
            "/api/v1/integrations/events",
            json!({ "event_type": "barrier.sent", "payload": { "n": -1 } }),
        )
        .await;
    assert_eq!(s, 202);
    let wait = Duration::from_secs(30);
    eventually("the barrier", wait, || async {
        (barrier.received().len() == 1).then_some(())
    })
    .await;
    assert_eq!(held.received().len(), 0, "nothing goes out while paused");
    server.kill9().await;

    let server = start().await;
    let (s, p) = server
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{id}/resume"),
            json!({}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (200, Some("active")), "{p}");
    eventually(
        "every held event after the restart and resume",
        wait,
        || async { (held.received().len() >= N as usize).then_some(()) },
    )
    .await;
    // A last event, after them all: once it is in, nothing else is coming.
    let (s, _) = server
        .post(
            &key,
            "/api/v1/integrations/events",
            json!({ "event_type": "order.placed", "payload": { "n": N } }),
        )
        .await;
    assert_eq!(s, 202);
    eventually("the last event", wait, || async {
        numbers(&held).contains(&N).then_some(())
    })
    .await;
    assert_eq!(
        numbers(&held),
        (0..=N).collect::<Vec<_>>(),
        "held events arrive once each, in emit order"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_disabled_subscriptions_pending_delivery_is_recorded_dead() {
    let h = Herald::start_with(|c| {
        c.delivery.lease_margin = LONG_LEASE;
        c.retry_schedule = "1s,1s,1s,1s,1s,1s,1s,1s".parse().unwrap();
    })
    .await;
    let key = h.tenant("acme").await;
    // Fails (503) until the second event is scheduled behind the first, then is gone (410).
    let gone = Receiver::start(503).await;
    let barrier = Receiver::start(200).await;
    let (s, sub) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": gone.url, "event_types": ["order.*"], "ordering": "strict" }),
        )
        .await;
    assert_eq!(s, 201, "{sub}");
    let id = sub["id"].as_str().unwrap();
    h.subscribe(&key, &barrier.url, &["order.*"]).await;
    let first = h.emit(&key, "order.placed", json!({ "n": 0 })).await;
    let second = h.emit(&key, "order.placed", json!({ "n": 1 })).await;
    // Fan-out schedules an event for every subscription at once: when the
    // barrier has the second event, it waits behind the first one's retry.
    eventually(
        "the barrier received the second event",
        Duration::from_secs(20),
        || async { numbers(&barrier).contains(&1).then_some(()) },
    )
    .await;
    gone.set_status(410);
    // The first delivery's retry gets 410 and disables the subscription; the
    // second, next in order, then falls due and is recorded dead without
    // being sent (before, it stayed leased and came back at every lease's end).
    let logs_of = |event: &Value| {
        format!(
            "subscription_id={id}&event_id={}",
            event["id"].as_str().unwrap()
        )
    };
    let record = eventually(
        "the second delivery settled",
        Duration::from_secs(30),
        || async { h.logs(&key, &logs_of(&second)).await.into_iter().next() },
    )
    .await;
    assert_eq!(record["outcome"], "dead", "{record}");
    assert!(
        record["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{record}"
    );
    assert!(record["status_code"].is_null(), "not sent: {record}");
    let attempts_of_first = h.logs(&key, &logs_of(&first)).await;
    assert!(
        attempts_of_first.iter().any(|r| r["status_code"] == 410),
        "{attempts_of_first:?}"
    );
    assert_eq!(
        gone.hits.load(std::sync::atomic::Ordering::SeqCst),
        attempts_of_first.len(),
        "only the first event was sent"
    );
}

#[tokio::test]
async fn api_keys_are_shown_once_listed_without_the_key_and_revocable() {
    let h = Herald::start().await;
    let first = h.tenant("acme").await;
    h.tenant("globex").await;

    // Tenant self-service.
    let (s, created) = h
        .post(&first, "/api/v1/portal/api-keys", json!({"name": "ci"}))
        .await;
    assert_eq!(s, 201, "{created}");
    let second = created["api_key"].as_str().unwrap().to_string();
    let second_id = created["id"].as_str().unwrap().to_string();
    assert!(second.starts_with(created["prefix"].as_str().unwrap()));
    let (s, list) = h.get(&second, "/api/v1/portal/api-keys").await;
    assert_eq!(s, 200);
    let keys = list["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.get("api_key").is_none()));
    assert!(
        !list.to_string().contains(&second),
        "the key itself is never listed"
    );
    assert_eq!(keys[1]["name"], "ci");
    let (_, page) = h.get(&second, "/api/v1/portal/api-keys?limit=1").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let c = page["next_cursor"].as_str().unwrap();
    let (_, page2) = h
        .get(
            &second,
            &format!("/api/v1/portal/api-keys?limit=1&cursor={c}"),
        )
        .await;
    assert_eq!(page2["data"][0]["id"], second_id.as_str());
    assert!(page2["next_cursor"].is_null());

    // Revoke: the key stops working with the next request.
    let (s, revoked) = h
        .call(
            "DELETE",
            &first,
            &format!("/api/v1/portal/api-keys/{second_id}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (s, body) = h.get(&second, "/api/v1/portal/webhooks").await;
    assert_eq!(s, 401, "{body}");
    let (s, _) = h.get(&first, "/api/v1/portal/webhooks").await;
    assert_eq!(s, 200, "other keys keep working");
    let (s, _) = h
        .post(&first, "/api/v1/portal/api-keys", json!({"name": ""}))
        .await;
    assert_eq!(s, 422);

    // Admin: create, list and revoke for any tenant; 404 for unknown ones.
    let (s, made) = h
        .post(ADMIN, "/api/v1/admin/tenants/globex/api-keys", json!({}))
        .await;
    assert_eq!(s, 201, "{made}");
    let gk = made["api_key"].as_str().unwrap().to_string();
    let (s, _) = h.get(&gk, "/api/v1/portal/webhooks").await;
    assert_eq!(s, 200);
    let (s, list) = h.get(ADMIN, "/api/v1/admin/tenants/globex/api-keys").await;
    assert_eq!((s, list["data"].as_array().unwrap().len()), (200, 2));
    let (s, _) = h
        .call(
            "DELETE",
            ADMIN,
            &format!(
                "/api/v1/admin/tenants/globex/api-keys/{}",
                made["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = h.get(&gk, "/api/v1/portal/webhooks").await;
    assert_eq!(s, 401);
    let (s, _) = h
        .post(ADMIN, "/api/v1/admin/tenants/nobody/api-keys", json!({}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = h.get(ADMIN, "/api/v1/admin/tenants/nobody/api-keys").await;
    assert_eq!(s, 404);
    // A tenant key is not the admin token, and the admin token is no tenant key.
    let (s, _) = h.get(&first, "/api/v1/admin/tenants/acme/api-keys").await;
    assert_eq!(s, 401);
    let (s, _) = h.get(ADMIN, "/api/v1/portal/api-keys").await;
    assert_eq!(s, 401);
    // One tenant cannot revoke another's key.
    let (_, gl) = h.get(ADMIN, "/api/v1/admin/tenants/globex/api-keys").await;
    let gid = gl["data"][0]["id"].as_str().unwrap();
    let (s, _) = h
        .call(
            "DELETE",
            &first,
            &format!("/api/v1/portal/api-keys/{gid}"),
            None,
        )
        .await;
    assert_eq!(s, 404);
}
