//! Bad input gets a clear 4xx problem+json and changes nothing; the SSRF
//! guard refuses private targets at subscribe time and at delivery time.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, split, Herald, Receiver, ADMIN};

async fn assert_problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let (_, body) = split(r).await;
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://herald.dev/problems/"),
        "{body}"
    );
    assert_eq!(body["status"], status);
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

#[tokio::test]
async fn bad_requests_are_refused_clearly_and_store_nothing() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let http = &herald.http;
    let events = herald.url("/api/v1/integrations/events");

    // Authentication.
    assert_problem(http.get(&events).send().await.unwrap(), 401).await;
    assert_problem(
        http.get(&events)
            .bearer_auth("hk_wrong")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let r = http
        .post(herald.url("/api/v1/admin/tenants"))
        .bearer_auth(&key)
        .json(&json!({ "id": "x" }))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;
    let r = http
        .post(herald.url("/api/v1/admin/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({ "id": "Bad Id!" }))
        .send()
        .await
        .unwrap();
    assert_eq!(assert_problem(r, 422).await["field"], "id");
    let r = http
        .post(herald.url("/api/v1/admin/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({ "id": "acme" }))
        .send()
        .await
        .unwrap();
    assert_problem(r, 409).await;

    // Bodies.
    let r = http
        .post(&events)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"event_type\": ")
        .send()
        .await
        .unwrap();
    assert_problem(r, 400).await;
    let r = http
        .post(&events)
        .bearer_auth(&key)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(r, 415).await;
    let cases = [
        (json!({ "event_type": 5, "payload": {} }), None),
        (json!({ "payload": {} }), None),
        (
            json!({ "event_type": "a.b", "payload": {}, "surprise": 1 }),
            None,
        ),
        (
            json!({ "event_type": "a.b", "payload": [1, 2] }),
            Some("payload"),
        ),
        (
            json!({ "event_type": "a b", "payload": {} }),
            Some("event_type"),
        ),
        (
            json!({ "event_type": "a.*", "payload": {} }),
            Some("event_type"),
        ),
        (
            json!({ "event_type": "a.b", "payload": {}, "schema_version": 0 }),
            Some("schema_version"),
        ),
        (
            json!({ "event_type": "a.b", "payload": {}, "dedupe_key": "" }),
            Some("dedupe_key"),
        ),
        (
            json!({ "event_type": "a.b", "payload": { "big": "x".repeat(300 * 1024) } }),
            Some("payload"),
        ),
    ];
    let post = |path: &str, body: &Value| http.post(path).bearer_auth(&key).json(body).send();
    for (body, field) in cases {
        let r = post(&events, &body).await.unwrap();
        let problem = assert_problem(r, 422).await;
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{problem}");
        }
    }
    // A payload nested past the limit (100 levels) is refused whole: a tree
    // of it could not be parsed to check a schema.
    let deep: Value =
        serde_json::from_str(&format!("{}{}", "[".repeat(100), "]".repeat(100))).unwrap();
    for (path, body) in [
        (
            &events,
            json!({ "event_type": "a.b", "payload": { "a": deep } }),
        ),
        (
            &herald.url("/api/v1/integrations/events/batch"),
            json!({ "events": [{ "event_type": "a.b", "payload": { "a": deep } }] }),
        ),
    ] {
        let r = post(path, &body).await.unwrap();
        let problem = assert_problem(r, 422).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("payload nested 101 levels deep; the limit is 100"),
            "{problem}"
        );
    }
    let huge = json!({ "event_type": "a.b", "payload": { "big": "x".repeat(2 * 1024 * 1024) } });
    assert_problem(
        http.post(&events)
            .bearer_auth(&key)
            .json(&huge)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;

    // Queries and ids.
    assert_problem(
        http.get(format!("{events}?limit=0"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_problem(
        http.get(format!("{events}?limit=abc"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        http.get(format!("{events}?cursor=nonsense"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    let logs = herald.url("/api/v1/integrations/webhooks?status=maybe");
    assert_problem(http.get(logs).bearer_auth(&key).send().await.unwrap(), 422).await;
    assert_problem(
        http.get(format!("{events}/evt_unknown"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let replay = format!("{events}/evt_0000/replay");
    assert_problem(
        http.post(replay)
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        http.get(herald.url("/api/v1/nope")).send().await.unwrap(),
        404,
    )
    .await;

    // Subscriptions.
    let subscribe = herald.url("/api/v1/portal/webhooks/subscribe");
    let bad_subs = [
        json!({ "url": "not a url", "event_types": ["a.b"] }),
        json!({ "url": "ftp://example.com/x", "event_types": ["a.b"] }),
        json!({ "url": "https://user:pw@example.com/x", "event_types": ["a.b"] }),
        json!({ "url": "https://example.com/x", "event_types": [] }),
        json!({ "url": "https://example.com/x", "event_types": ["a b"] }),
        json!({ "url": "https://example.com/x", "event_types": ["a.b"], "secret": "whsec_short" }),
        json!({ "url": "https://example.com/x", "event_types": ["a.b"], "headers": { "webhook-id": "x" } }),
        json!({ "url": "https://example.com/x", "event_types": ["a.b"], "rate_limit": 0 }),
    ];
    for body in bad_subs {
        let r = http
            .post(&subscribe)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(r, 422).await;
    }
    let rotate = herald.url("/api/v1/portal/webhooks/sub_missing/rotate-secret");
    assert_problem(
        http.post(rotate)
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    // Nothing was stored.
    let (_, list) = herald.get(&key, "/api/v1/integrations/events").await;
    assert_eq!(list["data"], json!([]));
    assert_eq!(herald.engine.subscription_count(), 0);
}

#[tokio::test]
async fn private_targets_are_refused_without_an_allow_list() {
    let herald = Herald::start_with(|c| c.allow_targets.clear()).await;
    let key = herald.tenant("acme").await;
    let own_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut targets = vec![
        "http://127.0.0.1:9/hook".to_string(),
        "http://10.1.2.3/hook".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://[::1]/hook".into(),
        "http://[::ffff:127.0.0.1]/hook".into(),
        "http://[::ffff:a9fe:a9fe]/hook".into(),
        "http://2130706433/hook".into(),
        "http://0177.0.0.1/hook".into(),
        "http://0x7f.1/hook".into(),
        "http://localhost/hook".into(),
    ];
    if !own_name.trim().is_empty() {
        // The machine's own name resolves to loopback here: refused after DNS resolution.
        targets.push(format!("http://{}:9/hook", own_name.trim()));
    }
    for url in targets {
        let (status, body) = herald
            .post(
                &key,
                "/api/v1/portal/webhooks/subscribe",
                json!({ "url": url, "event_types": ["*"] }),
            )
            .await;
        assert_eq!(status, 422, "{url} must be refused: {body}");
        assert_eq!(body["field"], "url");
    }
    assert_eq!(herald.engine.subscription_count(), 0);
}

#[tokio::test]
async fn delivery_time_guard_blocks_targets_no_longer_allowed() {
    // A subscription made while loopback was allowed...
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(200).await;
    let (key, sub_id) = {
        let engine = herald_engine::Engine::start(crate::support::test_config(dir.path()))
            .await
            .unwrap();
        let key = engine.create_tenant("acme").await.unwrap();
        let sub = engine
            .subscribe(
                "acme",
                herald_engine::NewSubscription {
                    url: receiver.url.clone(),
                    event_types: vec!["*".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        engine.shutdown().await;
        (key, sub.id)
    };
    // ...is refused at delivery time once loopback is no longer allowed.
    let mut config = crate::support::test_config(dir.path());
    config.allow_targets.clear();
    let engine = herald_engine::Engine::start(config).await.unwrap();
    assert_eq!(
        engine
            .authenticate(&key)
            .await
            .unwrap()
            .map(|g| g.tenant_id)
            .as_deref(),
        Some("acme")
    );
    engine
        .emit(
            "acme",
            herald_engine::NewEvent {
                event_type: "a.b".into(),
                payload: json!({}).into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let filter = herald_engine::store::LogFilter {
        subscription_id: Some(sub_id),
        ..Default::default()
    };
    let page = eventually("a blocked attempt", Duration::from_secs(30), || async {
        let page = engine
            .list_delivery_logs("acme", filter.clone(), 10)
            .await
            .unwrap();
        (!page.data.is_empty()).then_some(page)
    })
    .await;
    assert_eq!(
        page.data[0].error,
        Some(herald_engine::model::ErrorClass::SsrfBlocked)
    );
    assert_eq!(receiver.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    engine.shutdown().await;
}
