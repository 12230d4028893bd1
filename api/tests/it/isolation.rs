//! The isolation matrix: tenant B's key against every resource of tenant A
//! with every method answers 404 (401 for admin calls), and nothing of A
//! changes.

use serde_json::{json, Value};

use crate::support::{eventually, Herald, Receiver};

#[tokio::test]
async fn tenant_b_cannot_touch_any_resource_of_tenant_a() {
    let h = Herald::start().await;
    let a = h.tenant("tenant-a").await;
    let b = h.tenant("tenant-b").await;
    let rx = Receiver::start(200).await;
    let sub = h.subscribe(&a, &rx.url, &["order.*"]).await;
    let sub = sub["id"].as_str().unwrap().to_string();
    let b_sub = h.subscribe(&b, &rx.url, &["order.*"]).await;
    let b_sub = b_sub["id"].as_str().unwrap().to_string();
    let evt = h.emit(&a, "order.created", json!({"n": 1})).await;
    let evt = evt["id"].as_str().unwrap().to_string();
    let b_evt = h.emit(&b, "order.created", json!({"n": 2})).await;
    let b_evt = b_evt["id"].as_str().unwrap().to_string();
    h.call(
        "PUT",
        &a,
        "/api/v1/integrations/event-types/order.created",
        Some(json!({"schema_version": 1, "schema": {"type": "object"}})),
    )
    .await;
    let (_, keys) = h.get(&a, "/api/v1/portal/api-keys").await;
    let a_key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    eventually(
        "A's delivery is logged",
        std::time::Duration::from_secs(10),
        || async { (!h.logs(&a, "").await.is_empty()).then_some(()) },
    )
    .await;
    let (s, job) = h
        .post(
            &a,
            &format!("/api/v1/portal/webhooks/{sub}/recover"),
            json!({"since": "2020-01-01T00:00:00Z", "until": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 202, "{job}");
    let job = job["id"].as_str().unwrap().to_string();

    let paths = [
        format!("/api/v1/portal/webhooks/{sub}"),
        format!("/api/v1/integrations/events/{evt}"),
        "/api/v1/integrations/event-types/order.created".to_string(),
        "/api/v1/portal/api-keys".to_string(),
        "/api/v1/portal/webhooks".to_string(),
        format!("/api/v1/portal/recoveries/{job}"),
    ];
    let before = snapshot(&h, &a, &paths).await;

    let body = Some(json!({}));
    let recover = Some(json!({"since": "2020-01-01T00:00:00Z", "until": "2099-01-01T00:00:00Z"}));
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/api/v1/portal/webhooks/{sub}"), None),
        (
            "PATCH",
            format!("/api/v1/portal/webhooks/{sub}"),
            Some(json!({"description": "pwned"})),
        ),
        ("DELETE", format!("/api/v1/portal/webhooks/{sub}"), None),
        (
            "POST",
            format!("/api/v1/portal/webhooks/{sub}/rotate-secret"),
            body.clone(),
        ),
        (
            "POST",
            format!("/api/v1/portal/webhooks/{sub}/pause"),
            body.clone(),
        ),
        (
            "POST",
            format!("/api/v1/portal/webhooks/{sub}/resume"),
            body.clone(),
        ),
        (
            "POST",
            format!("/api/v1/portal/webhooks/{sub}/recover"),
            recover,
        ),
        ("GET", format!("/api/v1/portal/recoveries/{job}"), None),
        ("GET", format!("/api/v1/integrations/events/{evt}"), None),
        (
            "POST",
            format!("/api/v1/integrations/events/{evt}/replay"),
            body.clone(),
        ),
        (
            "POST",
            format!("/api/v1/integrations/events/{evt}/replay"),
            Some(json!({"subscription_id": b_sub})),
        ),
        (
            "POST",
            format!("/api/v1/integrations/events/{b_evt}/replay"),
            Some(json!({"subscription_id": sub})),
        ),
        (
            "GET",
            "/api/v1/integrations/event-types/order.created".into(),
            None,
        ),
        (
            "DELETE",
            format!("/api/v1/portal/api-keys/{a_key_id}"),
            None,
        ),
    ];
    for (method, path, body) in cases {
        let (s, problem) = h.call(method, &b, &path, body).await;
        assert_eq!(s, 404, "{method} {path} with B's key: {problem}");
        assert_eq!(problem["type"], "https://herald.dev/problems/not-found");
    }
    let admin_cases: Vec<(&str, String)> = vec![
        ("POST", "/api/v1/admin/tenants".into()),
        ("POST", "/api/v1/admin/tenants/tenant-a/api-keys".into()),
        ("GET", "/api/v1/admin/tenants/tenant-a/api-keys".into()),
        (
            "DELETE",
            format!("/api/v1/admin/tenants/tenant-a/api-keys/{a_key_id}"),
        ),
    ];
    for (method, path) in admin_cases {
        let (s, _) = h.call(method, &b, &path, Some(json!({"id": "x"}))).await;
        assert_eq!(s, 401, "{method} {path} with a tenant key");
    }
    // Lists and filters never show A's data to B.
    for path in [
        "/api/v1/portal/webhooks".to_string(),
        "/api/v1/integrations/events".to_string(),
        format!("/api/v1/integrations/webhooks?subscription_id={sub}"),
        format!("/api/v1/integrations/webhooks?event_id={evt}"),
        "/api/v1/integrations/event-types".to_string(),
        "/api/v1/portal/api-keys".to_string(),
    ] {
        let (s, page) = h.get(&b, &path).await;
        assert_eq!(s, 200, "{path}");
        let text = page.to_string();
        assert!(
            !text.contains(&sub) && !text.contains(&evt) && !text.contains("tenant-a"),
            "{path} leaks A's data: {text}"
        );
    }
    assert_eq!(
        snapshot(&h, &a, &paths).await,
        before,
        "nothing of A changed"
    );
}

async fn snapshot(h: &Herald, key: &str, paths: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for path in paths {
        let (s, mut v) = h.get(key, path).await;
        assert_eq!(s, 200, "{path}: {v}");
        // Progress counters and delivery lists move on their own.
        if path.contains("recoveries") || path.contains("events") {
            for k in ["done", "updated_at", "deliveries", "status", "scheduled"] {
                v.as_object_mut().unwrap().remove(k);
            }
        }
        out.push(v);
    }
    out
}
