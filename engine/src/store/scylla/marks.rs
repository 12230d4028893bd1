//! Where this process's reads of the due index start, so that they skip the
//! tombstones claimed and settled deliveries leave behind. Cassandra and
//! ScyllaDB read past every deleted row in a range: on a busy schedule a
//! read from the start of a bucket meets thousands of them (and fails past
//! 100,000), and a read of a shard's bucket list from its start meets one
//! per minute that ever held a delivery.
//!
//! Two marks:
//! - per shard, the oldest bucket still listed: older ones were found empty
//!   and delisted;
//! - per `(bucket, shard)`, the due time up to which the last claim read
//!   every row, less [`LATE_MS`] for rows written with a due time computed
//!   a little earlier (by this process or another).
//!
//! Rows are written due now or later, so nothing lands behind a mark but a
//! straggler (a write that took longer than [`LATE_MS`], or a node whose
//! clock is behind). A held delivery this process released moves its own
//! mark back to it at once ([`ReadMarks::wrote`]), in case the release's
//! writes were slow enough to land behind it.
//! Every [`PULL_BACK_EVERY`] the marks are pulled back by
//! [`PULL_BACK_MS`], so another process's straggler waits at most that long; marks of
//! buckets older than that are dropped (the next read of such a bucket, if
//! it is still listed, is a whole read, after which it is delisted when
//! empty). A process starts without marks: its first reads are whole.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::{Mutex, MutexGuard};

/// Width of a due-index bucket.
pub(super) const BUCKET_MS: i64 = 60_000;

/// The due-index bucket of a due time.
pub(super) fn bucket(due_ms: i64) -> i64 {
    due_ms.div_euclid(BUCKET_MS)
}

/// Slack below a due mark for rows written late.
pub(super) const LATE_MS: i64 = 3_000;
/// How often marks are pulled back.
const PULL_BACK_EVERY: Duration = Duration::from_secs(60);
/// How far marks are pulled back.
const PULL_BACK_MS: i64 = 120_000;

/// Read marks of one process (see the module doc).
#[derive(Default)]
pub(super) struct ReadMarks {
    inner: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    since: Option<Instant>,
    buckets: HashMap<i32, i64>,
    due: HashMap<(i64, i32), i64>,
    /// Counts [`ReadMarks::wrote`] calls.
    generation: u64,
    /// The generation of the last row this process wrote per `(bucket, shard)`.
    wrote: HashMap<(i64, i32), u64>,
}

impl ReadMarks {
    fn marks(&self) -> MutexGuard<'_, Marks> {
        let mut m = self.inner.lock();
        if m.since.is_none_or(|t| t.elapsed() > PULL_BACK_EVERY) {
            m.since = Some(Instant::now());
            let floor = crate::clock::now_ms() - PULL_BACK_MS;
            let floor_bucket = bucket(floor) - 1;
            for b in m.buckets.values_mut() {
                *b = (*b).min(floor_bucket);
            }
            m.due.retain(|(b, _), _| *b >= floor_bucket);
            m.wrote.retain(|(b, _), _| *b >= floor_bucket);
            for due in m.due.values_mut() {
                *due = (*due).min(floor);
            }
        }
        m
    }

    /// The oldest bucket of `shard` worth reading (`i64::MIN`: all).
    pub(super) fn first_bucket(&self, shard: i32) -> i64 {
        self.marks()
            .buckets
            .get(&shard)
            .copied()
            .unwrap_or(i64::MIN)
    }

    /// `bucket` is the oldest of `shard` still listed after a read.
    pub(super) fn set_first_bucket(&self, shard: i32, bucket: i64) {
        self.marks().buckets.insert(shard, bucket);
    }

    /// The due time from which `(bucket, shard)` is worth reading
    /// (`i64::MIN`: the whole partition).
    pub(super) fn first_due(&self, bucket: i64, shard: i32) -> i64 {
        self.marks()
            .due
            .get(&(bucket, shard))
            .copied()
            .unwrap_or(i64::MIN)
    }

    /// Where this process's writes are: take it before a read, and pass it
    /// to [`read_through`](Self::read_through) after.
    pub(super) fn generation(&self) -> u64 {
        self.marks().generation
    }

    /// This process wrote a row due at `due` to `(bucket, shard)`: its next
    /// read there starts no later than that, and the bucket is read.
    pub(super) fn wrote(&self, bucket: i64, shard: i32, due: i64) {
        let mut m = self.marks();
        m.generation += 1;
        let generation = m.generation;
        m.wrote.insert((bucket, shard), generation);
        if let Some(first) = m.buckets.get_mut(&shard) {
            *first = (*first).min(bucket);
        }
        if let Some(from) = m.due.get_mut(&(bucket, shard)) {
            *from = (*from).min(due);
        }
    }

    /// Every row of `(bucket, shard)` due at or before `upto` was read, by a
    /// read that began at `since` ([`generation`](Self::generation)); not
    /// so if this process wrote a row there meanwhile, which that read may
    /// have missed: the mark stays where the write put it.
    pub(super) fn read_through(&self, bucket: i64, shard: i32, upto: i64, since: u64) {
        let mark = upto - LATE_MS;
        let mut m = self.marks();
        if m.wrote.get(&(bucket, shard)).is_some_and(|&g| g > since) {
            return;
        }
        let slot = m.due.entry((bucket, shard)).or_insert(mark);
        *slot = (*slot).max(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_start_open_and_only_move_forward() {
        let marks = ReadMarks::default();
        assert_eq!(marks.first_bucket(3), i64::MIN);
        assert_eq!(marks.first_due(7, 3), i64::MIN);
        marks.set_first_bucket(3, 7);
        marks.read_through(7, 3, 100_000, 0);
        marks.read_through(7, 3, 50_000, 0);
        assert_eq!(marks.first_bucket(3), 7);
        assert_eq!(marks.first_due(7, 3), 100_000 - LATE_MS);
        assert_eq!(marks.first_due(8, 3), i64::MIN, "per partition");
        assert_eq!(marks.first_bucket(4), i64::MIN, "per shard");
    }

    #[test]
    fn a_row_this_process_writes_behind_its_mark_moves_the_mark_back() {
        let marks = ReadMarks::default();
        marks.set_first_bucket(3, 7);
        marks.read_through(7, 3, 100_000, marks.generation());
        marks.wrote(7, 3, 100_000);
        assert_eq!(marks.first_due(7, 3), 100_000 - LATE_MS, "ahead: no change");
        marks.wrote(7, 3, 90_000);
        assert_eq!(marks.first_due(7, 3), 90_000, "a straggler is read next");
        marks.wrote(6, 3, 50_000);
        assert_eq!(marks.first_bucket(3), 6, "its bucket too");
        assert_eq!(marks.first_due(6, 3), i64::MIN, "unread: read whole");

        // A read that began before a write may have missed it: it does not
        // move the mark past it; a read that began after does.
        let before = marks.generation();
        marks.wrote(7, 3, 95_000);
        marks.read_through(7, 3, 120_000, before);
        assert_eq!(marks.first_due(7, 3), 90_000, "kept for the write");
        marks.read_through(7, 3, 120_000, marks.generation());
        assert_eq!(marks.first_due(7, 3), 120_000 - LATE_MS);
    }

    #[test]
    fn marks_are_pulled_back() {
        let marks = ReadMarks::default();
        let now = crate::clock::now_ms();
        let this = bucket(now);
        marks.set_first_bucket(1, this);
        marks.read_through(this, 1, now, 0);
        marks.read_through(this - 10, 1, now, 0);
        marks.inner.lock().since = Instant::now().checked_sub(PULL_BACK_EVERY * 2);
        assert!(marks.first_bucket(1) < bucket(now - PULL_BACK_MS));
        assert!(marks.first_due(this, 1) <= now - PULL_BACK_MS);
        assert!(
            marks.first_due(this, 1) > i64::MIN,
            "a recent bucket keeps a mark"
        );
        assert_eq!(
            marks.first_due(this - 10, 1),
            i64::MIN,
            "an old bucket's mark is dropped"
        );
    }
}
