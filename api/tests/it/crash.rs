//! kill -9 of the server while deliveries fail, then restarts on the same
//! data dir: every acknowledged event is delivered; duplicates are counted.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde_json::{json, Value};
use standardwebhooks::Webhook;
use tokio::sync::Mutex;

use crate::support::{eventually, HeraldProcess, Receiver, ADMIN};

async fn start_server(dir: &std::path::Path) -> HeraldProcess {
    let retries = ["1s"; 30].join(",");
    let args = ["--retry-schedule", &retries, "--breaker-open-for", "1s"];
    HeraldProcess::spawn(dir, &dir.with_extension("log"), &args, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Emits `n` events from 8 concurrent clients; returns the ids acknowledged
/// with 202 before `stop` (a kill) cut the rest off.
async fn emit_many(base: String, key: String, n: usize, acked: Arc<Mutex<HashSet<String>>>) {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (http, base, key, acked) = (
            http.clone(),
            base.to_string(),
            key.to_string(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in (worker..n).step_by(8) {
                let r = loop {
                    let r = http
                        .post(format!("{base}/api/v1/integrations/events"))
                        .bearer_auth(&key)
                        .json(
                            &json!({ "event_type": "work_order.completed", "payload": { "i": i } }),
                        )
                        .send()
                        .await;
                    match r {
                        // Past the backlog's bound: sent again.
                        Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        r => break r,
                    }
                };
                match r {
                    Ok(r) if r.status() == 202 => {
                        let body: Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .await
                            .insert(body["id"].as_str().unwrap().to_string());
                    }
                    // The server was killed under us: this emit was never acknowledged.
                    _ => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_event() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let receiver = Receiver::start(500).await;
    let http = reqwest::Client::new();

    let server = start_server(&dir).await;
    let r = http
        .post(format!("{}/api/v1/admin/tenants", server.base))
        .bearer_auth(ADMIN)
        .json(&json!({ "id": "acme" }))
        .send()
        .await
        .unwrap();
    let key = r.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{}/api/v1/portal/webhooks/subscribe", server.base))
        .bearer_auth(&key)
        .json(&json!({ "url": receiver.url, "event_types": ["work_order.*"] }))
        .send()
        .await
        .unwrap();
    let secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();

    // Round 1: the receiver fails every delivery; kill -9 while emits and retries are in flight.
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let emitting = tokio::spawn(emit_many(
        server.base.clone(),
        key.clone(),
        400,
        acked.clone(),
    ));
    let hits = receiver.hits.clone();
    eventually(
        "failing deliveries and 100 acknowledged emits",
        Duration::from_secs(60),
        || async {
            let failing = hits.load(std::sync::atomic::Ordering::SeqCst) >= 5;
            (failing && acked.lock().await.len() >= 100).then_some(())
        },
    )
    .await;
    server.kill9().await;
    emitting.await.unwrap();
    let round1 = acked.lock().await.len();
    assert!(round1 > 0);

    // Round 2: restart; the receiver recovers; kill -9 again in the middle of delivering.
    let server = start_server(&dir).await;
    receiver.set_status(200);
    let emitting = tokio::spawn(emit_many(
        server.base.clone(),
        key.clone(),
        300,
        acked.clone(),
    ));
    eventually(
        "deliveries and emits after the restart",
        Duration::from_secs(60),
        || async {
            (receiver.received().len() >= 100 && acked.lock().await.len() >= round1 + 100)
                .then_some(())
        },
    )
    .await;
    server.kill9().await;
    emitting.await.unwrap();

    // Round 3: restart and let everything drain.
    let server = start_server(&dir).await;
    let acked: HashSet<String> = acked.lock().await.clone();
    eventually(
        "every acknowledged event delivered",
        Duration::from_secs(120),
        || async {
            let got: HashSet<String> = receiver
                .received()
                .iter()
                .map(|r| r.header("webhook-id").to_string())
                .collect();
            acked.is_subset(&got).then_some(())
        },
    )
    .await;

    let received = receiver.received();
    let mut per_event: HashMap<String, usize> = HashMap::new();
    let webhook = Webhook::new(&secret).unwrap();
    for r in &received {
        assert!(
            r.signed_by(std::slice::from_ref(&webhook)).is_ok(),
            "every delivery is signed"
        );
        *per_event
            .entry(r.header("webhook-id").to_string())
            .or_default() += 1;
    }
    let duplicates: usize = per_event.values().map(|n| n - 1).sum();
    let unacknowledged = per_event.keys().filter(|id| !acked.contains(*id)).count();
    println!(
        "kill -9 report: {} acknowledged, {} delivered at least once, 0 lost, {} duplicate deliveries, \
         {} delivered events whose acknowledgement the kill cut off",
        acked.len(),
        per_event.len(),
        duplicates,
        unacknowledged
    );
    assert!(
        acked.iter().all(|id| per_event.contains_key(id)),
        "an acknowledged event was lost"
    );
    // At-least-once: duplicates come only from attempts cut off by a kill.
    assert!(
        duplicates <= acked.len(),
        "{duplicates} duplicates for {} events",
        acked.len()
    );
    server.kill9().await;
}
