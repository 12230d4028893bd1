//! Per-endpoint flow control owned by the shard: a token bucket for the
//! subscription's rate limit, an adaptive in-flight limit that halves
//! when the endpoint throttles (429/502/503/504) and grows back by one per
//! success up to the configured maximum (AIMD, as TCP does), and the
//! endpoint's pace, which says how many deliveries its queue may hold.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most a tenth of a
/// second's worth (at least one), so bursts stay small.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `per_second`.
    pub fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second.max(1));
        let capacity = (rate / 10.0).max(1.0);
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }
}

/// The in-flight limit of one endpoint.
#[derive(Debug)]
pub struct Concurrency {
    max: usize,
    current: usize,
}

impl Concurrency {
    /// Starts at `max`.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self { max, current: max }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        self.current
    }

    /// The endpoint asked us to slow down: halve the limit (at least 1).
    pub fn throttled(&mut self) {
        self.current = (self.current / 2).max(1);
    }

    /// A success: one more request may be in flight, up to the maximum.
    pub fn succeeded(&mut self) {
        self.current = (self.current + 1).min(self.max);
    }

    /// Changes the maximum (the subscription was updated).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
        self.current = self.current.min(self.max);
    }
}

/// An answer older than this (with requests in flight) means the endpoint
/// stalled: its pace no longer says anything.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// How fast an endpoint answers, from the latency of its recent requests
/// (a moving average), and so how many deliveries its queue may hold: the
/// configured number, or, when that is more, what it answers in a given
/// time at its in-flight limit, up to a share of the hand-off budget. A
/// fast endpoint fed a burst then keeps its deliveries in memory instead
/// of parking them in the store (on the CQL store a row, a claim and a
/// delete each); a slow one, or one that stopped answering, gets the
/// configured queue, so it never holds the whole hand-off budget.
#[derive(Debug, Default)]
pub struct Pace {
    /// Seconds per request, smoothed.
    latency: Option<f64>,
    last_answer: Option<Instant>,
}

impl Pace {
    /// A request answered (or failed) after `latency`.
    pub fn answered(&mut self, latency: Duration, now: Instant) {
        let l = latency.as_secs_f64();
        self.latency = Some(self.latency.map_or(l, |avg| avg + (l - avg) / 8.0));
        self.last_answer = Some(now);
    }

    /// The deliveries the queue may hold: at least `configured`, or what
    /// the endpoint answers in `window` at `limit` requests at once (no
    /// more than `share`), while it answers lately (`in_flight` requests
    /// out).
    pub fn queue_cap(
        &self,
        configured: usize,
        (window, share): (Duration, usize),
        limit: usize,
        in_flight: usize,
        now: Instant,
    ) -> usize {
        let (Some(latency), Some(last)) = (self.latency, self.last_answer) else {
            return configured;
        };
        if in_flight > 0 && now.saturating_duration_since(last) > STALE_AFTER {
            return configured;
        }
        let per_second = limit as f64 / latency.max(1e-4);
        configured.max(((per_second * window.as_secs_f64()) as usize).min(share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_endpoint_may_queue_seconds_of_its_pace_a_slow_or_stalled_one_the_configured_queue() {
        const W: (Duration, usize) = (Duration::from_secs(2), 100_000);
        let t0 = Instant::now();
        let mut pace = Pace::default();
        // Nothing answered yet: the configured queue.
        assert_eq!(pace.queue_cap(2048, W, 32, 0, t0), 2048);
        // 2 ms per request, 32 at once: 16,000 a second, two seconds' worth.
        for _ in 0..50 {
            pace.answered(Duration::from_millis(2), t0);
        }
        let fast = pace.queue_cap(2048, W, 32, 32, t0);
        assert!((31_000..=33_000).contains(&fast), "{fast}");
        // The in-flight limit halved (throttled): half the pace.
        let halved = pace.queue_cap(2048, W, 16, 16, t0);
        assert!((15_000..=17_000).contains(&halved), "{halved}");
        // Its share of the hand-off budget bounds it, not the configured queue.
        let shared = (Duration::from_secs(2), 4096);
        assert_eq!(pace.queue_cap(2048, shared, 32, 32, t0), 4096);
        assert_eq!(pace.queue_cap(8192, shared, 32, 32, t0), 8192);
        // No answer for over a second with requests out: it stalled.
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(pace.queue_cap(2048, W, 32, 32, later), 2048);
        // Idle (nothing in flight) since: its pace still holds.
        assert_eq!(pace.queue_cap(2048, W, 32, 0, later), fast);
        // It slows to 10 s a request: the average follows, the queue shrinks
        // back to the configured one.
        for _ in 0..100 {
            pace.answered(Duration::from_secs(10), later);
        }
        assert_eq!(pace.queue_cap(2048, W, 32, 32, later), 2048);
        // No window: the configured queue whatever the pace.
        pace.answered(Duration::from_millis(2), later);
        assert_eq!(
            pace.queue_cap(2048, (Duration::ZERO, 100_000), 32, 32, later),
            2048
        );
    }

    #[test]
    fn bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20, t0);
        // A tenth of a second's burst (2 tokens), then one every 50 ms.
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(50) && wait > Duration::from_millis(40),
            "{wait:?}"
        );
        assert!(b.take(t0 + Duration::from_millis(50)).is_ok());
        // Over 10 s, at most rate × 10 + burst tokens.
        let mut taken = 0;
        let mut t = t0 + Duration::from_millis(50);
        let end = t0 + Duration::from_secs(10);
        while t < end {
            if b.take(t).is_ok() {
                taken += 1;
            }
            t += Duration::from_millis(5);
        }
        assert!((195..=202).contains(&taken), "{taken}");
    }

    #[test]
    fn concurrency_halves_on_throttle_and_recovers_by_one() {
        let mut c = Concurrency::new(16);
        c.throttled();
        assert_eq!(c.limit(), 8);
        c.throttled();
        c.throttled();
        c.throttled();
        c.throttled();
        assert_eq!(c.limit(), 1);
        c.succeeded();
        assert_eq!(c.limit(), 2);
        for _ in 0..100 {
            c.succeeded();
        }
        assert_eq!(c.limit(), 16);
        c.set_max(4);
        assert_eq!(c.limit(), 4);
    }
}
