//! A dead or hanging endpoint does not slow a healthy one, and a failing
//! endpoint's circuit opens and stops being hammered.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;

use crate::support::{eventually, Herald, Receiver};

/// Accepts connections and never answers; counts them.
async fn hanging_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (format!("http://{addr}/hook"), accepted)
}

/// A port nobody listens on: connections are refused at once.
async fn refusing_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hook")
}

#[tokio::test]
async fn dead_endpoints_open_their_circuit_and_never_hold_up_a_healthy_one() {
    const EVENTS: usize = 20;
    const THRESHOLD: u32 = 3;
    const IN_FLIGHT: usize = 2;
    let herald = Herald::start_with(|c| {
        c.retry_schedule = "1s,1s,1s,1s".parse().unwrap();
        c.delivery.breaker_failure_threshold = THRESHOLD;
        c.delivery.breaker_open_for = Duration::from_secs(600);
        c.delivery.max_in_flight_per_endpoint = IN_FLIGHT;
        // The hanging endpoint's requests stay in flight for the whole test.
        c.delivery.request_timeout = Duration::from_secs(600);
    })
    .await;
    let key = herald.tenant("acme").await;
    let healthy = Receiver::start(200).await;
    let (hanging_url, hanging_accepted) = hanging_endpoint().await;
    let refused_url = refusing_endpoint().await;
    herald.subscribe(&key, &hanging_url, &["*"]).await;
    let refused = herald.subscribe(&key, &refused_url, &["*"]).await;
    herald.subscribe(&key, &healthy.url, &["*"]).await;
    for n in 0..EVENTS {
        herald
            .emit(&key, "work_order.completed", json!({ "n": n }))
            .await;
    }

    // Every healthy delivery arrives while the hanging endpoint still holds
    // its first requests: it never waited behind them.
    eventually(
        "all healthy deliveries",
        Duration::from_secs(60),
        || async { (healthy.received().len() == EVENTS).then_some(()) },
    )
    .await;
    assert!(
        hanging_accepted.load(Ordering::SeqCst) <= IN_FLIGHT,
        "the hanging endpoint got {} connections; its in-flight limit is {IN_FLIGHT}",
        hanging_accepted.load(Ordering::SeqCst)
    );

    // The refusing endpoint's circuit opened: after a few real failures the
    // remaining attempts were refused without being sent.
    let refused_id = refused["id"].as_str().unwrap();
    let logs = eventually(
        "every refused-endpoint delivery attempted",
        Duration::from_secs(60),
        || async {
            let logs = herald
                .logs(&key, &format!("subscription_id={refused_id}"))
                .await;
            let deliveries: std::collections::HashSet<&str> = logs
                .iter()
                .map(|l| l["delivery_id"].as_str().unwrap())
                .collect();
            (deliveries.len() == EVENTS).then_some(logs.clone())
        },
    )
    .await;
    let connect_failures = logs.iter().filter(|l| l["error"] == "connect").count();
    let circuit_open = logs.iter().filter(|l| l["error"] == "circuit_open").count();
    println!("refused endpoint: {connect_failures} connect failures, {circuit_open} refused by the open circuit");
    assert!(
        connect_failures <= THRESHOLD as usize + IN_FLIGHT,
        "{connect_failures} requests reached a dead endpoint; the breaker should have opened after {THRESHOLD}"
    );
    assert!(circuit_open >= EVENTS - (THRESHOLD as usize + IN_FLIGHT));
    assert!(logs
        .iter()
        .all(|l| l["outcome"] == "failed" || l["outcome"] == "dead"));
    // Refusals cost no attempt: a delivery refused by the circuit keeps its attempt number.
    assert!(logs
        .iter()
        .filter(|l| l["error"] == "circuit_open")
        .all(|l| l["next_attempt_at"].is_string() && l["attempt"].as_u64().unwrap() <= 2));
}
