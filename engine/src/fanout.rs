//! Fan-out: the log consumer that turns events into scheduled deliveries.
//!
//! For each batch read from the log it asks the store, in one transaction
//! per batch, to index the events, drop duplicates by `(tenant,
//! dedupe_key)`, skip events fanned out before (a re-read after a crash) and
//! schedule one delivery per matching subscription. Only then does it commit
//! the batch's log positions: an event is never past the committed offset
//! before its deliveries are durable (at-least-once end to end).
//!
//! When other processes (`--role api`) write subscriptions to a shared store,
//! the fan-out checks the store's subscription version before each batch and
//! reloads its index when it moved. A subscription is committed before the
//! API answers 201, so every event emitted after that answer is matched
//! against it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    ids,
    log::{EventLog, LogPosition},
    model::{Ordering, ScheduledDelivery},
    store::{embedded::now_ms, FanOut, Store},
    subscriptions::SubscriptionIndex,
};

/// The consumer group of the fan-out workers (with Kafka, `<prefix>-fanout`,
/// which is this name for the default prefix).
pub const GROUP: &str = "herald-fanout";
/// Records read per batch.
const BATCH: usize = 512;

/// How a fan-out runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Its consumer group.
    pub group: String,
    /// How long a `(tenant, dedupe_key)` pair stays unique.
    pub dedupe_window: Duration,
    /// Whether other processes write subscriptions to the store (then the
    /// index is checked against the store before every batch).
    pub follow_store: bool,
}

/// Runs until `cancel`, ringing `wake` whenever new deliveries are scheduled.
pub async fn run(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    subscriptions: Arc<SubscriptionIndex>,
    settings: Settings,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Settings {
        group,
        dedupe_window,
        follow_store,
    } = settings;
    let mut consumer = loop {
        match log.consumer(&group).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "fan-out cannot open its log consumer; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = cancel.cancelled() => return,
                }
            }
        }
    };
    loop {
        let records = tokio::select! {
            r = consumer.poll(BATCH, Duration::from_secs(1)) => r,
            () = cancel.cancelled() => return,
        };
        let records = match records {
            Ok(r) if r.is_empty() => continue,
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "fan-out could not read the event log; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if follow_store {
            refresh_subscriptions(store.as_ref(), &subscriptions).await;
        }
        let now = now_ms();
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        let batch: Vec<FanOut> = records
            .into_iter()
            .map(|r| {
                let e = &r.event;
                let deliveries = subscriptions
                    .matching(&e.tenant_id, &e.event_type)
                    .iter()
                    .map(|sub| ScheduledDelivery {
                        delivery_id: ids::new_id(ids::DELIVERY),
                        tenant_id: e.tenant_id.clone(),
                        event_id: e.id.clone(),
                        subscription_id: sub.id.clone(),
                        attempt: 1,
                        replay_of: None,
                        is_replay: false,
                        due_at_ms: now,
                        seq: r.position.offset as i64,
                        ordered: sub.ordering == Ordering::Strict,
                    })
                    .collect();
                let entry = next.entry(r.position.partition).or_default();
                *entry = (*entry).max(r.position.offset + 1);
                FanOut {
                    event: r.event,
                    position: r.position,
                    deliveries,
                }
            })
            .collect();
        let dedupe_until = now + dedupe_window.as_millis() as i64;
        // The batch must become durable before its offsets move: retry until it does.
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.fan_out(batch.clone(), dedupe_until, now).await {
                Ok(results) => {
                    tracing::debug!(events = results.len(), "fanned out");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "fan-out could not schedule deliveries; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        wake.notify_one();
        let positions: Vec<LogPosition> = next
            .into_iter()
            .map(|(partition, offset)| LogPosition { partition, offset })
            .collect();
        if let Err(e) = consumer.commit(&positions).await {
            // Harmless for correctness: the batch is re-read and skipped as already fanned out.
            tracing::warn!(error = %e, "fan-out could not commit its log positions");
        }
    }
}

/// Reloads `index` if a shared store's subscriptions changed since the
/// index's snapshot. A store error leaves the index as it was (and is
/// logged).
///
/// The version the index reflects is kept in the index, so any number of
/// callers (the fan-out before each batch, a periodic task) share it, and
/// a snapshot never replaces a newer one.
pub async fn refresh_subscriptions(store: &dyn Store, index: &SubscriptionIndex) {
    let version = match store.subscriptions_version().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the subscriptions' version");
            return;
        }
    };
    if index.version().is_some_and(|seen| seen >= version) {
        return;
    }
    // Read after the version: the snapshot holds at least that version.
    match store.all_subscriptions().await {
        Ok(subs) => {
            index.replace_if_newer(version, subs);
        }
        Err(e) => tracing::warn!(error = %e, "could not reload subscriptions"),
    }
}
