//! A circuit breaker per endpoint. It opens when an endpoint fails N times
//! in a row, or when the failure ratio over a sliding window passes a
//! threshold (with a minimum number of requests, so two failures out of
//! three don't count). Open, it refuses requests; after the open period one
//! half-open probe goes through: success closes it, failure opens it again
//! for twice as long (up to a cap).
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

/// Thresholds of the breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Failure ratio over `window` that opens the circuit (0 < ratio ≤ 1).
    pub failure_ratio: f64,
    /// Length of the sliding window for the ratio.
    pub window: Duration,
    /// Requests the window must hold before the ratio counts.
    pub min_requests: u32,
    /// Open period before the first probe.
    pub open_for: Duration,
    /// Longest open period after repeated failed probes.
    pub max_open_for: Duration,
}

impl BreakerConfig {
    /// The thresholds a delivery configuration sets.
    pub fn of(d: &crate::config::DeliveryConfig) -> Self {
        Self {
            consecutive_failures: d.breaker_failure_threshold,
            failure_ratio: d.breaker_failure_ratio,
            window: d.breaker_window,
            min_requests: d.breaker_min_requests,
            open_for: d.breaker_open_for,
            max_open_for: d.breaker_max_open_for.max(d.breaker_open_for),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: Duration::from_secs(60),
            min_requests: 20,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(600),
        }
    }
}

const BUCKETS: usize = 10;

/// Success and failure counts over a sliding window, in ten buckets.
#[derive(Debug)]
struct Window {
    bucket_len: Duration,
    start: Instant,
    buckets: [(u32, u32); BUCKETS],
    head: usize,
}

impl Window {
    fn new(window: Duration, now: Instant) -> Self {
        Self {
            bucket_len: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            start: now,
            buckets: [(0, 0); BUCKETS],
            head: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let mut steps = 0;
        while now >= self.start + self.bucket_len && steps <= BUCKETS {
            self.start += self.bucket_len;
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = (0, 0);
            steps += 1;
        }
        if steps > BUCKETS {
            self.start = now;
        }
    }

    fn record(&mut self, success: bool, now: Instant) {
        self.advance(now);
        let b = &mut self.buckets[self.head];
        if success {
            b.0 += 1;
        } else {
            b.1 += 1;
        }
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets
            .iter()
            .fold((0, 0), |(s, f), b| (s + b.0, f + b.1))
    }

    fn clear(&mut self) {
        self.buckets = [(0, 0); BUCKETS];
    }
}

/// One endpoint's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    window: Window,
    open_for: Duration,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Self {
            window: Window::new(config.window, now),
            open_for: config.open_for,
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
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

    /// Whether the half-open probe is under way.
    pub fn probing(&self) -> bool {
        self.probe_in_flight
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
        self.window.record(success, now);
        if success {
            self.consecutive_failures = 0;
            if self.state != BreakerState::Open {
                self.probe_in_flight = false;
                self.state = BreakerState::Closed;
                self.open_for = self.config.open_for;
                self.opened_at = None;
            }
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            match self.state {
                BreakerState::HalfOpen => {
                    self.probe_in_flight = false;
                    self.open_for = (self.open_for * 2).min(self.config.max_open_for);
                    self.open(now);
                }
                BreakerState::Closed if self.tripped() => self.open(now),
                _ => {}
            }
        }
        (self.state != before).then_some(self.state)
    }

    fn tripped(&self) -> bool {
        if self.consecutive_failures >= self.config.consecutive_failures.max(1) {
            return true;
        }
        let (ok, failed) = self.window.totals();
        let total = ok + failed;
        total >= self.config.min_requests.max(1)
            && f64::from(failed) / f64::from(total) >= self.config.failure_ratio
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(consecutive: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: consecutive,
            open_for: Duration::from_secs(10),
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_probes_once_and_backs_off() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(3), t0);
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
    fn a_success_resets_the_consecutive_count() {
        let t = Instant::now();
        let mut b = Breaker::new(config(2), t);
        b.record(false, t);
        b.record(true, t);
        assert_eq!(b.record(false, t), None);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn the_failure_ratio_opens_it_once_the_window_holds_enough_requests() {
        let t = Instant::now();
        let mut b = Breaker::new(
            BreakerConfig {
                consecutive_failures: 100,
                failure_ratio: 0.5,
                min_requests: 10,
                ..BreakerConfig::default()
            },
            t,
        );
        // Alternating: never two failures in a row, but half of them fail.
        for i in 0..9 {
            assert_eq!(b.record(i % 2 == 0, t), None, "request {i}");
        }
        assert_eq!(b.record(false, t), Some(BreakerState::Open));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t = Instant::now();
        let mut b = Breaker::new(
            BreakerConfig {
                consecutive_failures: 100,
                failure_ratio: 0.5,
                min_requests: 4,
                window: Duration::from_secs(10),
                ..BreakerConfig::default()
            },
            t,
        );
        b.record(false, t);
        b.record(false, t);
        b.record(true, t);
        // Much later, the old failures have aged out.
        let later = t + Duration::from_secs(30);
        b.record(true, later);
        b.record(false, later);
        b.record(true, later);
        assert_eq!(b.record(true, later), None);
        assert_eq!(b.state(later), BreakerState::Closed);
    }
}
