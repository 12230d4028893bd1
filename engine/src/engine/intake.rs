//! How far delivery is behind the log: the events appended that fan-out has
//! not committed past yet (its consumer lag, summed over the partitions).
//!
//! Fan-out commits an event's offset once its deliveries are settled, so
//! this counts the accepted events Herald has not yet delivered (or
//! scheduled: a retry, a parked or held delivery does not count). A process
//! that takes emits reads it a few times a second, and the API refuses
//! emits past `--max-emit-backlog` (503 with `Retry-After`): a burst faster
//! than delivery waits at its client, and an accepted event waits at most
//! the bound over the delivery rate, not minutes.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::log::EventLog;

/// How often the backlog is read.
const READ_EVERY: Duration = Duration::from_millis(250);

/// Not read yet (or the last read failed): no emit is refused on its account.
const UNKNOWN: u64 = u64::MAX;

/// The last backlog read ([`follow`]).
#[derive(Debug)]
pub(super) struct Backlog {
    events: AtomicU64,
}

impl Default for Backlog {
    fn default() -> Self {
        Self {
            events: AtomicU64::new(UNKNOWN),
        }
    }
}

impl Backlog {
    fn get(&self) -> Option<u64> {
        Some(self.events.load(Relaxed)).filter(|&n| n != UNKNOWN)
    }
}

/// The events of `log` that consumer group `group` has not committed past,
/// summed over the partitions; `None` if the log cannot tell.
async fn read(log: &dyn EventLog, group: &str) -> Option<u64> {
    let lag = crate::log::consumer_lag(log, group).await.ok()??;
    Some(lag.iter().sum())
}

/// Reads the backlog into `backlog` every [`READ_EVERY`] until `cancel`.
/// A failed read leaves it unknown (emits are not refused on a guess).
pub(super) async fn follow(
    log: Arc<dyn EventLog>,
    group: String,
    backlog: Arc<Backlog>,
    cancel: CancellationToken,
) {
    loop {
        let n = read(log.as_ref(), &group).await.unwrap_or(UNKNOWN);
        backlog.events.store(n, Relaxed);
        tokio::select! {
            () = tokio::time::sleep(READ_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Why an emit is refused: the backlog is past the configured bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogFull {
    /// Accepted events not yet delivered, as last read.
    pub events: u64,
    /// `--max-emit-backlog`.
    pub max: u64,
}

impl Engine {
    /// The accepted events fan-out has not committed past (not yet
    /// delivered or scheduled), as read within the last quarter second;
    /// `None` when this process does not follow it (it takes no emits, or
    /// the bound is off) or could not read it.
    pub fn emit_backlog(&self) -> Option<u64> {
        self.backlog.as_ref()?.get()
    }

    /// `Err` when the backlog is past the configured bound
    /// ([`crate::config::EngineConfig::max_emit_backlog`]): an emit now
    /// should be refused, to be retried.
    pub fn admit_emit(&self) -> Result<(), BacklogFull> {
        let max = self.config.max_emit_backlog;
        match self.emit_backlog() {
            Some(events) if max > 0 && events > max => Err(BacklogFull { events, max }),
            _ => Ok(()),
        }
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
        assert_eq!(read(&log, "fanout").await, Some(0), "empty");
        let events: Vec<_> = (0..10).map(|_| event("acme")).collect();
        let at = log.append(&events).await.unwrap();
        log.append(&[event("globex"), event("globex")])
            .await
            .unwrap();
        assert_eq!(read(&log, "fanout").await, Some(12), "nothing committed");
        let mut consumer = log.consumer("fanout").await.unwrap();
        let done = LogPosition {
            partition: at[0].partition,
            offset: 4,
        };
        consumer.commit(&[done]).await.unwrap();
        assert_eq!(read(&log, "fanout").await, Some(8), "4 of acme's done");
        assert_eq!(read(&log, "other").await, Some(12), "per group");
    }
}
