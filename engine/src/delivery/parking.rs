//! One endpoint's parked deliveries, as its shard counts them: how many
//! wait in the schedule, how many are still to be written there, and
//! whether a release is under way (see `worker.rs` for when a shard parks
//! and releases, and [`super::hold`] for the store side).
//!
//! The count is an estimate (another process may have parked some, or
//! released them); a release that finds none ends it. A release must not
//! run while deliveries of the endpoint are still to be written: it would
//! find none of them and end the count, and they would wait for their
//! re-check instead of the queue draining.

use std::time::Duration;

use tokio::time::Instant;

/// How long a shard waits for a released chunk to come back from the
/// scheduler before it releases the next one regardless.
pub(super) const RELEASE_PATIENCE: Duration = Duration::from_secs(1);

/// The parking state of one endpoint.
#[derive(Debug, Default)]
pub(super) struct Parking {
    /// Parked in the schedule and not released yet (an estimate).
    parked: u64,
    /// Waiting to be written to the schedule, or being written.
    unwritten: u64,
    /// Whether a release is under way.
    releasing: bool,
    /// Released deliveries not yet back from the scheduler.
    awaiting: u64,
    /// When the last release that found some ended.
    released_at: Option<Instant>,
    /// Whether a park write ended while the release under way ran: that
    /// release may have looked before the rows were there, so finding none
    /// does not end the count.
    written_while_releasing: bool,
}

impl Parking {
    /// An endpoint first seen by this shard: `inherited` deliveries are
    /// assumed parked (by a process before this one), so the first release
    /// looks.
    pub fn new(inherited: u64) -> Self {
        Self {
            parked: inherited,
            ..Self::default()
        }
    }

    /// Nothing parked, to be written or being released.
    pub fn idle(&self) -> bool {
        self.parked == 0 && self.unwritten == 0 && !self.releasing
    }

    /// A delivery goes to be parked (written later, see [`Self::written`]).
    pub fn queue(&mut self) {
        self.parked += 1;
        self.unwritten += 1;
    }

    /// A park write of `n` of them ended (written or not: a failed one
    /// leaves them leased).
    pub fn written(&mut self, n: u64) {
        self.unwritten = self.unwritten.saturating_sub(n);
        self.written_while_releasing |= self.releasing;
    }

    /// Fan-out parked `n` new deliveries itself (written already).
    pub fn add_written(&mut self, n: u64) {
        self.parked += n;
        self.written_while_releasing |= self.releasing;
    }

    /// A delivery of the endpoint reached the shard (perhaps one released).
    pub fn arrived(&mut self) {
        self.awaiting = self.awaiting.saturating_sub(1);
    }

    /// Whether there is something to release and nothing stands in the
    /// way but the endpoint's queue and circuit: something is parked, all
    /// of it written, and no release is under way.
    pub fn releasable(&self) -> bool {
        self.parked > 0 && self.unwritten == 0 && !self.releasing
    }

    /// Whether the last chunk released is not back yet, and has taken less
    /// than [`RELEASE_PATIENCE`]: the next release waits for it.
    pub fn awaiting_chunk(&self, now: Instant) -> bool {
        self.awaiting > 0
            && self
                .released_at
                .is_some_and(|at| now.duration_since(at) < RELEASE_PATIENCE)
    }

    /// A release starts.
    pub fn releasing(&mut self) {
        self.releasing = true;
        self.written_while_releasing = false;
    }

    /// A release ended: it made `released` deliveries due (`None`: it
    /// failed). Whether it found some (then the next release waits for
    /// them to come back, or for [`RELEASE_PATIENCE`]).
    pub fn released(&mut self, released: Option<u64>, now: Instant) -> bool {
        self.releasing = false;
        match released {
            // None left: done, unless more are still to be written, or were
            // written while it looked (it may have looked before them).
            Some(0) if self.unwritten == 0 && !self.written_while_releasing => self.parked = 0,
            Some(0) | None => {}
            Some(n) => {
                // Keep going (one more release finds none) once these come back.
                self.parked = self.parked.saturating_sub(n).max(1);
                self.awaiting = n;
                self.released_at = Some(now);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Parking {
        fn may_release(&self, now: Instant) -> bool {
            self.releasable() && !self.awaiting_chunk(now)
        }
    }

    #[test]
    fn deliveries_queued_to_park_during_a_release_that_finds_none_are_released_later() {
        let now = Instant::now();
        // A new endpoint looks for inherited deliveries first.
        let mut p = Parking::new(1);
        assert!(p.may_release(now));
        p.releasing();
        // Meanwhile its queue fills and 88 deliveries go to be parked.
        for _ in 0..88 {
            p.queue();
        }
        // The look finds none: the 88 are not written yet.
        assert!(!p.released(Some(0), now));
        assert!(!p.idle(), "the queued parks are still counted");
        assert!(!p.may_release(now), "not before they are written");
        p.written(88);
        assert!(p.may_release(now));
    }

    #[test]
    fn a_release_that_looked_before_a_park_write_ended_does_not_end_the_count() {
        let now = Instant::now();
        // A restart: the first delivery looks for inherited parked ones.
        let mut p = Parking::new(1);
        p.releasing();
        // Meanwhile 76 go to be parked, and their write ends before the
        // look's answer, which found none (it ran before the rows were there).
        for _ in 0..76 {
            p.queue();
        }
        p.written(76);
        assert!(!p.released(Some(0), now));
        assert!(!p.idle(), "the 76 are still counted");
        assert!(p.may_release(now), "and the next release looks for them");
        p.releasing();
        assert!(p.released(Some(5), now));

        // The same with fan-out's parks, written already.
        let mut p = Parking::new(1);
        p.releasing();
        p.add_written(3);
        assert!(!p.released(Some(0), now));
        assert!(p.may_release(now), "fan-out's parks are looked for again");
        p.releasing();
        assert!(!p.released(Some(0), now));
        assert!(
            p.idle(),
            "a look that began after every write ends the count"
        );
    }

    #[test]
    fn a_release_waits_for_its_chunk_or_its_patience_and_ends_on_none() {
        let now = Instant::now();
        let mut p = Parking::new(0);
        assert!(p.idle() && !p.may_release(now));
        for _ in 0..10 {
            p.queue();
        }
        assert!(!p.idle() && !p.may_release(now), "written first");
        p.written(10);
        p.releasing();
        assert!(!p.may_release(now), "one release at a time");
        assert!(p.released(Some(5), now));
        assert!(!p.may_release(now), "the chunk is not back");
        assert!(p.may_release(now + RELEASE_PATIENCE), "or took too long");
        (0..5).for_each(|_| p.arrived());
        assert!(p.may_release(now));
        p.releasing();
        assert!(p.released(Some(5), now));
        (0..5).for_each(|_| p.arrived());
        assert!(p.may_release(now), "one more release finds none");
        p.releasing();
        assert!(!p.released(Some(0), now));
        assert!(p.idle());
        p.add_written(3);
        assert!(p.may_release(now), "fan-out's parks are written already");
        p.releasing();
        assert!(!p.released(None, now), "a failed release");
        assert!(p.may_release(now), "is tried again");
    }
}
