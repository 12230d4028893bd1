//! Retention in embedded mode, end to end: with a 2 s retention and 4 kB
//! log segments, events that were delivered leave the log and the store
//! (the log directory stays the size of a couple of waves however many are
//! sent), while an event a paused subscription holds is kept and arrives
//! when the subscription resumes.

use std::{path::Path, time::Duration};

use serde_json::json;

use crate::support::{eventually, Herald, Receiver};

const BATCH: &str = "/api/v1/integrations/events/batch";
const WAIT: Duration = Duration::from_secs(60);
const WAVES: usize = 8;
const PER_WAVE: usize = 100;

fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_events_leave_the_log_and_the_store_and_held_ones_stay_until_delivered() {
    let herald = Herald::start_with(|c| {
        c.retention = Duration::from_secs(2);
        c.log_segment_bytes = 4096;
    })
    .await;
    let key = herald.tenant("acme").await;
    let live = Receiver::start(200).await;
    let later = Receiver::start(200).await;
    herald.subscribe(&key, &live.url, &["order.*"]).await;
    let held_sub = herald.subscribe(&key, &later.url, &["hold.*"]).await;
    let hook = format!(
        "/api/v1/portal/webhooks/{}",
        held_sub["id"].as_str().unwrap()
    );
    let (status, body) = herald.post(&key, &format!("{hook}/pause"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let held = herald.emit(&key, "hold.me", json!({ "kept": true })).await;
    let held_id = held["id"].as_str().unwrap().to_string();

    let log_dir = herald.data_dir().join("log");
    let mut first_ids = Vec::new();
    let mut wave_bytes = 0;
    for wave in 0..WAVES {
        let events: Vec<_> = (0..PER_WAVE)
            .map(|i| {
                let pad = "x".repeat(512);
                json!({ "event_type": "order.created", "payload": { "wave": wave, "i": i, "pad": pad } })
            })
            .collect();
        let (status, body) = herald.post(&key, BATCH, json!({ "events": events })).await;
        assert_eq!(status, 202, "{body}");
        if wave == 0 {
            first_ids = body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect();
        }
        let want = (wave + 1) * PER_WAVE;
        eventually("the wave's deliveries", WAIT, || async {
            (live.received().len() >= want).then_some(())
        })
        .await;
        if wave == 0 {
            // Younger than the retention: nothing of it can be gone yet.
            wave_bytes = bytes_under(&log_dir);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(live.received().len(), WAVES * PER_WAVE, "each event once");

    // Past the retention, the first wave leaves the store and its segments
    // leave the log: the directory comes down to about a wave.
    let first = first_ids[0].clone();
    let status = eventually("the first wave pruned", WAIT, || async {
        let (status, _) = herald
            .get(&key, &format!("/api/v1/integrations/events/{first}"))
            .await;
        (status == 404 && bytes_under(&log_dir) <= 2 * wave_bytes).then_some(status)
    })
    .await;
    assert_eq!(status, 404);
    let logs = herald.logs(&key, &format!("event_id={first}")).await;
    assert!(logs.is_empty(), "its attempt logs went too: {logs:?}");

    // The held event is older than the retention, and still there.
    let (status, body) = herald
        .get(&key, &format!("/api/v1/integrations/events/{held_id}"))
        .await;
    assert_eq!(status, 200, "a held event is never pruned: {body}");
    assert!(later.received().is_empty(), "paused");
    let (status, body) = herald
        .post(&key, &format!("{hook}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let got = eventually("the held event, on resume", WAIT, || async {
        later.received().first().cloned()
    })
    .await;
    assert_eq!(got.header("webhook-id"), held_id);
    herald.stop().await;
}
