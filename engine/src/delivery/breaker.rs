//! A circuit breaker per endpoint: closed → open after N consecutive
//! failures → one half-open probe after the open period → closed on success,
//! open again (for twice as long, up to a cap) on failure.
//!
//! It is plain state owned by the endpoint's shard task, driven by the
//! caller's clock, so it needs no locks and tests need no sleeping.

use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the open period ends.
    Open,
    /// One probe is allowed through.
    HalfOpen,
}

/// What the breaker says about the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Allow,
    /// Send it as the single half-open probe.
    Probe,
    /// Don't send it: the circuit is open.
    Reject,
}

/// One endpoint's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    state: BreakerState,
    consecutive_failures: u32,
    threshold: u32,
    base_open_for: Duration,
    open_for: Duration,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

/// Longest an open circuit waits before probing.
const MAX_OPEN_FOR: Duration = Duration::from_secs(600);

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures
    /// and stays open for `open_for` before its first probe.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            threshold: threshold.max(1),
            base_open_for: open_for,
            open_for,
            opened_at: None,
            probe_in_flight: false,
        }
    }

    /// The current state (an open breaker whose period ended reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) if now >= at + self.open_for => BreakerState::HalfOpen,
            (s, _) => s,
        }
    }

    /// The state as last changed by [`admit`](Self::admit) or
    /// [`record`](Self::record): an open breaker stays open until its probe.
    pub fn current(&self) -> BreakerState {
        self.state
    }

    /// How long until an open breaker lets a probe through (zero unless open).
    pub fn remaining_open(&self, now: Instant) -> Duration {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) => (at + self.open_for).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Whether a request may go now.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Allow,
            BreakerState::Open => Admission::Reject,
            BreakerState::HalfOpen if self.probe_in_flight => Admission::Reject,
            BreakerState::HalfOpen => {
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    /// Records a request's outcome; returns the new state if it changed.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<BreakerState> {
        let before = self.state;
        if success {
            self.consecutive_failures = 0;
            self.probe_in_flight = false;
            self.state = BreakerState::Closed;
            self.open_for = self.base_open_for;
            self.opened_at = None;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            match self.state {
                BreakerState::HalfOpen => {
                    self.probe_in_flight = false;
                    self.open_for = (self.open_for * 2).min(MAX_OPEN_FOR);
                    self.open(now);
                }
                BreakerState::Closed if self.consecutive_failures >= self.threshold => {
                    self.open(now)
                }
                _ => {}
            }
        }
        (self.state != before).then_some(self.state)
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_once_and_backs_off() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Allow);
            assert_eq!(b.record(false, t0), None);
        }
        assert_eq!(b.record(false, t0), Some(BreakerState::Open));
        assert_eq!(b.admit(t0 + Duration::from_secs(9)), Admission::Reject);
        assert_eq!(
            b.remaining_open(t0 + Duration::from_secs(9)),
            Duration::from_secs(1)
        );

        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1), Admission::Reject, "only one probe at a time");
        assert_eq!(b.record(false, t1), Some(BreakerState::Open));
        // Open twice as long now.
        assert_eq!(b.admit(t1 + Duration::from_secs(19)), Admission::Reject);
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(b.admit(t2), Admission::Probe);
        assert_eq!(b.record(true, t2), Some(BreakerState::Closed));
        assert_eq!(b.admit(t2), Admission::Allow);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record(false, t);
        b.record(true, t);
        assert_eq!(b.record(false, t), None);
        assert_eq!(b.state(t), BreakerState::Closed);
    }
}
