//! Relays scaled out as the Helm chart runs them: one id per replica (the
//! StatefulSet's pod names), side by side on one CDC topic.

use std::{collections::HashSet, time::Duration};

use crate::{
    cdc::{health, precreate_events_topic, read_committed},
    kafka::{prefix, require_kafka, start_role, BROKER},
    role_metrics::{cdc_topic, outbox_rows},
    support::eventually,
};

/// Two relays with their own ids share the CDC topic's partitions through
/// their consumer group: both commit transactions, neither is fenced, and
/// every row is in the events topic exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_with_their_own_ids_share_the_cdc_topic_without_fencing() {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 10;
    let _broker = BROKER.read().await;
    require_kafka().await;
    let prefix = prefix("relays2");
    precreate_events_topic(&prefix).await;
    let topic = cdc_topic(&prefix, 4).await;
    let tmp = tempfile::tempdir().unwrap();
    let relays = [
        start_role(
            "relay",
            &tmp.path().join("herald-relay-0"),
            &prefix,
            &["--relay-id", "herald-relay-0"],
        )
        .await,
        start_role(
            "relay",
            &tmp.path().join("herald-relay-1"),
            &prefix,
            &["--relay-id", "herald-relay-1"],
        )
        .await,
    ];
    // Rows keep coming across the group's rebalance as the second relay joins.
    let mut ids = Vec::new();
    for b in 0..BATCHES {
        let payloads: Vec<String> = (0..PER_BATCH)
            .map(|i| format!(r#"{{"n": {}}}"#, b * PER_BATCH + i))
            .collect();
        ids.extend(outbox_rows(&topic, "acme", &payloads).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let n = BATCHES * PER_BATCH;
    eventually(
        "both relays committed transactions and relayed every row",
        Duration::from_secs(90),
        || async {
            let mut relayed = 0;
            for r in &relays {
                let h = health(&r.base).await;
                if h["relay"]["transactions"].as_u64().unwrap_or(0) == 0 {
                    return None;
                }
                relayed += h["relay"]["relayed"].as_u64().unwrap();
            }
            (relayed >= n as u64).then_some(())
        },
    )
    .await;
    let events = format!("{prefix}.events");
    let records =
        tokio::task::spawn_blocking(move || read_committed(&events, n, Duration::from_secs(3)))
            .await
            .unwrap();
    let got: Vec<String> = records
        .iter()
        .map(|(_, headers)| headers["id"].clone())
        .collect();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(
        unique,
        ids.iter().collect::<HashSet<_>>(),
        "every row is relayed"
    );
    assert_eq!(got.len(), n, "no row is relayed twice");
    for (i, r) in relays.into_iter().enumerate() {
        let log = std::fs::read_to_string(tmp.path().join(format!("herald-relay-{i}/relay.log")))
            .unwrap()
            .to_lowercase();
        assert!(!log.contains("fenced"), "relay {i} was fenced:\n{log}");
        r.kill9().await;
    }
}
