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

    // The refusing endpoint's circuit opened after a few real failures: the
    // rest were not sent (refused and logged, or parked by fan-out unlogged
    // once the circuit was known open).
    let refused_id = refused["id"].as_str().unwrap();
    let logs = eventually(
        "the refused endpoint's circuit open",
        Duration::from_secs(60),
        || async {
            let metrics = herald
                .http
                .get(herald.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let open = metrics
                .lines()
                .any(|l| l == "herald_circuit_breakers{state=\"open\"} 1");
            let logs = herald
                .logs(&key, &format!("subscription_id={refused_id}"))
                .await;
            let failures = logs.iter().filter(|l| l["error"] == "connect").count();
            (open && failures >= THRESHOLD as usize).then_some(logs)
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
    assert!(logs
        .iter()
        .all(|l| l["outcome"] == "failed" || l["outcome"] == "dead"));
    // Refusals cost no attempt: a delivery refused by the circuit keeps its attempt number.
    assert!(logs
        .iter()
        .filter(|l| l["error"] == "circuit_open")
        .all(|l| l["next_attempt_at"].is_string() && l["attempt"].as_u64().unwrap() <= 2));
}

/// A dead endpoint's backlog waits parked while its circuit is open: each
/// delivery is refused (and logged) about once, not again at every end of
/// the open period; events emitted while it is open are parked by fan-out
/// without being tried or refused at all (a healthy endpoint's copy of them
/// is the barrier); and every one of them goes as soon as a probe closes
/// the circuit — long before the parked deliveries' re-check would bring
/// them back.
/// Far below the parked deliveries' re-check (5 minutes).
const WAIT: Duration = Duration::from_secs(60);

async fn a_dead_endpoints_backlog_waits_parked_until_the_circuit_closes(
    tune: impl FnOnce(&mut herald_engine::config::EngineConfig),
) {
    const EVENTS: usize = 40;
    const LATE: usize = 30;
    const THRESHOLD: u32 = 3;
    const PROBES: usize = 6;
    let herald = Herald::start_with(|c| {
        c.retry_schedule = ["1s"; 30].join(",").parse().unwrap();
        c.delivery.breaker_failure_threshold = THRESHOLD;
        c.delivery.breaker_open_for = Duration::from_millis(500);
        c.delivery.breaker_max_open_for = Duration::from_millis(500);
        c.delivery.max_in_flight_per_endpoint = 1;
        tune(c);
    })
    .await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(500).await;
    let healthy = Receiver::start(200).await;
    let sub = herald.subscribe(&key, &receiver.url, &["*"]).await;
    herald.subscribe(&key, &healthy.url, &["*"]).await;
    let mut emitted = std::collections::HashSet::new();
    for n in 0..EVENTS {
        let event = herald
            .emit(&key, "work_order.completed", json!({ "n": n }))
            .await;
        emitted.insert(event["id"].as_str().unwrap().to_string());
    }
    // The circuit opened and has let several probes through since: each
    // open period ended at least PROBES times.
    eventually(
        "probes of the open circuit",
        Duration::from_secs(60),
        || async {
            (receiver.hits.load(Ordering::SeqCst) >= THRESHOLD as usize + PROBES).then_some(())
        },
    )
    .await;
    let sub_id = sub["id"].as_str().unwrap();
    let logs = herald
        .logs(&key, &format!("subscription_id={sub_id}"))
        .await;
    let sent = receiver.hits.load(Ordering::SeqCst);
    let refusals = logs.iter().filter(|l| l["error"] == "circuit_open").count();
    println!("{sent} requests sent, {refusals} refusals logged for {EVENTS} events");
    assert!(refusals > 0, "the circuit opened and refused deliveries");
    // Refused again at every end of the open period, they would number about
    // EVENTS per probe. Parked, each is refused once, plus about one for each
    // probe (a delivery refused while another one probes).
    assert!(
        refusals <= EVENTS + sent,
        "{refusals} refusals for {EVENTS} deliveries over {sent} requests: the backlog came back while the circuit was open"
    );

    // Events emitted while the circuit is open: parked by fan-out, neither
    // sent nor refused. The healthy endpoint's copies say fan-out is done.
    for n in 0..LATE {
        let event = herald
            .emit(&key, "work_order.completed", json!({ "late": n }))
            .await;
        emitted.insert(event["id"].as_str().unwrap().to_string());
    }
    eventually("the healthy endpoint has every event", WAIT, || async {
        (healthy.received().len() == EVENTS + LATE).then_some(())
    })
    .await;
    let logs = herald
        .logs(&key, &format!("subscription_id={sub_id}"))
        .await;
    let sent_after = receiver.hits.load(Ordering::SeqCst);
    let refusals_after = logs.iter().filter(|l| l["error"] == "circuit_open").count();
    println!(
        "after {LATE} more events: {sent_after} requests sent, {refusals_after} refusals logged"
    );
    assert!(
        refusals_after - refusals <= (sent_after - sent) + 2,
        "{} more refusals over {} more requests: the events emitted while the circuit was open were tried",
        refusals_after - refusals,
        sent_after - sent
    );

    receiver.set_status(200);
    let got = eventually(
        "every event delivered once the circuit closed",
        WAIT,
        || async {
            let got: Vec<String> = receiver
                .received()
                .iter()
                .map(|r| r.header("webhook-id").to_string())
                .collect();
            let ids: std::collections::HashSet<String> = got.iter().cloned().collect();
            (ids == emitted).then_some(got)
        },
    )
    .await;
    assert_eq!(got.len(), EVENTS + LATE, "each event delivered once");
}

#[tokio::test]
async fn a_dead_endpoints_backlog_waits_parked_in_the_embedded_store() {
    a_dead_endpoints_backlog_waits_parked_until_the_circuit_closes(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_a_dead_endpoints_backlog_waits_parked() {
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("parked_breaker");
    a_dead_endpoints_backlog_waits_parked_until_the_circuit_closes(move |c| {
        c.scylla = Some(cql);
        c.secret_keys =
            Some(herald_engine::encryption::KeyRing::parse(crate::cql::TEST_KEY).unwrap());
    })
    .await;
}
