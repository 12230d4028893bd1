//! Errors and limits: problem+json everywhere, body limits, rate limits,
//! readiness and the OpenAPI document.

use serde_json::{json, Value};

use crate::support::Herald;

fn is_problem(r: &reqwest::Response) -> bool {
    r.headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json")
}

#[tokio::test]
async fn router_errors_are_problem_json_with_stable_types() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let cases = [
        ("GET", "/nope", 404, "not-found"),
        ("GET", "/api/v1/nope", 404, "not-found"),
        (
            "DELETE",
            "/api/v1/integrations/events",
            405,
            "method-not-allowed",
        ),
        (
            "PUT",
            "/api/v1/portal/webhooks/subscribe",
            405,
            "method-not-allowed",
        ),
        (
            "GET",
            "/api/v1/portal/webhooks/x/pause",
            405,
            "method-not-allowed",
        ),
    ];
    for (method, path, status, slug) in cases {
        let r = h
            .http
            .request(method.parse().unwrap(), h.url(path))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert!(is_problem(&r), "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], format!("https://herald.dev/problems/{slug}"));
        assert_eq!(body["status"], status);
    }
    // 413 with a clear message, on JSON bodies and optional raw bodies alike.
    let big = "x".repeat(herald_api::MAX_BODY_BYTES + 10);
    for path in [
        "/api/v1/integrations/events".to_string(),
        "/api/v1/portal/api-keys".to_string(),
        "/api/v1/integrations/events/evt_00000000000000000000000000000000/replay".to_string(),
    ] {
        let r = h
            .http
            .post(h.url(&path))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(format!("{{\"x\":\"{big}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{path}");
        assert!(is_problem(&r));
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["type"],
            "https://herald.dev/problems/payload-too-large"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("1048576"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn tenants_are_rate_limited_with_retry_after() {
    let h = Herald::start_in(
        tempfile::tempdir().unwrap(),
        |_| {},
        |s| s.with_rate_limit(5),
    )
    .await;
    let a = h.tenant("acme").await;
    let b = h.tenant("globex").await;
    let mut limited = None;
    for _ in 0..50 {
        let r = h
            .http
            .get(h.url("/api/v1/integrations/events"))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("a burst past the limit is refused");
    assert!(is_problem(&r));
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "https://herald.dev/problems/rate-limited");
    // Another tenant has its own budget.
    let (s, _) = h.get(&b, "/api/v1/integrations/events").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn readyz_and_the_openapi_document() {
    let h = Herald::start().await;
    let (s, body) = h.get("", "/readyz").await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ok")));
    let (s, doc) = h.get("", "/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/admin/tenants", &["post"][..]),
        ("/api/v1/admin/audit", &["get"]),
        ("/api/v1/admin/tenants/{tenant}", &["delete"]),
        ("/api/v1/admin/tenants/{tenant}/export", &["get"]),
        ("/api/v1/admin/tenants/{tenant}/api-keys", &["post", "get"]),
        (
            "/api/v1/admin/tenants/{tenant}/api-keys/{key_id}",
            &["delete"],
        ),
        ("/api/v1/portal/api-keys", &["post", "get"]),
        ("/api/v1/portal/api-keys/{key_id}", &["delete"]),
        ("/api/v1/portal/audit", &["get"]),
        ("/api/v1/portal/webhooks", &["get"]),
        ("/api/v1/portal/webhooks/subscribe", &["post"]),
        ("/api/v1/portal/webhooks/{id}", &["get", "patch", "delete"]),
        ("/api/v1/portal/webhooks/{id}/rotate-secret", &["post"]),
        ("/api/v1/portal/filters/test", &["post"]),
        ("/api/v1/portal/webhooks/{id}/jwks", &["get"]),
        ("/api/v1/portal/jwks", &["get"]),
        ("/api/v1/portal/webhooks/{id}/pause", &["post"]),
        ("/api/v1/portal/webhooks/{id}/resume", &["post"]),
        ("/api/v1/portal/webhooks/{id}/recover", &["post"]),
        ("/api/v1/portal/recoveries/{job_id}", &["get"]),
        ("/api/v1/admin/tenants/{tenant}/quotas", &["get", "put"]),
        ("/api/v1/integrations/events", &["post", "get"]),
        ("/api/v1/integrations/events/batch", &["post"]),
        ("/api/v1/integrations/events/{id}", &["get"]),
        ("/api/v1/integrations/events/{id}/replay", &["post"]),
        ("/api/v1/integrations/webhooks", &["get"]),
        ("/api/v1/integrations/event-types", &["get"]),
        (
            "/api/v1/integrations/event-types/{event_type}",
            &["put", "get"],
        ),
        ("/api/v1/webhooks/stream", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
    ] {
        for m in methods {
            let op = &paths[path][*m];
            assert!(op.is_object(), "{m} {path} is documented");
            if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
                for code in ["400", "401", "404", "422", "429"] {
                    let r = &op["responses"][code];
                    assert!(
                        r["content"]["application/problem+json"].is_object(),
                        "{m} {path} documents {code} as problem+json"
                    );
                }
            }
        }
    }
    assert_eq!(
        paths.len(),
        33,
        "no undocumented extras: {:?}",
        paths.keys()
    );
    let _ = json!({});
}
