//! What a failed attempt leads to: another attempt after the schedule's next
//! delay (with jitter, so a recovering endpoint is not hit by a synchronised
//! wave), or death once the schedule is spent.

use std::time::Duration;

use rand::Rng;

use crate::config::RetrySchedule;

/// The decision after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Delivered; nothing more to do.
    Done,
    /// Try again after this delay.
    RetryAfter(Duration),
    /// The schedule is spent; the delivery is dead (and replayable).
    Dead,
}

/// Retry policy: the schedule plus jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    schedule: RetrySchedule,
    jitter: f64,
}

impl RetryPolicy {
    /// A policy following `schedule` with ±`jitter` (a fraction) per delay.
    pub fn new(schedule: RetrySchedule, jitter: f64) -> Self {
        Self {
            schedule,
            jitter: jitter.clamp(0.0, 0.5),
        }
    }

    /// The decision after attempt number `attempt` (1-based) succeeded or failed.
    pub fn decide(&self, attempt: u32, success: bool, rng: &mut impl Rng) -> RetryAction {
        if success {
            return RetryAction::Done;
        }
        match self.delay(attempt, self.draw(rng)) {
            None => RetryAction::Dead,
            Some(delay) => RetryAction::RetryAfter(delay),
        }
    }

    /// A random jitter draw for [`delay`](Self::delay), uniform in [-1, 1]
    /// (0 when the policy has no jitter, so no randomness is used).
    pub fn draw(&self, rng: &mut impl Rng) -> f64 {
        if self.jitter > 0.0 {
            rng.gen_range(-1.0..=1.0)
        } else {
            0.0
        }
    }

    /// The delay after attempt number `attempt` (1-based) failed, `None` once
    /// the schedule is spent. `draw` (in [-1, 1], clamped) picks the point in
    /// the jitter range: the delay is the schedule's times `1 + jitter × draw`.
    pub fn delay(&self, attempt: u32, draw: f64) -> Option<Duration> {
        let base = self.schedule.0.get(attempt.saturating_sub(1) as usize)?;
        let draw = if draw.is_nan() {
            0.0
        } else {
            draw.clamp(-1.0, 1.0)
        };
        Some(base.mul_f64(1.0 + self.jitter * draw))
    }

    /// The jitter fraction in force (clamped to [0, 0.5]).
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// How many attempts a delivery gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.0.len() as u32 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_with_bounded_jitter_then_dies() {
        let policy = RetryPolicy::new("10s,1m".parse().unwrap(), 0.1);
        let mut rng = rand::thread_rng();
        assert_eq!(policy.decide(1, true, &mut rng), RetryAction::Done);
        for _ in 0..200 {
            let RetryAction::RetryAfter(d) = policy.decide(1, false, &mut rng) else {
                panic!("expected a retry");
            };
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
            let RetryAction::RetryAfter(d) = policy.decide(2, false, &mut rng) else {
                panic!("expected a retry");
            };
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
        assert_eq!(policy.decide(3, false, &mut rng), RetryAction::Dead);
        assert_eq!(policy.max_attempts(), 3);
    }

    #[test]
    fn an_empty_schedule_means_one_attempt() {
        let policy = RetryPolicy::new("".parse().unwrap(), 0.1);
        assert_eq!(
            policy.decide(1, false, &mut rand::thread_rng()),
            RetryAction::Dead
        );
    }
}
