//! Retention in embedded mode: events and delivery logs older than the
//! retention leave the SQLite store in small batches, and the event log's
//! segments past it are deleted once every consumer group is past them.
//! Nothing pending is ever deleted: an event not yet fanned out, or with a
//! delivery scheduled, retrying or held, stays (and so does its log
//! segment, which fan-out has not committed past). The CQL store and Kafka
//! expire their own data (a TTL, the topic's `retention.ms`): there both
//! calls delete nothing.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    clock::now_ms,
    log::EventLog,
    store::{PruneCursor, Store},
};

/// Rows of each table examined per pruning transaction (at most that many
/// deleted), so delivery's writes never wait long behind one, however
/// many rows the retention keeps.
const PRUNE_BATCH: usize = 500;

/// After each pruning transaction a pass that is on time pauses this many
/// times as long as the transaction took: pruning has a quarter of the
/// store's writer, delivery the rest. A pass that is late (it has run
/// longer than the interval between passes: the retention is falling
/// behind the ingest) goes on without pausing, so the disk stays bounded.
/// (Back to back, pruning at 8,000 events/s took p99 emit-to-delivery from
/// 150 ms to 1.8 s; paced, to 0.8 s, but fell behind: docs/operations.md.)
const PAUSE_FACTOR: u32 = 3;

/// How often retention runs: a tenth of the retention, between 1 s and 5 min.
pub fn pass_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// Deletes what is past `retention`, every [`pass_interval`], until `cancel`.
pub(super) async fn run(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    retention: Duration,
    cancel: CancellationToken,
) {
    let every = pass_interval(retention);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let before = now_ms() - retention.as_millis() as i64;
        let (mut events, mut logs) = (0, 0);
        let mut from = PruneCursor::default();
        let pass_started = std::time::Instant::now();
        while !cancel.is_cancelled() {
            let started = std::time::Instant::now();
            match store.prune_before(before, &from, PRUNE_BATCH).await {
                Ok(p) => {
                    events += p.events;
                    logs += p.delivery_logs;
                    match p.next {
                        Some(next) => from = next,
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune events past the retention");
                    break;
                }
            }
            let pause = if pass_started.elapsed() < every {
                started.elapsed() * PAUSE_FACTOR
            } else {
                Duration::ZERO
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
        if events + logs > 0 {
            tracing::info!(
                events,
                delivery_logs = logs,
                "events and delivery logs past the retention deleted"
            );
        }
        if let Err(e) = log.drop_before(before).await {
            tracing::warn!(error = %e, "could not delete event log segments past the retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_run_at_a_tenth_of_the_retention_within_bounds() {
        assert_eq!(
            pass_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            pass_interval(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            pass_interval(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(300)
        );
    }
}
