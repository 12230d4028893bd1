//! How far delivery is behind the log: the events appended that fan-out has
//! not committed past yet (its consumer lag, per partition).
//!
//! Fan-out commits an event's offset once its deliveries are settled, so
//! this counts the accepted events Herald has not yet delivered (or
//! scheduled: a retry, a parked or held delivery does not count). A process
//! that takes emits reads it a few times a second, and the API refuses
//! emits past `--max-emit-backlog` (503 with `Retry-After`): a burst faster
//! than delivery waits at its client, and an accepted event waits about
//! the bound over the delivery rate, not minutes. The lag is in log
//! offsets: with Kafka a batch of two or more events is appended in one
//! transaction whose commit marker takes an offset too, one more per batch.
//!
//! Only the tenants of the partitions that hold the backlog are refused: an
//! emit is refused when the whole backlog is past the bound **and** its
//! tenant's partition is behind by at least an even share of it. One
//! tenant's burst then waits at its own client, while tenants of the other
//! partitions are served (their events are delivered beside it, not behind
//! it); a partition takes emits only while it is behind less than the
//! mean, so the backlog stays near the bound.

use std::{sync::Arc, time::Duration};

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::log::EventLog;

/// How often the backlog is read.
const READ_EVERY: Duration = Duration::from_millis(250);

/// The last backlog read ([`follow`]): per partition, `None` before the
/// first read or after a failed one (no emit is refused on a guess).
#[derive(Debug, Default)]
pub(super) struct Backlog {
    lag: RwLock<Option<Vec<u64>>>,
}

/// Reads the backlog into `backlog` every [`READ_EVERY`] until `cancel`.
pub(super) async fn follow(
    log: Arc<dyn EventLog>,
    group: String,
    backlog: Arc<Backlog>,
    cancel: CancellationToken,
) {
    loop {
        let lag = crate::log::consumer_lag(log.as_ref(), &group)
            .await
            .ok()
            .flatten();
        *backlog.lag.write() = lag;
        tokio::select! {
            () = tokio::time::sleep(READ_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Why an emit is refused: the backlog is past the configured bound, and
/// the emit's partition holds at least an even share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogFull {
    /// Accepted events not yet delivered, as last read.
    pub events: u64,
    /// Of them, in the partition of the emit's tenant.
    pub in_partition: u64,
    /// `--max-emit-backlog`.
    pub max: u64,
}

/// The rule of the module doc: whether an emit to `partition` is refused,
/// given each partition's lag and the bound `max` (0: never).
fn refusal(lag: &[u64], partition: usize, max: u64) -> Option<BacklogFull> {
    let events: u64 = lag.iter().sum();
    let in_partition = lag.get(partition).copied().unwrap_or(0);
    let share_or_more = in_partition.saturating_mul(lag.len() as u64) >= events;
    (max > 0 && events > max && share_or_more).then_some(BacklogFull {
        events,
        in_partition,
        max,
    })
}

impl Engine {
    /// `Err` when an emit by `tenant_id` should be refused now, to be
    /// retried: the backlog is past the configured bound
    /// ([`crate::config::EngineConfig::max_emit_backlog`]) and the tenant's
    /// partition holds at least an even share of it (see the module doc).
    pub fn admit_emit(&self, tenant_id: &str) -> Result<(), BacklogFull> {
        let Some(backlog) = &self.backlog else {
            return Ok(());
        };
        let lag = backlog.lag.read();
        let Some(lag) = lag.as_deref() else {
            return Ok(());
        };
        let partition = crate::log::partition_for(tenant_id, lag.len() as u32) as usize;
        refusal(lag, partition, self.config.max_emit_backlog).map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        log::{embedded::EmbeddedLog, LogPosition},
        model::{DomainEvent, EventSource},
    };

    fn event(tenant: &str) -> DomainEvent {
        let now = time::OffsetDateTime::now_utc();
        DomainEvent {
            id: crate::ids::new_id("evt"),
            tenant_id: tenant.into(),
            event_type: "order.placed".into(),
            schema_version: 1,
            dedupe_key: None,
            occurred_at: now,
            received_at: now,
            payload: serde_json::json!({}).into(),
            source: EventSource::Api,
            aggregate_type: None,
            aggregate_id: None,
            trace_id: None,
        }
    }

    #[tokio::test]
    async fn the_backlog_is_what_the_group_has_not_committed_past() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 4).unwrap();
        let total = |group: &'static str| {
            let log = &log;
            async move {
                let lag = crate::log::consumer_lag(log, group).await.unwrap().unwrap();
                lag.iter().sum::<u64>()
            }
        };
        assert_eq!(total("fanout").await, 0, "empty");
        let events: Vec<_> = (0..10).map(|_| event("acme")).collect();
        let at = log.append(&events).await.unwrap();
        log.append(&[event("globex"), event("globex")])
            .await
            .unwrap();
        assert_eq!(total("fanout").await, 12, "nothing committed");
        let mut consumer = log.consumer("fanout").await.unwrap();
        let done = LogPosition {
            partition: at[0].partition,
            offset: 4,
        };
        consumer.commit(&[done]).await.unwrap();
        assert_eq!(total("fanout").await, 8, "4 of acme's done");
        assert_eq!(total("other").await, 12, "per group");
    }

    #[test]
    fn only_partitions_with_an_even_share_of_a_backlog_past_the_bound_are_refused() {
        // 4 partitions, 1,000 behind in all: partition 0 holds 700.
        let lag = [700, 200, 100, 0];
        assert_eq!(refusal(&lag, 0, 1_000), None, "not past the bound");
        let full = refusal(&lag, 0, 999).expect("past it, and 700 ≥ 1,000 / 4");
        assert_eq!(
            (full.events, full.in_partition, full.max),
            (1_000, 700, 999)
        );
        assert!(refusal(&lag, 1, 999).is_none(), "200 < 250: served");
        assert!(
            refusal(&lag, 3, 999).is_none(),
            "an idle partition is served"
        );
        // Even lags: every partition is refused.
        assert!((0..4).all(|p| refusal(&[300; 4], p, 999).is_some()));
        assert!(refusal(&lag, 0, 0).is_none(), "0: unbounded");
        assert!(refusal(&[], 0, 1).is_none(), "no partitions, no backlog");
    }
}
