//! Per-endpoint flow control owned by the shard: a token bucket for the
//! subscription's rate limit, and an adaptive in-flight limit that halves
//! when the endpoint throttles (429/502/503/504) and grows back by one per
//! success up to the configured maximum (AIMD, as TCP does).

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

#[cfg(test)]
mod tests {
    use super::*;

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
