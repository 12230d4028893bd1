//! Bulk recovery of a time range, as a durable job with progress.

use std::time::Duration;

use serde_json::{json, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::support::{eventually, Herald, Receiver};

async fn job_done(h: &Herald, key: &str, id: &str) -> Value {
    eventually(
        "the recovery job finishes",
        Duration::from_secs(20),
        || async {
            let (s, job) = h.get(key, &format!("/api/v1/portal/recoveries/{id}")).await;
            assert_eq!(s, 200, "{job}");
            (job["status"] == "completed" && job["done"] == job["total"]).then_some(job)
        },
    )
    .await
}

#[tokio::test]
async fn recover_redelivers_failed_or_all_deliveries_of_a_range() {
    // The breaker stays closed so the retry schedule runs out quickly.
    let h = Herald::start_with(|c| c.delivery.breaker_failure_threshold = 1000).await;
    let key = h.tenant("acme").await;
    let rx = Receiver::start(500).await;
    let sub = h.subscribe(&key, &rx.url, &["order.*"]).await;
    let sub = sub["id"].as_str().unwrap();
    let since = (OffsetDateTime::now_utc() - Duration::from_secs(60))
        .format(&Rfc3339)
        .unwrap();
    let e1 = h.emit(&key, "order.created", json!({"n": 1})).await;
    let e2 = h.emit(&key, "order.created", json!({"n": 2})).await;
    eventually(
        "both deliveries are dead",
        Duration::from_secs(20),
        || async {
            let dead = h.logs(&key, "status=dead").await;
            (dead.len() == 2).then_some(())
        },
    )
    .await;
    rx.set_status(200);
    let e3 = h.emit(&key, "order.created", json!({"n": 3})).await;
    eventually("e3 is delivered", Duration::from_secs(10), || async {
        (h.logs(&key, "status=delivered").await.len() == 1).then_some(())
    })
    .await;
    let until = (OffsetDateTime::now_utc() + Duration::from_secs(1))
        .format(&Rfc3339)
        .unwrap();

    // Only failed: e1 and e2, as replays linked to the dead deliveries.
    let (s, job) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{sub}/recover"),
            json!({"since": since, "until": until, "only_failed": true}),
        )
        .await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["total"], 2);
    let job = job_done(&h, &key, job["id"].as_str().unwrap()).await;
    assert_eq!(job["scheduled"], 2);
    let replays = h.logs(&key, "status=delivered").await;
    let replayed: Vec<&str> = replays
        .iter()
        .filter(|l| l["trigger"] == "replay")
        .map(|l| l["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(replayed.len(), 2, "{replays:?}");
    assert!(replayed.contains(&e1["id"].as_str().unwrap()));
    assert!(replayed.contains(&e2["id"].as_str().unwrap()));
    assert!(replays
        .iter()
        .filter(|l| l["trigger"] == "replay")
        .all(|l| l["replay_of"].is_string()));

    // All: every event of the range, e3 included.
    let (s, job) = h
        .post(
            &key,
            &format!("/api/v1/portal/webhooks/{sub}/recover"),
            json!({"since": since, "until": until}),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(job["total"], 3);
    job_done(&h, &key, job["id"].as_str().unwrap()).await;
    let to_e3 = h
        .logs(&key, &format!("event_id={}", e3["id"].as_str().unwrap()))
        .await;
    assert_eq!(to_e3.len(), 2, "first delivery and its recovery replay");

    // Bad input changes nothing.
    for bad in [
        json!({"since": until, "until": since}),
        json!({"since": "yesterday", "until": until}),
        json!({"since": since}),
    ] {
        let (s, body) = h
            .post(
                &key,
                &format!("/api/v1/portal/webhooks/{sub}/recover"),
                bad.clone(),
            )
            .await;
        assert!(s == 422 || s == 400, "{bad} → {s} {body}");
    }
    let (s, _) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/sub_00000000000000000000000000000000/recover",
            json!({"since": since, "until": until}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = h.get(&key, "/api/v1/portal/recoveries/rcv_nope").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn an_unfinished_recovery_job_resumes_after_a_restart() {
    use herald_engine::{
        resources::{RecoveryJob, RecoveryStatus},
        store::{embedded::EmbeddedStore, RecoveryStore},
    };
    let h = Herald::start_with(|c| c.delivery.breaker_failure_threshold = 1000).await;
    let key = h.tenant("acme").await;
    let rx = Receiver::start(200).await;
    let sub = h.subscribe(&key, &rx.url, &["order.*"]).await;
    let sub = sub["id"].as_str().unwrap().to_string();
    for n in 0..3 {
        h.emit(&key, "order.created", json!({"n": n})).await;
    }
    eventually("first deliveries", Duration::from_secs(10), || async {
        (h.logs(&key, "status=delivered").await.len() == 3).then_some(())
    })
    .await;
    let dir = h.stop().await;

    // A job that a crashed run had stored but not advanced.
    let now = OffsetDateTime::now_utc();
    let job = RecoveryJob {
        id: herald_engine::ids::new_id(herald_engine::RECOVERY),
        tenant_id: "acme".into(),
        subscription_id: sub.clone(),
        since: now - Duration::from_secs(3600),
        until: now,
        only_failed: false,
        source: Default::default(),
        status: RecoveryStatus::Running,
        total: 3,
        scheduled: 0,
        done: 0,
        created_at: now,
        updated_at: now,
    };
    {
        let store = EmbeddedStore::open(
            &dir.path().join("store"),
            crate::support::data_dir_cipher(dir.path()),
        )
        .unwrap();
        store.create_recovery(&job).await.unwrap();
    }
    let h = Herald::start_in(dir, |c| c.delivery.breaker_failure_threshold = 1000, |s| s).await;
    let done = job_done(&h, &key, &job.id).await;
    assert_eq!(done["scheduled"], 3);
    let replays: Vec<Value> = h
        .logs(&key, "")
        .await
        .into_iter()
        .filter(|l| l["trigger"] == "replay")
        .collect();
    assert_eq!(replays.len(), 3);
}
