//! Accounting of every (event, subscription) pair: each acknowledged event
//! must reach every subscription of its group exactly once. A pair seen
//! once is delivered, seen more than once is delivered plus duplicates, never
//! seen is lost (or still pending if the run stopped waiting). Deliveries of
//! events the emitter never saw acknowledged (a request that timed out after
//! the event became durable) are counted apart, not as errors.

use std::collections::HashSet;

use serde::Serialize;

use crate::{emitter::Emitted, farm::FarmState};

/// The verdict on every pair.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accounts {
    /// Pairs that should be delivered.
    pub expected: u64,
    /// Pairs delivered at least once.
    pub delivered: u64,
    /// Deliveries beyond the first of a pair.
    pub duplicates: u64,
    /// Pairs never delivered.
    pub lost: u64,
    /// Deliveries of events whose emit was not acknowledged.
    pub unacknowledged_delivered: u64,
}

/// Subscriptions of group `g` when `fanout` subscriptions share a group.
pub fn group_subscriptions(g: usize, fanout: usize) -> std::ops::Range<usize> {
    g * fanout..(g + 1) * fanout
}

/// Counts every pair.
pub fn account(emitted: &Emitted, farm: &FarmState, fanout: usize) -> Accounts {
    let mut a = Accounts::default();
    for (g, acked) in emitted.acked.iter().enumerate() {
        let acked = acked.lock();
        let ids: HashSet<&str> = acked.iter().map(|s| &**s).collect();
        for sub in group_subscriptions(g, fanout) {
            let tally = farm.tallies[sub].lock();
            a.expected += ids.len() as u64;
            for (id, n) in tally.iter() {
                if ids.contains(&**id) {
                    a.delivered += 1;
                    a.duplicates += u64::from(n - 1);
                } else {
                    a.unacknowledged_delivered += u64::from(*n);
                }
            }
        }
    }
    a.lost = a.expected - a.delivered;
    a
}
