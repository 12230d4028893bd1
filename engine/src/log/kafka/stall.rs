//! Telling a Kafka consumer that will read nothing more, from librdkafka's
//! statistics (docs/reliability.md, *A worker that reads nothing after a
//! single broker's restart*).
//!
//! Two stalls after a broker restart leave a consumer polling for ever with
//! no error: its group has no coordinator and never looks for one again
//! (librdkafka, since 2.10, removes a broker that a metadata response left
//! out, and re-bootstraps only when known brokers go *down*), or its group
//! is up but the committed offsets of its partitions never arrive. A new
//! consumer, which bootstraps afresh, reads again; a [`StallWatch`] says
//! when one is due.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rdkafka::Statistics;

/// How often librdkafka reports a consumer's statistics
/// (`statistics.interval.ms`).
pub const STATS_EVERY: Duration = Duration::from_secs(5);
/// How long a group may go without a coordinator, or a partition without
/// its committed offset, before the consumer counts as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// Fed each statistics report of one consumer; says when it stalled.
#[derive(Debug, Default)]
pub struct StallWatch {
    stalled: AtomicBool,
    /// Since when, as the statistics last said, an assigned partition has
    /// waited for its committed offset.
    offsets_awaited_since: Mutex<Option<Instant>>,
    /// Since when, as the statistics last said, the group has not been `up`.
    coordinator_missing_since: Mutex<Option<Instant>>,
}

impl StallWatch {
    /// Notes what a statistics report says: a group not `up` in every
    /// report for [`STALLED_AFTER`], or an assigned partition whose
    /// committed offset has been looked up (`offset-query`, `offset-wait`)
    /// for as long.
    pub fn observe(&self, statistics: &Statistics) {
        self.observe_at(statistics, Instant::now());
    }

    fn observe_at(&self, statistics: &Statistics, now: Instant) {
        let no_coordinator = statistics.cgrp.as_ref().is_some_and(|g| g.state != "up");
        let awaiting_offsets = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .any(|p| {
                p.partition >= 0 && matches!(p.fetch_state.as_str(), "offset-query" | "offset-wait")
            });
        // Both `|` (not `||`): each timer hears of every report.
        if lasted(&self.offsets_awaited_since, awaiting_offsets, now)
            | lasted(&self.coordinator_missing_since, no_coordinator, now)
        {
            self.stalled.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the consumer stalled since the last call (the flag is reset).
    pub fn take(&self) -> bool {
        self.stalled.swap(false, Ordering::Relaxed)
    }
}

/// Whether a condition the reports have shown without a break since
/// `since` has lasted [`STALLED_AFTER`] at `now`. Timed here, not by the
/// group's `stateage`: a group looking for its coordinator can pass from
/// one state without it to another (`query-coord`, `wait-coord`, …), and
/// each change starts `stateage` again.
fn lasted(since: &Mutex<Option<Instant>>, holds: bool, now: Instant) -> bool {
    let mut since = since.lock();
    if !holds {
        *since = None;
        return false;
    }
    now.duration_since(*since.get_or_insert(now)) >= STALLED_AFTER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: &str, age_ms: i64) -> Statistics {
        serde_json::from_value(serde_json::json!({
            "name": "c", "client_id": "c", "type": "consumer", "ts": 0, "time": 0,
            "age": 0, "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0,
            "msg_size_max": 0, "simple_cnt": 0, "metadata_cache_cnt": 0,
            "brokers": {}, "topics": {}, "tx": 0, "tx_bytes": 0, "rx": 0,
            "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0, "rxmsgs": 0,
            "rxmsg_bytes": 0,
            "cgrp": {"state": state, "stateage": age_ms, "join_state": "steady",
                     "rebalance_age": 0, "rebalance_cnt": 0,
                     "rebalance_reason": "", "assignment_size": 0}
        }))
        .unwrap()
    }

    #[test]
    fn offsets_awaited_for_the_whole_bound_count_as_stalled_and_an_answer_resets() {
        let since = Mutex::new(None);
        let t0 = Instant::now();
        assert!(!lasted(&since, true, t0));
        assert!(!lasted(&since, true, t0 + STALLED_AFTER / 2));
        assert!(lasted(&since, true, t0 + STALLED_AFTER));
        assert!(!lasted(&since, false, t0 + STALLED_AFTER), "answered");
        assert!(
            !lasted(&since, true, t0 + STALLED_AFTER * 2),
            "timed afresh"
        );
    }

    #[test]
    fn a_group_without_a_coordinator_for_the_bound_is_stalled_once_taken() {
        let watch = StallWatch::default();
        let t0 = Instant::now();
        watch.observe_at(&report("up", 600_000), t0);
        watch.observe_at(&report("query-coord", 1_000), t0);
        assert!(!watch.take());
        watch.observe_at(&report("query-coord", 1_000), t0 + STALLED_AFTER);
        assert!(watch.take());
        assert!(!watch.take(), "taken once");
        watch.observe_at(&report("up", 0), t0 + STALLED_AFTER * 2);
        watch.observe_at(&report("query-coord", 0), t0 + STALLED_AFTER * 2);
        assert!(
            !watch.take(),
            "a coordinator found in between starts the time again"
        );
    }

    /// A group that passes between states without a coordinator
    /// (`query-coord`, `wait-coord`) starts `stateage` again at each
    /// change: timed by `stateage`, as until 2026-12-07, it would never
    /// count as stalled.
    #[test]
    fn a_group_that_changes_states_without_a_coordinator_is_stalled_all_the_same() {
        let watch = StallWatch::default();
        let t0 = Instant::now();
        let states = ["query-coord", "wait-coord"];
        let mut stalled = false;
        for i in 0..=6u32 {
            let t = t0 + STATS_EVERY * i;
            watch.observe_at(&report(states[i as usize % 2], 1_000), t);
            stalled |= watch.take();
        }
        assert!(stalled, "30 s without a coordinator, whatever the state");
    }
}
