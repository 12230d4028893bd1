//! Fan-out: the log consumer that turns events into scheduled deliveries.
//!
//! For each batch read from the log it asks the store, in one transaction
//! per batch, to index the events, drop duplicates by `(tenant,
//! dedupe_key)`, skip events fanned out before (a re-read after a crash) and
//! schedule one delivery per matching subscription. Only then does it commit
//! the batch's log positions: an event is never past the committed offset
//! before its deliveries are durable (at-least-once end to end).

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

/// The consumer group of the fan-out workers.
pub const GROUP: &str = "herald-fanout";
/// Records read per batch.
const BATCH: usize = 512;

/// Runs until `cancel`, ringing `wake` whenever new deliveries are scheduled.
pub async fn run(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    subscriptions: Arc<SubscriptionIndex>,
    dedupe_window: Duration,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut consumer = loop {
        match log.consumer(GROUP).await {
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
