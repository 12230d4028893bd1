//! What an attempt leads to, decided in one place and without I/O: a pure
//! function from (the delivery, the endpoint's answer or the error, the
//! policy, `now`) to a plain [`Decision`] — the log record's outcome and
//! error class, the rescheduled delivery (if any), the subscription's health
//! change (failing since, or disabled), and what the endpoint's breaker and
//! in-flight limit are told. [`attempt`](super::attempt) carries a decision
//! out (records, schedules, disables); the shard ([`worker`](super::worker))
//! feeds its signal to the breaker through [`record_on_breaker`].
//!
//! How answers are read:
//! - 2xx: delivered.
//! - 410 Gone: the endpoint is gone for good: the subscription is disabled
//!   at once and the delivery is dead (replayable once re-enabled).
//! - 429, 502, 503, 504: throttling. The endpoint's in-flight limit halves,
//!   and the retry waits twice the scheduled delay — or what `Retry-After`
//!   asks, within bounds.
//! - Any other failure (other 4xx, 5xx, redirects — never followed —,
//!   timeouts, connection errors) is retried per the schedule, honouring
//!   `Retry-After` when the endpoint sends one.
//! - Refused by the open circuit (nothing sent): the same attempt is due
//!   again after the wait; no attempt is used and health is untouched.
//!
//! A subscription that has failed without a single success for the
//! configured period (default 5 days) is disabled with the reason.
//!
//! Time is `now`, given; randomness (the retry jitter) is a draw, given: the same input always decides the same.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::{
    breaker::{Breaker, BreakerState},
    client::{Answer, SendError},
    retry::RetryPolicy,
};
use crate::{
    model::{ErrorClass, Outcome, ScheduledDelivery},
    operational,
};

/// How an answer (or its absence) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 410: disable the subscription.
    Gone,
    /// 429/502/503/504: slow down.
    Throttled,
    /// Anything else: retry per the schedule.
    Failed,
}

/// What came of an attempt, reduced to what the decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The endpoint answered.
    Answered {
        /// HTTP status.
        status: u16,
        /// The parsed `Retry-After` header, if any.
        retry_after: Option<Duration>,
    },
    /// No answer (timeout, connection, TLS, SSRF guard, transport).
    Error(ErrorClass),
    /// Not sent: the endpoint's circuit is open; try again after `wait`.
    Refused {
        /// How long until the delivery is due again.
        wait: Duration,
    },
}

impl Response {
    /// Reduces what the client returned.
    pub fn of(result: &Result<Answer, SendError>) -> Self {
        match result {
            Ok(a) => Response::Answered {
                status: a.status,
                retry_after: a.retry_after,
            },
            Err(e) => Response::Error(e.class),
        }
    }

    /// How the answer is read (a refusal reads as a failure).
    pub fn verdict(&self) -> Verdict {
        match *self {
            Response::Answered { status, .. } if (200..300).contains(&status) => Verdict::Delivered,
            Response::Answered { status: 410, .. } => Verdict::Gone,
            Response::Answered {
                status: 429 | 502 | 503 | 504,
                ..
            } => Verdict::Throttled,
            _ => Verdict::Failed,
        }
    }
}

/// Reads an attempt's result.
pub fn verdict(result: &Result<Answer, SendError>) -> Verdict {
    Response::of(result).verdict()
}

/// The attempt to decide about.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The delivery as it was claimed (`attempt` is this attempt's number).
    pub delivery: &'a ScheduledDelivery,
    /// What came of it.
    pub response: Response,
    /// Since when the subscription has failed without a success, as stored
    /// (its `failing_since`), if it has.
    pub failing_since: Option<OffsetDateTime>,
    /// Since when this process has seen the subscription fail without a
    /// success (its first failure after its last success here), if it has:
    /// the streak that becomes `failing_since` once it lasts
    /// [`failing_grace`].
    pub failing_here_since: Option<OffsetDateTime>,
    /// The retry jitter draw, in [-1, 1] (see [`RetryPolicy::delay`]).
    pub jitter: f64,
}

/// The rules the decision follows.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The retry schedule and jitter.
    pub retry: &'a RetryPolicy,
    /// Longest `Retry-After` honoured; longer asks are cut to this.
    pub max_retry_after: Duration,
    /// A subscription failing without a success for this long is disabled.
    pub disable_after: Duration,
}

/// The shortest wait a `Retry-After` can ask for: never now, never the past.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What happens to the subscription's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Nothing changes.
    Unchanged,
    /// A success after failures: forget `failing_since`.
    Recovered,
    /// The first failure after a success: failing since then.
    FailingFrom(OffsetDateTime),
    /// Disable the subscription, with this reason.
    Disable(String),
}

/// What the endpoint's shard counts of a request that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// 2xx: the breaker counts a success, the in-flight limit may grow.
    pub success: bool,
    /// Throttled: the in-flight limit halves.
    pub throttled: bool,
}

/// The decision about one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// How the answer was read.
    pub verdict: Verdict,
    /// The log record's outcome.
    pub outcome: Outcome,
    /// The log record's error class (`None` for 2xx).
    pub error: Option<ErrorClass>,
    /// The delivery as rescheduled (same id and order, new attempt number
    /// and due time), or `None` when it leaves the schedule (delivered or dead).
    pub next: Option<ScheduledDelivery>,
    /// The subscription's health change.
    pub health: Health,
    /// What the shard's breaker and limits count; `None` when nothing was sent.
    pub sent: Option<Sent>,
}

impl Decision {
    /// When the next attempt is due (the log record's `next_attempt_at`).
    pub fn next_attempt_at(&self) -> Option<OffsetDateTime> {
        self.next.as_ref().and_then(|n| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(n.due_at_ms) * 1_000_000).ok()
        })
    }

    /// Whether the delivery is dead (the schedule is spent, or 410).
    pub fn is_dead(&self) -> bool {
        self.outcome == Outcome::Dead
    }
}

/// Decides what an attempt leads to.
pub fn decide(attempt: &Attempt<'_>, policy: &Policy<'_>, now: OffsetDateTime) -> Decision {
    let d = attempt.delivery;
    let verdict = attempt.response.verdict();
    let due_in = |delay: Duration, number: u32| {
        let mut next = d.clone();
        next.attempt = number;
        next.due_at_ms = ((now + delay).unix_timestamp_nanos() / 1_000_000) as i64;
        next
    };
    let error = match attempt.response {
        Response::Answered { .. } if verdict == Verdict::Delivered => None,
        Response::Answered { .. } => Some(ErrorClass::HttpStatus),
        Response::Error(class) => Some(class),
        Response::Refused { .. } => Some(ErrorClass::CircuitOpen),
    };
    let (outcome, next) = match (attempt.response, verdict) {
        (Response::Refused { wait }, _) => (Outcome::Failed, Some(due_in(wait, d.attempt))),
        (_, Verdict::Delivered) => (Outcome::Delivered, None),
        (_, Verdict::Gone) => (Outcome::Dead, None),
        (response, Verdict::Throttled | Verdict::Failed) => {
            match policy.retry.delay(d.attempt, attempt.jitter) {
                None => (Outcome::Dead, None),
                Some(scheduled) => {
                    let asked = match response {
                        Response::Answered { retry_after, .. } => retry_after,
                        _ => None,
                    };
                    let delay = match asked {
                        Some(asked) => asked.min(policy.max_retry_after).max(MIN_RETRY_AFTER),
                        None if verdict == Verdict::Throttled => scheduled * 2,
                        None => scheduled,
                    };
                    (Outcome::Failed, Some(due_in(delay, d.attempt + 1)))
                }
            }
        }
    };
    let (health, sent) = match attempt.response {
        Response::Refused { .. } => (Health::Unchanged, None),
        _ => (
            health(
                verdict,
                attempt.failing_since,
                attempt.failing_here_since,
                policy,
                now,
            ),
            Some(Sent {
                success: verdict == Verdict::Delivered,
                throttled: verdict == Verdict::Throttled,
            }),
        ),
    };
    Decision {
        verdict,
        outcome,
        error,
        next,
        health,
        sent,
    }
}

/// How long failures must go on without a success before the subscription
/// is stored as failing: a minute, or half the disable period if that is
/// shorter. A failure among successes (a flaky endpoint under load) then
/// writes nothing, where it once flipped the subscription's row (a read
/// and a compare-and-set on the CQL store) at every failure and the next
/// success.
pub fn failing_grace(policy: &Policy<'_>) -> Duration {
    Duration::from_secs(60).min(policy.disable_after / 2)
}

/// The health change an answer makes, given since when the subscription has
/// failed without a success, as stored and as this process saw it.
fn health(
    verdict: Verdict,
    stored: Option<OffsetDateTime>,
    here: Option<OffsetDateTime>,
    policy: &Policy<'_>,
    now: OffsetDateTime,
) -> Health {
    match verdict {
        Verdict::Delivered if stored.is_some() => Health::Recovered,
        Verdict::Delivered => Health::Unchanged,
        Verdict::Gone => Health::Disable("the endpoint answered 410 Gone".into()),
        Verdict::Throttled | Verdict::Failed => {
            let since = match (stored, here) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now),
            };
            let failing = Duration::try_from(now - since).unwrap_or_default();
            if failing >= policy.disable_after {
                Health::Disable(format!(
                    "every delivery failed since {since} ({} without a success)",
                    humantime::format_duration(failing)
                ))
            } else if stored.is_none() && failing >= failing_grace(policy) {
                Health::FailingFrom(since)
            } else {
                Health::Unchanged
            }
        }
    }
}

/// A change of an endpoint's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerChange {
    /// The state before the request was counted.
    pub before: BreakerState,
    /// The state after.
    pub after: BreakerState,
}

impl BreakerChange {
    /// The operational event telling the tenant, if this change is one to tell.
    pub fn announcement(&self) -> Option<&'static str> {
        match (self.before, self.after) {
            (BreakerState::Closed, BreakerState::Open) => Some(operational::CIRCUIT_OPENED),
            (_, BreakerState::Closed) => Some(operational::CIRCUIT_CLOSED),
            _ => None,
        }
    }
}

/// Counts a sent request on the endpoint's breaker; the change, if any.
pub fn record_on_breaker(breaker: &mut Breaker, sent: Sent, now: Instant) -> Option<BreakerChange> {
    let before = breaker.state(now);
    breaker
        .record(sent.success, now)
        .map(|after| BreakerChange { before, after })
}

/// Where a delivery stands in its subscription's order: the event's log
/// position, ties broken by delivery id.
pub fn order_key(d: &ScheduledDelivery) -> (i64, &str) {
    (d.seq, d.delivery_id.as_str())
}

/// Whether `candidate` may be taken from the schedule, given the deliveries
/// of the schedule (`pending`: due, waiting for a retry, or in flight). An
/// unordered delivery always may; an ordered one only when no delivery of
/// its subscription comes before it. A delivery leaves the schedule only
/// when [`decide`] gives no `next` (delivered or dead), and a rescheduled one
/// keeps its place, so an ordered subscription's next delivery is released
/// only once its head is finished. Both stores apply this rule in their
/// claim (the embedded one in SQL, the CQL one through its order table).
pub fn releasable<'a>(
    candidate: &ScheduledDelivery,
    pending: impl IntoIterator<Item = &'a ScheduledDelivery>,
) -> bool {
    !candidate.ordered
        || !pending.into_iter().any(|o| {
            o.subscription_id == candidate.subscription_id && order_key(o) < order_key(candidate)
        })
}

#[cfg(test)]
#[path = "decide_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Result<Answer, SendError> {
        Ok(Answer {
            status,
            body: String::new(),
            location: None,
            retry_after: None,
            latency: Duration::ZERO,
        })
    }

    #[test]
    fn answers_are_read_like_the_best_peers_do() {
        assert_eq!(verdict(&answer(200)), Verdict::Delivered);
        assert_eq!(verdict(&answer(204)), Verdict::Delivered);
        assert_eq!(verdict(&answer(410)), Verdict::Gone);
        for s in [429, 502, 503, 504] {
            assert_eq!(verdict(&answer(s)), Verdict::Throttled, "{s}");
        }
        for s in [301, 400, 404, 500] {
            assert_eq!(verdict(&answer(s)), Verdict::Failed, "{s}");
        }
        let timeout = Err(SendError {
            class: ErrorClass::Timeout,
            message: String::new(),
            latency: Duration::ZERO,
        });
        assert_eq!(verdict(&timeout), Verdict::Failed);
    }
}
