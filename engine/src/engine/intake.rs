//! How far delivery is behind the log: the events appended that fan-out has
//! not committed past yet (its consumer lag, per partition).
//!
//! Fan-out commits an event's offset once its deliveries are settled, so
//! this counts the accepted events Herald has not yet delivered (or
//! scheduled: a retry, a parked or held delivery does not count). A process
//! that takes emits reads it a few times a second, and the API refuses
//! emits past a bound (503 with `Retry-After`): a burst faster than
//! delivery waits at its client, and an accepted event waits about the
//! bound over the delivery rate, not minutes. The lag is in log offsets:
//! with Kafka a batch of two or more events is appended in one transaction
//! whose commit marker takes an offset too, one more per batch.
//!
//! The bound is the smaller of two: `--max-emit-backlog` events, and what
//! delivery settles in `--max-backlog-wait` at the rate it was measured
//! to settle events while it had a backlog ([`Capacity`]; never below
//! [`MIN_WAIT_BOUND`]). The first holds memory and fits one subscription
//! per event; the second keeps the wait short when an event fans out to
//! many (30,000 events to 100 subscriptions each are minutes of
//! deliveries). The rate is measured only while delivery was busy, so a
//! backlog that the bound itself keeps small does not lower it further.
//! The second is off by default: the rate is how fast fan-out commits
//! past the log, which the slowest subscription sets (one with a rate
//! limit holds it to its pace), not what the node could deliver.
//!
//! Only the tenants of the partitions that hold the backlog are refused: an
//! emit is refused when the whole backlog is past the bound **and** its
//! tenant's partition is behind by at least an even share of it. One
//! tenant's burst then waits at its own client, while tenants of the other
//! partitions are served (their events are delivered beside it, not behind
//! it); a partition takes emits only while it is behind less than the
//! mean, so the backlog stays near the bound.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::{
    log::{EventLog, Progress},
    metrics::Metrics,
};

/// How often the backlog is read.
const READ_EVERY: Duration = Duration::from_millis(250);

/// The busy time over which the delivery rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(4);

/// The lowest bound `--max-backlog-wait` sets, in events: a few batches
/// are taken whatever the rate. (At 1,000, events fanned out to 100
/// subscriptions waited 4 s and more behind a burst: 100,000 deliveries.)
pub const MIN_WAIT_BOUND: u64 = 250;

/// The last backlog read ([`follow`]): `None` before the first read or
/// after a failed one (no emit is refused on a guess).
#[derive(Debug, Default)]
pub(super) struct Backlog {
    last: RwLock<Option<Reading>>,
}

#[derive(Debug)]
struct Reading {
    /// Per partition.
    lag: Vec<u64>,
    /// The bound now, and the rate that set it ([`Limits::bound`]).
    bound: (u64, Option<u64>),
}

/// The lag at the end of an interval between reads past which delivery
/// counts as busy through it: more than the commit markers a Kafka
/// partition that is done may show.
const BUSY_LAG: u64 = 64;

/// The rate at which delivery settles events when it has work: the events
/// committed past in the intervals between reads that ended with a backlog
/// still waiting ([`BUSY_LAG`]), over the last [`RATE_WINDOW`] of such
/// intervals. An interval that drained everything says how much was
/// offered, not how much could be delivered, and one that settled nothing
/// (no worker yet, a rebalance) says nothing of the rate once it runs:
/// both are left out, and the last rate measured holds.
#[derive(Debug, Default)]
struct Capacity {
    /// Busy intervals: their length and the events committed in them.
    busy: VecDeque<(Duration, u64)>,
    /// The last reading: when, and the offsets committed past in all.
    last: Option<(Instant, u64)>,
}

impl Capacity {
    /// Adds a reading at `at`: the committed total and the lag left.
    fn read(&mut self, at: Instant, committed: u64, lag: u64) {
        if let Some((then, before)) = self.last.replace((at, committed)) {
            let settled = committed.saturating_sub(before);
            if lag >= BUSY_LAG && settled > 0 {
                self.busy.push_back((at.duration_since(then), settled));
                let mut total: Duration = self.busy.iter().map(|(d, _)| *d).sum();
                while total > RATE_WINDOW && self.busy.len() > 1 {
                    let (d, _) = self.busy.pop_front().unwrap_or_default();
                    total -= d;
                }
            }
        }
    }

    /// Events settled per second while busy; `None` until a second of
    /// busy intervals was measured.
    fn rate(&self) -> Option<f64> {
        let secs: f64 = self.busy.iter().map(|(d, _)| d.as_secs_f64()).sum();
        let settled: u64 = self.busy.iter().map(|(_, n)| n).sum();
        (secs >= 1.0).then(|| settled as f64 / secs)
    }
}

/// Reads the backlog into `backlog` every [`READ_EVERY`] until `cancel`,
/// with the bound `limits` set at the rate measured (also exported as
/// `herald_emit_backlog_bound_events`).
pub(super) async fn follow(
    log: Arc<dyn EventLog>,
    group: String,
    limits: Limits,
    backlog: Arc<Backlog>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut capacity = Capacity::default();
    loop {
        let progress = crate::log::consumer_progress(log.as_ref(), &group)
            .await
            .ok()
            .flatten();
        *backlog.last.write() = match progress {
            Some(progress) => {
                let lag: Vec<u64> = progress.iter().map(Progress::lag).collect();
                let committed = progress.iter().map(|p| p.committed).sum();
                capacity.read(Instant::now(), committed, lag.iter().sum());
                let bound = limits.bound(capacity.rate());
                metrics.emit_backlog_bound.set(bound.0 as i64);
                Some(Reading { lag, bound })
            }
            None => {
                // Nothing to compare the next reading with.
                capacity.last = None;
                None
            }
        };
        tokio::select! {
            () = tokio::time::sleep(READ_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Why an emit is refused: the backlog is past the bound, and the emit's
/// partition holds at least an even share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogFull {
    /// Accepted events not yet delivered, as last read.
    pub events: u64,
    /// Of them, in the partition of the emit's tenant.
    pub in_partition: u64,
    /// The bound they are past.
    pub max: u64,
    /// `Some(events per second)` when the bound is what delivery settles
    /// in `--max-backlog-wait` at that rate; `None` when it is
    /// `--max-emit-backlog`.
    pub rate: Option<u64>,
}

/// The configured limits on the backlog.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `--max-emit-backlog`; 0: none.
    pub(super) events: u64,
    /// `--max-backlog-wait`; zero: none.
    pub(super) wait: Duration,
}

impl Limits {
    /// The bound at the measured `rate` and which limit set it (the rate,
    /// when the wait did); 0: none.
    fn bound(self, rate: Option<f64>) -> (u64, Option<u64>) {
        let by_wait = rate.filter(|_| !self.wait.is_zero()).map(|r| {
            (
                ((r * self.wait.as_secs_f64()) as u64).max(MIN_WAIT_BOUND),
                r,
            )
        });
        match by_wait {
            Some((w, r)) if self.events == 0 || w < self.events => (w, Some(r as u64)),
            _ => (self.events, None),
        }
    }
}

/// The rule of the module doc: whether an emit to `partition` is refused,
/// given each partition's lag, the bound `max` (0: never) and the rate
/// that set it.
fn refusal(lag: &[u64], partition: usize, (max, rate): (u64, Option<u64>)) -> Option<BacklogFull> {
    let events: u64 = lag.iter().sum();
    let in_partition = lag.get(partition).copied().unwrap_or(0);
    let share_or_more = in_partition.saturating_mul(lag.len() as u64) >= events;
    (max > 0 && events > max && share_or_more).then_some(BacklogFull {
        events,
        in_partition,
        max,
        rate,
    })
}

impl Engine {
    /// `Err` when an emit by `tenant_id` should be refused now, to be
    /// retried: the backlog is past the bound
    /// ([`crate::config::EngineConfig::max_emit_backlog`], lowered by
    /// [`crate::config::EngineConfig::max_backlog_wait`]) and the tenant's
    /// partition holds at least an even share of it (see the module doc).
    pub fn admit_emit(&self, tenant_id: &str) -> Result<(), BacklogFull> {
        let Some(backlog) = &self.backlog else {
            return Ok(());
        };
        let last = backlog.last.read();
        let Some(Reading { lag, bound }) = last.as_ref() else {
            return Ok(());
        };
        let partition = crate::log::partition_for(tenant_id, lag.len() as u32) as usize;
        refusal(lag, partition, *bound).map_or(Ok(()), Err)
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
        let at = |max| (max, None);
        assert_eq!(refusal(&lag, 0, at(1_000)), None, "not past the bound");
        let full = refusal(&lag, 0, at(999)).expect("past it, and 700 ≥ 1,000 / 4");
        assert_eq!(
            (full.events, full.in_partition, full.max),
            (1_000, 700, 999)
        );
        assert!(refusal(&lag, 1, at(999)).is_none(), "200 < 250: served");
        assert!(
            refusal(&lag, 3, at(999)).is_none(),
            "an idle partition is served"
        );
        // Even lags: every partition is refused.
        assert!((0..4).all(|p| refusal(&[300; 4], p, at(999)).is_some()));
        assert!(refusal(&lag, 0, at(0)).is_none(), "0: unbounded");
        assert!(
            refusal(&[], 0, at(1)).is_none(),
            "no partitions, no backlog"
        );
    }

    #[test]
    fn the_wait_lowers_the_bound_to_what_delivery_settles_in_it() {
        let limits = Limits {
            events: 30_000,
            wait: Duration::from_secs(2),
        };
        assert_eq!(limits.bound(None), (30_000, None), "no rate measured yet");
        assert_eq!(
            limits.bound(Some(20_000.0)),
            (30_000, None),
            "2 s at 20,000/s is more than the count"
        );
        assert_eq!(limits.bound(Some(3_000.0)), (6_000, Some(3_000)));
        assert_eq!(
            limits.bound(Some(10.0)),
            (MIN_WAIT_BOUND, Some(10)),
            "never below the floor"
        );
        let no_wait = Limits {
            wait: Duration::ZERO,
            ..limits
        };
        assert_eq!(no_wait.bound(Some(3_000.0)), (30_000, None));
        let no_count = Limits {
            events: 0,
            ..limits
        };
        assert_eq!(no_count.bound(None), (0, None), "unbounded until measured");
        assert_eq!(no_count.bound(Some(3_000.0)), (6_000, Some(3_000)));
    }

    #[test]
    fn capacity_is_measured_while_busy_and_kept_while_idle() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut c = Capacity::default();
        c.read(at(0), 0, 10_000);
        assert_eq!(c.rate(), None, "one reading is no rate");
        // Busy: 500 settled every 250 ms, a backlog left each time.
        for i in 1..=4 {
            c.read(at(250 * i), 500 * i, 10_000);
        }
        assert_eq!(c.rate(), Some(2_000.0));
        // The backlog drained, then a trickle: the rate stays what
        // delivery could do.
        c.read(at(1_250), 2_100, 0);
        for i in 1..=20 {
            // A done Kafka partition may show a commit marker or two.
            c.read(at(1_250 + 250 * i), 2_100 + i, i % 3);
        }
        assert_eq!(c.rate(), Some(2_000.0), "idle intervals leave it");
        // Stalled with a backlog (no worker): the rate holds too.
        c.read(at(6_250), 2_120, 5_000);
        assert_eq!(c.rate(), Some(2_000.0), "nothing settled: left out");
        // Busy again, slower: over the window it comes to the new rate.
        let mut committed = 2_120;
        for i in 1..=16 {
            committed += 100;
            c.read(at(6_250 + 250 * i), committed, 5_000);
        }
        assert_eq!(c.rate(), Some(400.0), "the last 4 s of busy time");
    }
}
