//! Deliveries fan-out hands to the shards without writing them to the
//! schedule first: the event log is the schedule of first attempts (on the
//! CQL store a schedule entry would cost three writes, a read and two
//! deletes even when the first attempt succeeds; on SQLite an insert and a
//! delete with their indexes).
//!
//! Such a delivery is durable in the event log instead: fan-out does not
//! commit its event's log offset until every unscheduled delivery of the
//! event is *settled*, that is recorded (a success, a dead end) or written
//! to the schedule (a retry, a hold, a park). If the process dies first, the
//! event is read again from the committed offset and fanned out again: a
//! duplicate at worst, never a loss (the SQLite store leaves out, at the
//! re-read, what was settled since: `FanOutResult::Resumed`). A delivery
//! whose attempt the store will not record is sent again from memory when
//! a lease would have ended, still holding its offset
//! ([`super::retries::Retries::again`]); until it is settled its offset,
//! and every later one of its partition, stays uncommitted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::log::LogPosition;

/// The unsettled deliveries per log position, shared by fan-out and shards.
#[derive(Debug, Default)]
pub struct Unsettled {
    pending: Mutex<HashMap<u32, Partition>>,
}

/// One partition's unsettled deliveries, in the epoch of its current
/// assignment to this process.
#[derive(Debug, Default)]
struct Partition {
    /// Incremented by [`Unsettled::forget`]: tokens of an earlier epoch
    /// settle nothing.
    epoch: u64,
    /// Offset → deliveries of that event not yet settled.
    offsets: BTreeMap<u64, usize>,
}

impl Unsettled {
    /// Registers an event whose `deliveries` go out unscheduled; returns one
    /// token per delivery, to settle when it is.
    pub fn register(self: &Arc<Self>, position: LogPosition, deliveries: usize) -> Vec<Settle> {
        if deliveries == 0 {
            return Vec::new();
        }
        let epoch = {
            let mut pending = self.pending.lock();
            let partition = pending.entry(position.partition).or_default();
            *partition.offsets.entry(position.offset).or_default() += deliveries;
            partition.epoch
        };
        (0..deliveries)
            .map(|_| Settle {
                owner: self.clone(),
                position,
                epoch,
                settled: false,
            })
            .collect()
    }

    /// The offset to commit for `partition`, read up to `next` (exclusive):
    /// `next`, or the first offset with a delivery still unsettled.
    pub fn committable(&self, partition: u32, next: u64) -> u64 {
        self.pending
            .lock()
            .get(&partition)
            .and_then(|p| p.offsets.keys().next().copied())
            .map_or(next, |first| first.min(next))
    }

    /// `partition` went to another process, which reads its events again
    /// from the committed offset: its unsettled deliveries no longer hold
    /// an offset here, and their tokens settle nothing (should the
    /// partition come back, its new registrations start afresh).
    pub fn forget(&self, partition: u32) {
        let mut pending = self.pending.lock();
        let p = pending.entry(partition).or_default();
        p.offsets.clear();
        p.epoch += 1;
    }

    /// Deliveries not yet settled, over every partition.
    pub fn len(&self) -> usize {
        self.pending
            .lock()
            .values()
            .flat_map(|p| p.offsets.values())
            .sum()
    }

    /// Whether every delivery is settled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn settle(&self, position: LogPosition, epoch: u64) {
        let mut pending = self.pending.lock();
        let Some(p) = pending.get_mut(&position.partition) else {
            return;
        };
        if p.epoch != epoch {
            return;
        }
        if let Some(n) = p.offsets.get_mut(&position.offset) {
            *n -= 1;
            if *n == 0 {
                p.offsets.remove(&position.offset);
            }
        }
    }
}

/// One unscheduled delivery's claim on its event's log offset.
#[derive(Debug)]
pub struct Settle {
    owner: Arc<Unsettled>,
    position: LogPosition,
    epoch: u64,
    settled: bool,
}

impl Settle {
    /// The delivery is recorded or scheduled: its offset may be committed.
    pub fn done(mut self) {
        self.settled = true;
        self.owner.settle(self.position, self.epoch);
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if !self.settled {
            // Expected at shutdown (deliveries still in the shards) and
            // when a partition is revoked.
            tracing::debug!(
                partition = self.position.partition,
                offset = self.position.offset,
                "an unscheduled delivery was not settled: its event is read again by the partition's next owner"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: u32, offset: u64) -> LogPosition {
        LogPosition { partition, offset }
    }

    #[test]
    fn an_offset_is_committable_once_every_delivery_of_it_and_before_it_settled() {
        let u = Arc::new(Unsettled::default());
        let first = u.register(at(0, 5), 2);
        let second = u.register(at(0, 7), 1);
        let other = u.register(at(1, 3), 1);
        assert_eq!(u.committable(0, 10), 5);
        assert_eq!(u.committable(1, 4), 3);
        assert_eq!(u.committable(2, 9), 9, "a partition with nothing pending");
        let mut first = first.into_iter();
        first.next().unwrap().done();
        assert_eq!(u.committable(0, 10), 5, "one delivery of offset 5 is left");
        second.into_iter().for_each(Settle::done);
        assert_eq!(u.committable(0, 10), 5, "a later settle does not skip 5");
        first.next().unwrap().done();
        assert_eq!(u.committable(0, 10), 10);
        assert_eq!(u.len(), 1);
        drop(other);
        assert_eq!(
            u.committable(1, 4),
            3,
            "a dropped token never settles its offset"
        );
        assert!(u.register(at(0, 11), 0).is_empty());
        assert_eq!(u.committable(0, 12), 12);
    }

    #[test]
    fn a_revoked_partition_holds_no_offset_and_its_old_tokens_settle_nothing() {
        let u = Arc::new(Unsettled::default());
        let old = u.register(at(0, 5), 2);
        let kept = u.register(at(1, 3), 1);
        u.forget(0);
        assert_eq!(u.committable(0, 10), 10, "nothing of partition 0 is held");
        assert_eq!(u.committable(1, 9), 3, "another partition keeps its own");
        // The partition comes back and offset 5 is read again; a token of
        // the earlier assignment must not settle the new registration.
        let new = u.register(at(0, 5), 1);
        old.into_iter().for_each(Settle::done);
        assert_eq!(u.committable(0, 10), 5);
        new.into_iter().for_each(Settle::done);
        assert_eq!(u.committable(0, 10), 10);
        kept.into_iter().for_each(Settle::done);
        assert!(u.is_empty());
    }
}
