//! The CDC relay on real services (see [`crate::cdc`] for what runs and
//! how each test is isolated): the plain change envelope, and a relay
//! killed with -9 while rows stream.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use herald_engine::test_hooks;
use serde_json::{json, Value};
use standardwebhooks::Webhook;

use crate::{
    cdc::*,
    kafka::{prefix, start_role, start_role_env, tenant, BROKER},
    support::{eventually, HeraldProcess, Receiver},
};

/// A relay on the plain change envelope: its outbox, an `all` process
/// relaying it, and a receiver.
struct Plain {
    prefix: String,
    outbox: Outbox,
    _tmp: tempfile::TempDir,
    receiver: Receiver,
    herald: HeraldProcess,
}

impl Plain {
    async fn start(name: &str) -> Self {
        Self::start_env(name, &[]).await
    }

    /// With environment variables for the `all` process (test hooks).
    async fn start_env(name: &str, env: &[(&str, &str)]) -> Self {
        require_cdc().await;
        let prefix = prefix(name);
        let outbox = Outbox::start(&prefix, false).await;
        let tmp = tempfile::tempdir().unwrap();
        let receiver = Receiver::start(200).await;
        let herald = start_role_env(
            "all",
            &tmp.path().join("data"),
            &prefix,
            &["--cdc-topic", &outbox.topic],
            env,
        )
        .await;
        Self {
            prefix,
            outbox,
            _tmp: tmp,
            receiver,
            herald,
        }
    }
}

/// The records in the run's dead-letter topic.
async fn dead_letters(prefix: &str) -> Vec<Rec> {
    let dlq = format!("{prefix}.cdc.dead-letter");
    tokio::task::spawn_blocking(move || read_committed(&dlq, 1, Duration::from_secs(2)))
        .await
        .unwrap()
}

/// The plain Debezium change envelope (JsonConverter with schemas, no
/// router): inserts are relayed, an UPDATE is dead-lettered, a DELETE is
/// skipped.
#[tokio::test]
async fn cdc_plain_change_envelope_is_relayed_updates_dead_lettered_deletes_skipped() {
    let _broker = BROKER.read().await;
    let Plain {
        prefix,
        outbox,
        _tmp,
        receiver,
        herald,
    } = Plain::start("cdcplain").await;
    let (_key, secret) = tenant(&herald.base, "plain", &receiver).await;

    let row = uuid::Uuid::now_v7();
    outbox
        .sql(&format!(
            "BEGIN; INSERT INTO work_orders VALUES ('wo-9', 'open'); {} COMMIT;",
            outbox_row(row, "plain", "work_order.opened", None, r#"{"n": 9}"#)
        ))
        .await;
    wait_delivered(&receiver, &event_id(row)).await;
    let got = receiver
        .received()
        .into_iter()
        .find(|r| r.header("webhook-id") == event_id(row))
        .unwrap();
    Webhook::new(&secret)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("a valid signature");
    assert_eq!(
        serde_json::from_slice::<Value>(&got.body).unwrap()["data"],
        json!({"n": 9})
    );

    outbox
        .sql(&format!(
            "UPDATE herald_outbox SET type = 'work_order.changed' WHERE id = '{row}'"
        ))
        .await;
    outbox
        .sql(&format!("DELETE FROM herald_outbox WHERE id = '{row}'"))
        .await;
    let marker = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            marker,
            "plain",
            "work_order.marker",
            None,
            "{}",
        ))
        .await;
    wait_delivered(&receiver, &event_id(marker)).await;
    assert_eq!(
        delivered_ids(&receiver).len(),
        2,
        "only the two inserts are delivered"
    );
    let letters = dead_letters(&prefix).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].1["herald-dlq-reason"].contains("UPDATE"),
        "{:?}",
        letters[0].1
    );
    let h = health(&herald.base).await;
    assert_eq!(h["relay"]["dead_lettered"], 1, "{h}");
    assert!(
        h["relay"]["skipped"].as_u64().unwrap() >= 1,
        "the delete is skipped: {h}"
    );

    herald.kill9().await;
    outbox.stop().await;
}

/// Outbox rows of a deleted tenant are dead-lettered (reason: the tenant is
/// deleted), not relayed: nothing of it comes back after its purge. Another
/// tenant's row written after them is the barrier.
#[tokio::test]
async fn cdc_rows_of_a_deleted_tenant_are_dead_lettered() {
    let _broker = BROKER.read().await;
    let Plain {
        prefix,
        outbox,
        _tmp,
        receiver,
        herald,
    } = Plain::start("cdcgone").await;
    tenant(&herald.base, "leaving", &receiver).await;
    tenant(&herald.base, "staying", &receiver).await;
    let before = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            before,
            "leaving",
            "work_order.opened",
            None,
            "{}",
        ))
        .await;
    wait_delivered(&receiver, &event_id(before)).await;

    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/admin/tenants/leaving", herald.base))
        .bearer_auth(crate::support::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let late = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            late,
            "leaving",
            "work_order.opened",
            None,
            "{}",
        ))
        .await;
    let barrier = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            barrier,
            "staying",
            "work_order.opened",
            None,
            "{}",
        ))
        .await;
    wait_delivered(&receiver, &event_id(barrier)).await;
    assert!(
        !delivered_ids(&receiver).contains(&event_id(late)),
        "a deleted tenant's row was delivered"
    );
    let letters = dead_letters(&prefix).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = &letters[0].1["herald-dlq-reason"];
    assert!(reason.contains("tenant leaving is deleted"), "{reason}");
    let h = health(&herald.base).await;
    assert_eq!(h["relay"]["dead_lettered"], 1, "{h}");

    herald.kill9().await;
    outbox.stop().await;
}

/// kill -9 of the relay while 10,000 outbox rows stream: every row is in the
/// events topic exactly once (read_committed) and is delivered.
#[tokio::test]
async fn cdc_relay_kill9_while_streaming_neither_loses_nor_duplicates() {
    const ROWS: usize = 10_000;
    const PER_TXN: usize = 250;
    let _broker = BROKER.read().await;
    require_cdc().await;
    let prefix = prefix("cdckill");
    let outbox = Arc::new(Outbox::start(&prefix, true).await);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let receiver = Receiver::start(200).await;
    let api = start_role("api", &dir, &prefix, &[]).await;
    let _worker = start_role("worker", &dir, &prefix, &[]).await;
    let tenants = ["kill-0", "kill-1", "kill-2", "kill-3"];
    let mut secrets = Vec::new();
    for t in tenants {
        secrets.push(tenant(&api.base, t, &receiver).await.1);
    }
    // Each relay transaction stays open 800 ms, its records flushed to the
    // broker, so a kill lands inside one.
    let relay_env = [(test_hooks::RELAY_COMMIT_DELAY, "800ms")];
    let mut relay = start_role_env("relay", &dir, &prefix, &[], &relay_env).await;
    assert_eq!(health(&relay.base).await["role"], "relay");

    // The application inserts rows in transactions of PER_TXN, all along.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (outbox, done) = (outbox.clone(), done.clone());
        tokio::spawn(async move {
            for start in (0..ROWS).step_by(PER_TXN) {
                outbox
                    .sql(&format!(
                        "INSERT INTO herald_outbox (id, tenant_id, aggregatetype, aggregateid, type, payload) \
                         SELECT gen_random_uuid(), 'kill-' || (g % 4), 'work_order', g::text, \
                         'work_order.completed', jsonb_build_object('g', g) \
                         FROM generate_series({start}, {}) g",
                        start + PER_TXN - 1
                    ))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    // Kill the relay mid-stream, inside an open transaction, twice.
    for at in [2_000u64, 5_000] {
        let base = relay.base.clone();
        eventually(
            &format!("the relay past {at} rows, records in an open transaction"),
            Duration::from_secs(120),
            || {
                let base = base.clone();
                async move {
                    let r = &health(&base).await["relay"];
                    (r["relayed"].as_u64()? >= at && r["uncommitted"].as_u64()? > 0).then_some(())
                }
            },
        )
        .await;
        relay.kill9().await;
        relay = start_role_env("relay", &dir, &prefix, &[], &relay_env).await;
    }
    writer.await.unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(
        outbox.sql("SELECT count(*) FROM herald_outbox").await,
        ROWS.to_string()
    );

    // Exactly once in the events topic.
    let topic = format!("{prefix}.events");
    let records =
        tokio::task::spawn_blocking(move || read_committed(&topic, ROWS, Duration::from_secs(3)))
            .await
            .unwrap();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (value, _) in &records {
        let v: Value = serde_json::from_slice(value.as_ref().unwrap()).unwrap();
        assert_eq!(v["source"], "cdc");
        *per_id
            .entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    // Records of the transactions the kills cut short are in the log, aborted.
    let topic = format!("{prefix}.events");
    let uncommitted = tokio::task::spawn_blocking(move || {
        read_topic(&topic, "read_uncommitted", ROWS, Duration::from_secs(2)).len()
    })
    .await
    .unwrap();
    println!(
        "cdc kill -9: {ROWS} rows, {} committed events in the topic, {} distinct, {duplicates} duplicates; \
         {} records read_uncommitted (aborted by the kills: {})",
        records.len(),
        per_id.len(),
        uncommitted,
        uncommitted.saturating_sub(records.len())
    );
    assert_eq!(per_id.len(), ROWS, "every row is in the events topic");
    assert!(
        uncommitted > records.len(),
        "the kills interrupted transactions whose records reached the log (then aborted)"
    );
    assert_eq!(duplicates, 0, "no row is in the events topic twice");

    // And every one is delivered, signed.
    let want: HashSet<String> = per_id.into_keys().collect();
    eventually(
        "every relayed event delivered",
        Duration::from_secs(300),
        || async {
            (receiver.hits.load(Ordering::SeqCst) >= ROWS
                && delivered_ids(&receiver)
                    .into_iter()
                    .collect::<HashSet<_>>()
                    .is_superset(&want))
            .then_some(())
        },
    )
    .await;
    let hooks: Vec<Webhook> = secrets.iter().map(|s| Webhook::new(s).unwrap()).collect();
    for r in receiver.received().iter().take(200) {
        assert!(r.signed_by(&hooks).is_ok());
    }
    relay.kill9().await;
    drop((api, _worker));
    Arc::try_unwrap(outbox).ok().unwrap().stop().await;
}

/// A relay transaction whose commit never returns (librdkafka's
/// `send_offsets_to_transaction` can wait forever) is given up after its
/// bound: the relay starts again with new clients and relays the row, once.
/// Without the bound the row is never relayed.
#[tokio::test]
async fn cdc_relay_commit_that_never_returns_is_given_up() {
    let _broker = BROKER.read().await;
    let Plain {
        outbox,
        _tmp,
        receiver,
        herald,
        ..
    } = Plain::start_env("cdcstuck", &[(test_hooks::RELAY_STUCK_COMMITS, "1")]).await;
    tenant(&herald.base, "stuck", &receiver).await;

    let row = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            row,
            "stuck",
            "work_order.opened",
            None,
            r#"{"n": 1}"#,
        ))
        .await;
    let id = event_id(row);
    eventually(
        "the row relayed by the next session",
        Duration::from_secs(180),
        || async { delivered_ids(&receiver).contains(&id).then_some(()) },
    )
    .await;
    let h = health(&herald.base).await;
    assert!(
        h["relay"]["aborted"].as_u64().unwrap() >= 1,
        "the stuck transaction was given up: {h}"
    );
    assert_eq!(h["relay"]["relayed"], 1, "relayed once: {h}");
    assert_eq!(
        delivered_ids(&receiver)
            .iter()
            .filter(|d| **d == id)
            .count(),
        1
    );

    herald.kill9().await;
    outbox.stop().await;
}
