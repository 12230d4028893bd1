//! The audit trail end to end: every kind of change made through the API
//! by two keys, the admin token and Herald itself (an auto-disable) is
//! listed by `GET /api/v1/portal/audit` newest first with its actor, and no
//! secret appears in it; refused changes leave no record; paging, filters,
//! bad query values, the scope and tenant isolation. On the embedded store
//! and on the CQL store.

use std::time::Duration;

use herald_engine::encryption::KeyRing;
use serde_json::{json, Value};

use crate::support::{eventually, Herald, Receiver, ADMIN};

const AUDIT: &str = "/api/v1/portal/audit";
const WAIT: Duration = Duration::from_secs(30);

/// Every record `query` selects, following the cursor `limit` at a time
/// (newest first).
async fn audit(h: &Herald, key: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = h
            .get(
                key,
                &format!("{AUDIT}?limit={limit}&cursor={cursor}&{query}"),
            )
            .await;
        assert_eq!(s, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit, "{page}");
        out.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

fn parse(t: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
}

fn actions(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect()
}

async fn call_ok(h: &Herald, method: &str, key: &str, path: &str, body: Option<Value>) -> Value {
    let (s, b) = h.call(method, key, path, body).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
    b
}

/// The scenario, on `h`.
async fn every_change_is_recorded_with_its_actor(h: &Herald) {
    let key_a = h.tenant("acme").await;
    let other = h.tenant("globex").await;
    let keys = call_ok(h, "GET", &key_a, "/api/v1/portal/api-keys", None).await;
    let key_a_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    let created = call_ok(
        h,
        "POST",
        &key_a,
        "/api/v1/portal/api-keys",
        Some(json!({"name": "b"})),
    )
    .await;
    let key_b = created["api_key"].as_str().unwrap().to_string();
    let key_b_id = created["id"].as_str().unwrap().to_string();
    let a = json!({"kind": "api_key", "id": key_a_id});
    let b = json!({"kind": "api_key", "id": key_b_id});

    let ok = Receiver::start(200).await;
    let sub = h.subscribe(&key_a, &ok.url, &["order.*"]).await;
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let first_secret = sub["secret"].as_str().unwrap().to_string();
    let hook = format!("/api/v1/portal/webhooks/{sub_id}");
    call_ok(
        h,
        "PATCH",
        &key_b,
        &hook,
        Some(json!({"description": "orders"})),
    )
    .await;
    call_ok(h, "POST", &key_b, &format!("{hook}/pause"), None).await;
    call_ok(h, "POST", &key_a, &format!("{hook}/resume"), None).await;
    let rotated = call_ok(
        h,
        "POST",
        &key_a,
        &format!("{hook}/rotate-secret"),
        Some(json!({})),
    )
    .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    call_ok(
        h,
        "PUT",
        &key_b,
        "/api/v1/integrations/event-types/order.created",
        Some(json!({"schema_version": 1, "schema": {"type": "object"}})),
    )
    .await;
    let event = h.emit(&key_a, "order.created", json!({"n": 1})).await;
    let event_id = event["id"].as_str().unwrap().to_string();
    call_ok(
        h,
        "POST",
        &key_a,
        &format!("/api/v1/integrations/events/{event_id}/replay"),
        Some(json!({"subscription_id": sub_id})),
    )
    .await;
    let since = time::OffsetDateTime::now_utc() - Duration::from_secs(600);
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    call_ok(
        h,
        "POST",
        &key_a,
        &format!("{hook}/recover"),
        Some(json!({"since": fmt(since), "until": fmt(time::OffsetDateTime::now_utc())})),
    )
    .await;
    call_ok(
        h,
        "PUT",
        ADMIN,
        "/api/v1/admin/tenants/acme/quotas",
        Some(json!({"max_subscriptions": 50})),
    )
    .await;
    call_ok(
        h,
        "DELETE",
        ADMIN,
        &format!("/api/v1/admin/tenants/acme/api-keys/{key_b_id}"),
        None,
    )
    .await;

    // Refused changes record nothing.
    let missing = "/api/v1/portal/webhooks/sub_0190000000007000a000000000000001";
    for (method, path, body) in [
        (
            "PATCH",
            missing.to_string(),
            Some(json!({"description": "x"})),
        ),
        ("PATCH", hook.clone(), Some(json!({"url": "not a url"}))),
        ("POST", format!("{missing}/pause"), None),
        ("DELETE", missing.to_string(), None),
        (
            "DELETE",
            "/api/v1/portal/api-keys/key_0190000000007000a000000000000001".to_string(),
            None,
        ),
        (
            "PUT",
            "/api/v1/admin/tenants/nobody/quotas".to_string(),
            Some(json!({})),
        ),
    ] {
        let key = if path.contains("/admin/") {
            ADMIN
        } else {
            key_a.as_str()
        };
        let (s, body) = h.call(method, key, &path, body).await;
        assert!((400..500).contains(&s), "{method} {path}: {s} {body}");
    }

    // Herald disables a subscription whose endpoint answers 410.
    let gone = Receiver::start(410).await;
    let gone_sub = h.subscribe(&key_a, &gone.url, &["gone.*"]).await;
    let gone_id = gone_sub["id"].as_str().unwrap().to_string();
    h.emit(&key_a, "gone.x", json!({})).await;
    let disabled = eventually("the auto-disable's record", WAIT, || async {
        let found = audit(h, &key_a, "action=subscription.disabled", 50).await;
        found.into_iter().next()
    })
    .await;
    assert_eq!(disabled["actor"], json!({"kind": "herald"}), "{disabled}");
    assert_eq!(disabled["subscription_id"], gone_id.as_str());
    assert!(
        disabled["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{disabled}"
    );

    call_ok(h, "DELETE", &key_a, &hook, None).await;
    // Another tenant's change.
    h.subscribe(&other, &ok.url, &["order.*"]).await;

    let mut all = audit(h, &key_a, "", 100).await;
    let text = serde_json::to_string(&all).unwrap();
    for secret in [&first_secret, &new_secret, &key_a, &key_b] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret in the audit trail"
        );
    }
    assert!(
        !text.contains("orders"),
        "a changed value in the audit trail"
    );
    all.reverse();
    let admin = json!({"kind": "admin"});
    let expected = [
        ("api_key.created", &admin),
        ("api_key.created", &a),
        ("subscription.created", &a),
        ("subscription.updated", &b),
        ("subscription.paused", &b),
        ("subscription.resumed", &a),
        ("subscription.secret_rotated", &a),
        ("event_type.registered", &b),
        ("replay.requested", &a),
        ("recovery.requested", &a),
        ("tenant.quotas_set", &admin),
        ("api_key.revoked", &admin),
        ("subscription.created", &a),
        ("subscription.disabled", &json!({"kind": "herald"})),
        ("subscription.deleted", &a),
    ];
    assert_eq!(
        all.iter()
            .map(|r| (r["action"].as_str().unwrap(), &r["actor"]))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|(act, who)| (*act, *who))
            .collect::<Vec<_>>(),
        "{all:#?}"
    );
    assert!(all
        .iter()
        .all(|r| r["tenant_id"] == "acme" && r["id"].as_str().unwrap().starts_with("aud_")));
    assert_eq!(all[0]["target"], key_a_id.as_str());
    assert_eq!(all[1]["target"], key_b_id.as_str());
    assert_eq!(all[3]["details"]["fields"], json!(["description"]));
    assert_eq!(all[11]["target"], key_b_id.as_str());
    all.reverse();

    // Paging by 3 gives the same list; filters.
    assert_eq!(audit(h, &key_a, "", 3).await, all);
    assert_eq!(
        actions(&audit(h, &key_a, "action=subscription.paused", 10).await),
        ["subscription.paused"]
    );
    let about_sub = audit(h, &key_a, &format!("subscription_id={sub_id}"), 10).await;
    assert_eq!(about_sub.len(), 8, "{about_sub:#?}");
    assert!(about_sub
        .iter()
        .all(|r| r["subscription_id"] == sub_id.as_str()));
    let middle = &all[8];
    let at = middle["at"].as_str().unwrap();
    let at_time = parse(at);
    let after = audit(h, &key_a, &format!("since={}", at.replace('+', "%2B")), 100).await;
    assert!(after.iter().any(|r| r["id"] == middle["id"]));
    assert!(
        after
            .iter()
            .all(|r| parse(r["at"].as_str().unwrap()) >= at_time),
        "{after:#?}"
    );
    let before = audit(h, &key_a, &format!("until={}", at.replace('+', "%2B")), 100).await;
    assert!(!before.is_empty());
    assert!(
        before
            .iter()
            .all(|r| parse(r["at"].as_str().unwrap()) < at_time),
        "{before:#?}"
    );
    assert_eq!(after.len() + before.len(), all.len());

    // Bad query values: 422 problem+json.
    for query in [
        "action=bogus",
        "since=yesterday",
        "cursor=nope",
        "limit=0",
        "subscription_id=x",
        "since=2030-01-02T00:00:00Z&until=2030-01-01T00:00:00Z",
    ] {
        let (s, p) = h.get(&key_a, &format!("{AUDIT}?{query}")).await;
        assert_eq!(s, 422, "{query}: {p}");
        assert!(
            p["type"]
                .as_str()
                .unwrap()
                .starts_with("https://herald.dev/problems/"),
            "{p}"
        );
    }
    // The scope is admin; each tenant sees only its own.
    let reader = call_ok(
        h,
        "POST",
        &key_a,
        "/api/v1/portal/api-keys",
        Some(json!({"scopes": ["webhooks:read"]})),
    )
    .await;
    let (s, p) = h.get(reader["api_key"].as_str().unwrap(), AUDIT).await;
    assert_eq!(s, 403, "{p}");
    let theirs = audit(h, &other, "", 100).await;
    assert_eq!(
        actions(&theirs),
        ["subscription.created", "api_key.created"]
    );
    assert_eq!(theirs[0]["tenant_id"], "globex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_is_recorded_on_the_embedded_store() {
    let h = Herald::start().await;
    every_change_is_recorded_with_its_actor(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_is_recorded_on_the_cql_store() {
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("audit");
    let h = Herald::start_with(move |c| {
        c.scylla = Some(cql);
        c.secret_keys = Some(KeyRing::parse(crate::cql::TEST_KEY).unwrap());
    })
    .await;
    every_change_is_recorded_with_its_actor(&h).await;
    h.engine.shutdown().await;
}
