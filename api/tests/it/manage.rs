//! Subscription management (list, update, pause, resume, delete) and API keys.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, Herald, Receiver, ADMIN};

#[tokio::test]
async fn subscriptions_list_update_pause_resume_delete() {
    let h = Herald::start().await;
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

    // Pause: deliveries wait; resume: they go out.
    let (s, p) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{b}/pause"),
            json!({}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (200, Some("paused")));
    h.emit(&key, "order.shipped", json!({"n": 2})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
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
    // Events emitted after the resume go out at once.
    h.emit(&key, "order.created", json!({"n": 3})).await;
    eventually("delivery after resume", Duration::from_secs(10), || async {
        rx.received()
            .iter()
            .any(|r| r.body.windows(5).any(|w| w == b"\"n\":3"))
            .then_some(())
    })
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
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        other.received().len(),
        1,
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
