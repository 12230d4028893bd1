//! kill -9 of a `herald` process on the CQL store while deliveries are
//! failing and leased, then a restart: the dead process's claims are not
//! released by anybody, they fall due when their lease ends, and every
//! acknowledged event arrives at least once.

use std::{collections::HashSet, time::Duration};

use serde_json::{json, Value};

use crate::support::{eventually, HeraldProcess, Receiver, ADMIN};

async fn start(dir: &std::path::Path, keyspace: &str, nodes: &str) -> HeraldProcess {
    let retries = ["1s"; 30].join(",");
    let args = [
        "--breaker-open-for",
        "1s",
        "--retry-schedule",
        &retries,
        // Lease = 4 x the request timeout + 30 s.
        "--request-timeout",
        "1s",
        "--scylla-nodes",
        nodes,
        "--scylla-keyspace",
        keyspace,
    ];
    let env = [("HERALD_SECRET_ENCRYPTION_KEY", crate::cql::TEST_KEY)];
    HeraldProcess::spawn(dir, &dir.with_extension("log"), &args, &env)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_kill_9_leases_expire_and_every_event_arrives() {
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("crash");
    let nodes = cql.nodes.join(",");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let receiver = Receiver::start(500).await;
    let http = reqwest::Client::new();
    let herald = start(&dir, &cql.keyspace, &nodes).await;
    let base = herald.base.clone();
    let r = http
        .post(format!("{base}/api/v1/admin/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({ "id": "acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = r.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{base}/api/v1/portal/webhooks/subscribe"))
        .bearer_auth(&key)
        .json(&json!({ "url": receiver.url, "event_types": ["work_order.*"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut acked = HashSet::new();
    for i in 0..150 {
        let r = http
            .post(format!("{base}/api/v1/integrations/events"))
            .bearer_auth(&key)
            .json(&json!({ "event_type": "work_order.completed", "payload": { "i": i } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        acked.insert(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let hits = receiver.hits.clone();
    // The circuit opens after a few failures: from then on the claims are
    // leased and retried behind it.
    eventually(
        "failing deliveries under way",
        Duration::from_secs(60),
        || async { (hits.load(std::sync::atomic::Ordering::SeqCst) >= 5).then_some(()) },
    )
    .await;
    herald.kill9().await; // claims held

    receiver.set_status(200);
    let _herald = start(&dir, &cql.keyspace, &nodes).await;
    eventually(
        "every acknowledged event delivered",
        Duration::from_secs(150),
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
}

/// Restart Cassandra while clients emit to a `herald` on the CQL store:
/// an emit is durable in the local log first, so it may be acknowledged
/// while the store is away; one that needs the store then (an API key or a
/// quota not cached) is refused with 503 + Retry-After, never half-accepted;
/// and every event acknowledged is delivered once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_restart_under_load_loses_no_acknowledged_event() {
    use std::sync::{atomic::AtomicUsize, Arc};

    use crate::kafka::{all_delivered, emit_many, services, tenants};

    let _cassandra = crate::cql::CASSANDRA.write().await;
    let cql = crate::cql::config("restart_under_load");
    let nodes = cql.nodes.join(",");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let receiver = Receiver::start(200).await;
    let herald = start(&dir, &cql.keyspace, &nodes).await;
    let (base, pid) = (herald.base.clone(), herald.pid());
    let mut peak_rss_mib = 0u64;
    let (keys, secrets) = tenants(&base, 3, &receiver).await;
    let acked = Arc::new(tokio::sync::Mutex::new(HashSet::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    emit_many(
        base.clone(),
        keys.clone(),
        200,
        acked.clone(),
        refused.clone(),
    )
    .await;
    eventually("deliveries under way", Duration::from_secs(60), || async {
        (receiver.received().len() >= 100).then_some(())
    })
    .await;
    // Emit in rounds while Cassandra restarts, then until Herald acknowledges
    // again (100 more events): the emit path heals by itself.
    let restart = tokio::spawn(services(&["restart", "cassandra"]));
    let mut emitted = 200;
    let mut rounds_while_away = 0;
    let mut back: Option<(usize, tokio::time::Instant)> = None;
    loop {
        let away = !restart.is_finished();
        emit_many(
            base.clone(),
            keys.clone(),
            40,
            acked.clone(),
            refused.clone(),
        )
        .await;
        emitted += 40;
        rounds_while_away += usize::from(away && !restart.is_finished());
        peak_rss_mib = peak_rss_mib.max(rss_mib(pid));
        let n = acked.lock().await.len();
        match back {
            None if restart.is_finished() => back = Some((n, tokio::time::Instant::now())),
            Some((at, _)) if n >= at + 100 => break,
            Some((_, since)) => assert!(
                since.elapsed() < Duration::from_secs(180),
                "emits still refused 180 s after Cassandra was back"
            ),
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restart.await.unwrap();
    let acked = acked.lock().await.clone();
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(acked.len() + refused, emitted);
    assert!(
        rounds_while_away > 0,
        "no round of emits began and ended while Cassandra restarted"
    );
    let (delivered, duplicates) =
        all_delivered(&receiver, &acked, &secrets, &dir, Duration::from_secs(240)).await;
    // `all_delivered` returned: every acknowledged event arrived (an emit
    // whose answer was lost may arrive too, and is counted apart).
    println!(
        "cassandra restart: {} acknowledged, {refused} refused with 503 while it was away \
         ({rounds_while_away} rounds of 40 emits during the restart) \
         (server peak RSS {peak_rss_mib} MiB), all delivered, 0 lost, {duplicates} duplicate \
         deliveries, {} delivered without a 202",
        acked.len(),
        delivered - acked.len()
    );
    // Refused emits leave nothing behind: memory stays bounded while the
    // store is away (a generous bound; the figure is printed above).
    assert!(peak_rss_mib < 512, "peak RSS {peak_rss_mib} MiB");
}

/// Resident set size of `pid`, MiB (0 when unreadable).
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}
