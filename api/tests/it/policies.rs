//! Delivery policies: strict ordering, Retry-After, throttling, 410 Gone,
//! redirects, rate limits, endpoint health and operational events.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use serde_json::{json, Value};

use crate::support::{eventually, Herald, Receiver};

const WAIT: Duration = Duration::from_secs(60);

/// What a scripted receiver answers, in order; after the script, `fallback`.
#[derive(Clone, Debug)]
enum Reply {
    Status(u16),
    WithHeader(u16, &'static str, &'static str),
}

#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Arc<Mutex<Reply>>,
    /// (webhook-id, status answered, when).
    seen: Arc<Mutex<Vec<(String, u16, Instant)>>>,
    fail_ratio: Arc<Mutex<f64>>,
}

impl Scripted {
    async fn start(script: Vec<Reply>, fallback: Reply) -> (String, Self) {
        let state = Scripted {
            script: Arc::new(Mutex::new(script.into())),
            fallback: Arc::new(Mutex::new(fallback)),
            seen: Arc::default(),
            fail_ratio: Arc::new(Mutex::new(0.0)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/hook", post(answer))
            .route("/elsewhere", post(|| async { StatusCode::OK }))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, state)
    }

    fn seen(&self) -> Vec<(String, u16, Instant)> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(State(s): State<Scripted>, headers: HeaderMap, _body: Bytes) -> Response {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut reply = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| s.fallback.lock().unwrap().clone());
    let ratio = *s.fail_ratio.lock().unwrap();
    if ratio > 0.0 && rand::random::<f64>() < ratio {
        reply = Reply::Status(500);
    }
    let (status, header) = match reply {
        Reply::Status(code) => (code, None),
        Reply::WithHeader(code, name, value) => (code, Some((name, value))),
    };
    s.seen.lock().unwrap().push((id, status, Instant::now()));
    let mut response = (StatusCode::from_u16(status).unwrap(), "scripted").into_response();
    if let Some((name, value)) = header {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

fn seconds_between(a: &Value, b: &Value) -> f64 {
    let parse = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    (parse(b) - parse(a)).as_seconds_f64()
}

async fn subscribe_with(herald: &Herald, key: &str, body: Value) -> Value {
    let (status, sub) = herald
        .post(key, "/api/v1/portal/webhooks/subscribe", body)
        .await;
    assert_eq!(status, 201, "{sub}");
    sub
}

#[tokio::test]
async fn strict_ordering_holds_under_random_failures() {
    const EVENTS: usize = 1000;
    let herald = Herald::start_with(|c| {
        c.retry_schedule = ["10ms"; 60].join(",").parse().unwrap();
        // Random failures must not open the circuit in this test.
        c.delivery.breaker_failure_threshold = 10_000;
        c.delivery.breaker_failure_ratio = 1.0;
    })
    .await;
    let key = herald.tenant("acme").await;
    let (url, receiver) = Scripted::start(vec![], Reply::Status(200)).await;
    *receiver.fail_ratio.lock().unwrap() = 0.2;
    subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["inventory.*"], "ordering": "strict" }),
    )
    .await;
    let mut emitted = Vec::new();
    for n in 0..EVENTS {
        emitted.push(
            herald
                .emit(&key, "inventory.moved", json!({ "n": n }))
                .await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let first_successes = eventually(
        "every event delivered",
        Duration::from_secs(300),
        || async {
            let mut seen = HashSet::new();
            let order: Vec<String> = receiver
                .seen()
                .into_iter()
                .filter(|(id, status, _)| *status == 200 && seen.insert(id.clone()))
                .map(|(id, _, _)| id)
                .collect();
            (order.len() == EVENTS).then_some(order)
        },
    )
    .await;
    let failures = receiver.seen().iter().filter(|(_, s, _)| *s != 200).count();
    println!("strict ordering: {EVENTS} events, {failures} failed attempts, first successes in log order");
    assert!(
        failures > 0,
        "the receiver must have failed some attempts for this test to mean anything"
    );
    assert_eq!(
        first_successes, emitted,
        "first successes must follow event-log order"
    );
    // One at a time: no attempt for event n+1 before event n succeeded.
    let seen = receiver.seen();
    let mut done = HashSet::new();
    for (id, status, _) in &seen {
        let index = emitted.iter().position(|e| e == id).unwrap();
        assert!(
            index == 0 || done.contains(&emitted[index - 1]),
            "event {index} was attempted before event {} succeeded",
            index - 1
        );
        if *status == 200 {
            done.insert(id.clone());
        }
    }
}

#[tokio::test]
async fn unordered_subscriptions_keep_full_concurrency_past_a_failing_event() {
    let herald = Herald::start_with(|c| c.retry_schedule = "30s".parse().unwrap()).await;
    let key = herald.tenant("acme").await;
    let (url, receiver) = Scripted::start(vec![Reply::Status(500)], Reply::Status(200)).await;
    subscribe_with(&herald, &key, json!({ "url": url, "event_types": ["a.*"] })).await;
    let first = herald.emit(&key, "a.one", json!({})).await;
    eventually("the first attempt", WAIT, || async {
        (!receiver.seen().is_empty()).then_some(())
    })
    .await;
    herald.emit(&key, "a.two", json!({})).await;
    eventually(
        "the second event delivered while the first waits for its retry",
        WAIT,
        || async {
            (receiver.seen().iter().filter(|(_, s, _)| *s == 200).count() == 1).then_some(())
        },
    )
    .await;
    assert!(receiver
        .seen()
        .iter()
        .all(|(id, s, _)| *s != 200 || id != first["id"].as_str().unwrap()));
}

#[tokio::test]
async fn retry_after_throttling_gone_and_redirects() {
    let herald = Herald::start_with(|c| c.retry_schedule = "1s,1s,1s".parse().unwrap()).await;
    let key = herald.tenant("acme").await;
    let ops = Receiver::start(200).await;
    subscribe_with(
        &herald,
        &key,
        json!({ "url": ops.url, "event_types": ["herald.*"] }),
    )
    .await;

    // 503 with Retry-After: 3 → the next attempt is scheduled 3 s out, not the schedule's 1 s (or 2 s throttled).
    let (url, _r) = Scripted::start(
        vec![Reply::WithHeader(503, "retry-after", "3")],
        Reply::Status(200),
    )
    .await;
    let sub = subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["ra.*"] }),
    )
    .await;
    herald.emit(&key, "ra.x", json!({})).await;
    let logs = eventually("the retried delivery", WAIT, || async {
        let logs = herald
            .logs(
                &key,
                &format!("subscription_id={}", sub["id"].as_str().unwrap()),
            )
            .await;
        (logs.len() == 2).then_some(logs)
    })
    .await;
    let (second, first) = (&logs[0], &logs[1]);
    assert_eq!(first["status_code"], 503);
    let delay = seconds_between(&first["created_at"], &first["next_attempt_at"]);
    assert!(
        (2.9..3.5).contains(&delay),
        "Retry-After: 3 must schedule the retry 3 s later, got {delay}"
    );
    assert_eq!(second["outcome"], "delivered");

    // 429 without Retry-After: throttling doubles the scheduled delay (1 s → 2 s).
    let (url, _r) = Scripted::start(vec![Reply::Status(429)], Reply::Status(200)).await;
    let sub = subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["th.*"] }),
    )
    .await;
    herald.emit(&key, "th.x", json!({})).await;
    let logs = eventually("the throttled delivery", WAIT, || async {
        let logs = herald
            .logs(
                &key,
                &format!("subscription_id={}", sub["id"].as_str().unwrap()),
            )
            .await;
        (logs.len() == 2).then_some(logs)
    })
    .await;
    let delay = seconds_between(&logs[1]["created_at"], &logs[1]["next_attempt_at"]);
    assert!(
        (1.9..2.5).contains(&delay),
        "429 must double the 1 s delay, got {delay}"
    );

    // A redirect is not followed: a failure with its Location recorded.
    let (url, redirect) =
        Scripted::start(vec![], Reply::WithHeader(302, "location", "/elsewhere")).await;
    let sub = subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["rd.*"] }),
    )
    .await;
    herald.emit(&key, "rd.x", json!({})).await;
    let logs = eventually("the redirected attempt", WAIT, || async {
        let logs = herald
            .logs(
                &key,
                &format!("subscription_id={}", sub["id"].as_str().unwrap()),
            )
            .await;
        (!logs.is_empty()).then_some(logs)
    })
    .await;
    assert_eq!(logs[0]["status_code"], 302);
    assert_eq!(logs[0]["location"], "/elsewhere");
    assert_eq!(logs[0]["outcome"], "failed");
    assert_eq!(redirect.seen().len(), 1);

    // 410 Gone disables the subscription at once and tells the tenant.
    let (url, gone) = Scripted::start(vec![], Reply::Status(410)).await;
    let sub = subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["gn.*"] }),
    )
    .await;
    let sub_id = sub["id"].as_str().unwrap().to_string();
    herald.emit(&key, "gn.x", json!({})).await;
    let (_, read) = eventually("the subscription disabled", WAIT, || async {
        let (s, read) = herald
            .get(&key, &format!("/api/v1/portal/webhooks/{sub_id}"))
            .await;
        (read["status"] == "disabled").then_some((s, read))
    })
    .await;
    assert!(read["disabled_reason"].as_str().unwrap().contains("410"));
    let logs = herald
        .logs(&key, &format!("subscription_id={sub_id}"))
        .await;
    assert_eq!(logs[0]["outcome"], "dead");
    herald.emit(&key, "gn.y", json!({})).await;
    let disabled = eventually("the operational event", WAIT, || async {
        ops.received()
            .into_iter()
            .find(|r| r.header("herald-event-type") == "herald.subscription.disabled")
    })
    .await;
    let body: Value = serde_json::from_slice(&disabled.body).unwrap();
    assert_eq!(body["data"]["subscription_id"], sub_id.as_str());
    assert_eq!(
        gone.seen().len(),
        1,
        "nothing more goes to a disabled subscription"
    );
}

#[tokio::test]
async fn rate_limit_is_honoured() {
    const RATE: u32 = 50;
    const EVENTS: usize = 500;
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let (url, receiver) = Scripted::start(vec![], Reply::Status(200)).await;
    subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["rl.*"], "rate_limit": RATE }),
    )
    .await;
    for n in 0..EVENTS {
        herald.emit(&key, "rl.tick", json!({ "n": n })).await;
    }
    let seen = eventually("every delivery", Duration::from_secs(120), || async {
        let seen = receiver.seen();
        (seen.len() == EVENTS).then_some(seen)
    })
    .await;
    let span = seen.last().unwrap().2 - seen[0].2;
    let rate = (EVENTS - 1) as f64 / span.as_secs_f64();
    // The busiest 10 s window.
    let window = Duration::from_secs(10);
    let busiest = seen
        .iter()
        .map(|(_, _, start)| {
            seen.iter()
                .filter(|(_, _, t)| *t >= *start && *t < *start + window)
                .count()
        })
        .max()
        .unwrap();
    println!("rate limit {RATE}/s: {rate:.1} deliveries/s overall, busiest 10 s window {busiest} ({:.1}/s)", busiest as f64 / 10.0);
    assert!(
        busiest as f64 <= f64::from(RATE) * 10.0 * 1.1,
        "{busiest} deliveries in 10 s exceed {RATE}/s by more than 10%"
    );
}

#[tokio::test]
async fn failing_endpoints_are_disabled_and_operational_events_flow() {
    let herald = Herald::start_with(|c| {
        c.retry_schedule = ["200ms"; 100].join(",").parse().unwrap();
        c.delivery.disable_after = Duration::from_secs(2);
        c.delivery.breaker_failure_threshold = 3;
        c.delivery.breaker_open_for = Duration::from_millis(300);
    })
    .await;
    let key = herald.tenant("acme").await;
    let ops = Receiver::start(200).await;
    let everything = Receiver::start(200).await;
    subscribe_with(
        &herald,
        &key,
        json!({ "url": ops.url, "event_types": ["herald.*"] }),
    )
    .await;
    subscribe_with(
        &herald,
        &key,
        json!({ "url": everything.url, "event_types": ["*"] }),
    )
    .await;
    let (url, _failing) = Scripted::start(vec![], Reply::Status(500)).await;
    let sub = subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["job.*"], "timeout_seconds": 5 }),
    )
    .await;
    let sub_id = sub["id"].as_str().unwrap().to_string();
    herald.emit(&key, "job.started", json!({})).await;

    let types = |r: &Receiver| -> Vec<String> {
        r.received()
            .iter()
            .map(|x| x.header("herald-event-type").to_string())
            .collect()
    };
    eventually(
        "circuit opened, then the subscription disabled",
        WAIT,
        || async {
            let t = types(&ops);
            (t.contains(&"herald.circuit.opened".to_string())
                && t.contains(&"herald.subscription.disabled".to_string()))
            .then_some(())
        },
    )
    .await;
    let (_, read) = herald
        .get(&key, &format!("/api/v1/portal/webhooks/{sub_id}"))
        .await;
    assert_eq!(read["status"], "disabled");
    assert!(
        read["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("without a success"),
        "{read}"
    );
    assert!(read["failing_since"].is_string());
    // `*` never receives operational events.
    assert!(
        types(&everything).iter().all(|t| !t.starts_with("herald.")),
        "{:?}",
        types(&everything)
    );

    // Tenants cannot forge operational events.
    let (status, _) = herald
        .post(
            &key,
            "/api/v1/integrations/events",
            json!({ "event_type": "herald.delivery.dead", "payload": {} }),
        )
        .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn dead_deliveries_and_timeouts_are_reported() {
    let herald = Herald::start_with(|c| c.retry_schedule = "".parse().unwrap()).await;
    let key = herald.tenant("acme").await;
    let ops = Receiver::start(200).await;
    subscribe_with(
        &herald,
        &key,
        json!({ "url": ops.url, "event_types": ["herald.delivery.dead"] }),
    )
    .await;
    // An endpoint that never answers, with a 1 s per-subscription timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let sub = subscribe_with(
        &herald,
        &key,
        json!({ "url": url, "event_types": ["slow.*"], "timeout_seconds": 1 }),
    )
    .await;
    let event = herald.emit(&key, "slow.thing", json!({})).await;
    let dead = eventually("the dead-delivery event", WAIT, || async {
        ops.received()
            .into_iter()
            .find(|r| r.header("herald-event-type") == "herald.delivery.dead")
    })
    .await;
    let body: Value = serde_json::from_slice(&dead.body).unwrap();
    assert_eq!(body["data"]["event_id"], event["id"]);
    assert_eq!(body["data"]["subscription_id"], sub["id"]);
    assert_eq!(body["data"]["last_error"], "timeout");
    let logs = herald
        .logs(
            &key,
            &format!("subscription_id={}", sub["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(logs[0]["error"], "timeout");
    assert!(
        logs[0]["latency_ms"].as_u64().unwrap() < 5000,
        "the 1 s subscription timeout applies, not the 15 s default"
    );

    // Limits outside their bounds are refused.
    for bad in [
        json!({ "timeout_seconds": 0 }),
        json!({ "timeout_seconds": 61 }),
        json!({ "max_in_flight": 0 }),
        json!({ "rate_limit": 100000 }),
        json!({ "ordering": "sometimes" }),
    ] {
        let mut body = json!({ "url": "https://example.com/x", "event_types": ["a.b"] });
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (status, problem) = herald
            .post(&key, "/api/v1/portal/webhooks/subscribe", body)
            .await;
        assert_eq!(status, 422, "{problem}");
    }
}
