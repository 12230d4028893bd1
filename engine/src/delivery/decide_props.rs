//! Property tests of the delivery decision: retries, Retry-After, 2xx, 410,
//! failing too long, the breaker and ordered release. Time is an injected
//! `now` (and breaker instants offset from one origin); nothing sleeps.

use std::time::Duration;

use proptest::prelude::*;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::*;
use crate::{
    config::RetrySchedule,
    delivery::breaker::{Admission, BreakerConfig},
};

const ERRORS: [ErrorClass; 7] = [
    ErrorClass::Timeout,
    ErrorClass::Connect,
    ErrorClass::Tls,
    ErrorClass::HttpStatus,
    ErrorClass::SsrfBlocked,
    ErrorClass::Transport,
    ErrorClass::Auth,
];

fn delivery(id: &str, subscription: &str, seq: i64, attempt: u32) -> ScheduledDelivery {
    ScheduledDelivery {
        delivery_id: id.into(),
        tenant_id: "ten_1".into(),
        event_id: format!("evt_{seq}"),
        subscription_id: subscription.into(),
        attempt,
        replay_of: None,
        is_replay: false,
        due_at_ms: 0,
        seq,
        ordered: true,
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A non-decreasing schedule of up to 8 delays, each step up to an hour.
fn schedule() -> impl Strategy<Value = RetrySchedule> {
    prop::collection::vec(0u64..=3_600_000, 0..8).prop_map(|steps| {
        let mut total = 0;
        RetrySchedule(
            steps
                .into_iter()
                .map(|s| {
                    total += s;
                    Duration::from_millis(total)
                })
                .collect(),
        )
    })
}

fn now() -> impl Strategy<Value = OffsetDateTime> {
    (1_600_000_000i64..2_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| {
        OffsetDateTime::from_unix_timestamp(s).unwrap() + time::Duration::nanoseconds(n.into())
    })
}

/// Any answer or error that is neither 2xx nor 410, without Retry-After.
fn failure() -> impl Strategy<Value = Response> {
    prop_oneof![
        (100u16..600)
            .prop_filter("not 2xx or 410", |s| !(200..300).contains(s) && *s != 410)
            .prop_map(|status| Response::Answered {
                status,
                retry_after: None
            }),
        prop::sample::select(ERRORS.to_vec()).prop_map(Response::Error),
    ]
}

/// Any response that was sent: 2xx, 410, or a failure.
fn any_sent() -> impl Strategy<Value = Response> {
    prop_oneof![
        (200u16..300).prop_map(|status| Response::Answered {
            status,
            retry_after: None
        }),
        Just(Response::Answered {
            status: 410,
            retry_after: None
        }),
        failure(),
    ]
}

fn policy(retry: &RetryPolicy) -> Policy<'_> {
    Policy {
        retry,
        max_retry_after: Duration::from_secs(6 * 3600),
        disable_after: Duration::from_secs(5 * 24 * 3600),
    }
}

fn decide_one(
    d: &ScheduledDelivery,
    response: Response,
    policy: &Policy<'_>,
    jitter: f64,
    now: OffsetDateTime,
) -> Decision {
    let attempt = Attempt {
        delivery: d,
        response,
        failing_since: None,
        failing_here_since: None,
        jitter,
    };
    decide(&attempt, policy, now)
}

proptest! {
    #[test]
    fn retry_times_never_decrease_and_stay_within_the_jitter_bounds(
        schedule in schedule(),
        jitter in 0.0f64..=0.5,
        draw in -1.0f64..=1.0,
        response in failure(),
        now in now(),
    ) {
        let retry = RetryPolicy::new(schedule.clone(), jitter);
        let policy = policy(&retry);
        let d = delivery("dlv_1", "sub_1", 1, 1);
        let mut previous = ms(now);
        for (i, base) in schedule.0.iter().enumerate() {
            let attempt = i as u32 + 1;
            let decision = decide_one(&ScheduledDelivery { attempt, ..d.clone() }, response, &policy, draw, now);
            prop_assert_eq!(decision.outcome, Outcome::Failed);
            let next = decision.next.clone().expect("rescheduled");
            prop_assert_eq!(next.attempt, attempt + 1);
            let factor = if decision.verdict == Verdict::Throttled { 2 } else { 1 };
            let low = ms(now + base.mul_f64(1.0 - jitter) * factor);
            let high = ms(now + base.mul_f64(1.0 + jitter) * factor);
            prop_assert!(low <= next.due_at_ms && next.due_at_ms <= high,
                "attempt {}: due {} outside [{}, {}]", attempt, next.due_at_ms, low, high);
            prop_assert!(next.due_at_ms >= previous, "attempt {} due before attempt {}", attempt, attempt - 1);
            prop_assert_eq!(decision.next_attempt_at().map(ms), Some(next.due_at_ms));
            previous = next.due_at_ms;
        }
    }

    #[test]
    fn the_attempt_after_the_last_delay_is_dead(
        schedule in schedule(),
        beyond in 0u32..3,
        response in failure(),
        now in now(),
    ) {
        let retry = RetryPolicy::new(schedule.clone(), 0.1);
        let last = schedule.0.len() as u32 + 1;
        prop_assert_eq!(retry.max_attempts(), last);
        let d = delivery("dlv_1", "sub_1", 1, last + beyond);
        let decision = decide_one(&d, response, &policy(&retry), 0.0, now);
        prop_assert_eq!(decision.outcome, Outcome::Dead);
        prop_assert!(decision.is_dead());
        prop_assert_eq!(decision.next.as_ref(), None);
        prop_assert_eq!(decision.next_attempt_at(), None);
        prop_assert!(decision.error.is_some());
        prop_assert_eq!(decision.sent, Some(Sent { success: false, throttled: decision.verdict == Verdict::Throttled }));
    }

    #[test]
    fn retry_after_is_honoured_capped_and_never_in_the_past(
        status in prop::sample::select(vec![429u16, 500, 502, 503, 504, 400, 301]),
        asked_ms in 0u64..100_000_000,
        max_ms in prop_oneof![0u64..2_000, 0u64..30_000_000],
        attempt in 1u32..4,
        draw in -1.0f64..=1.0,
        now in now(),
    ) {
        let retry = RetryPolicy::new("10s,1m,10m".parse().unwrap(), 0.5);
        let policy = Policy { max_retry_after: Duration::from_millis(max_ms), ..policy(&retry) };
        let asked = Duration::from_millis(asked_ms);
        let d = delivery("dlv_1", "sub_1", 1, attempt);
        let response = Response::Answered { status, retry_after: Some(asked) };
        let decision = decide_one(&d, response, &policy, draw, now);
        let next = decision.next.expect("rescheduled within the schedule");
        let expected = asked.min(policy.max_retry_after).max(MIN_RETRY_AFTER);
        prop_assert_eq!(next.due_at_ms, ms(now + expected));
        prop_assert!(next.due_at_ms >= ms(now) + 1000, "scheduled less than a second ahead");
        if asked >= MIN_RETRY_AFTER && asked <= policy.max_retry_after {
            prop_assert_eq!(next.due_at_ms, ms(now + asked), "an ask within bounds is taken as asked");
        }
        prop_assert_eq!(decision.outcome, Outcome::Failed);
        prop_assert_eq!(decision.error, Some(ErrorClass::HttpStatus));
    }

    #[test]
    fn a_2xx_always_delivers_and_never_reschedules(
        status in 200u16..300,
        retry_after in prop::option::of(0u64..100_000),
        attempt in 1u32..20,
        failing_for in prop::option::of(0i64..10_000_000),
        schedule in schedule(),
        now in now(),
    ) {
        let retry = RetryPolicy::new(schedule, 0.1);
        let d = delivery("dlv_1", "sub_1", 1, attempt);
        let attempt = Attempt {
            delivery: &d,
            response: Response::Answered { status, retry_after: retry_after.map(Duration::from_secs) },
            failing_since: failing_for.map(|s| now - time::Duration::seconds(s)),
            failing_here_since: None,
            jitter: 0.0,
        };
        let decision = decide(&attempt, &policy(&retry), now);
        prop_assert_eq!(decision.outcome, Outcome::Delivered);
        prop_assert_eq!(decision.next.as_ref(), None);
        prop_assert_eq!(decision.error, None);
        prop_assert_eq!(decision.sent, Some(Sent { success: true, throttled: false }));
        let health = if failing_for.is_some() { Health::Recovered } else { Health::Unchanged };
        prop_assert_eq!(decision.health, health);
    }

    #[test]
    fn a_410_disables_and_the_delivery_is_dead(
        attempt in 1u32..20,
        retry_after in prop::option::of(0u64..100_000),
        failing_for in prop::option::of(0i64..10_000_000),
        now in now(),
    ) {
        let retry = RetryPolicy::new(RetrySchedule::default(), 0.1);
        let d = delivery("dlv_1", "sub_1", 1, attempt);
        let attempt = Attempt {
            delivery: &d,
            response: Response::Answered { status: 410, retry_after: retry_after.map(Duration::from_secs) },
            failing_since: failing_for.map(|s| now - time::Duration::seconds(s)),
            failing_here_since: None,
            jitter: 0.0,
        };
        let decision = decide(&attempt, &policy(&retry), now);
        prop_assert_eq!(decision.outcome, Outcome::Dead);
        prop_assert_eq!(decision.next.as_ref(), None);
        prop_assert!(matches!(decision.health, Health::Disable(ref why) if why.contains("410")));
    }

    #[test]
    fn a_subscription_failing_for_the_period_is_disabled(
        response in failure(),
        failing in prop::option::of((any::<bool>(), -2i64..=2, 0i64..1_000_000)),
        disable_after in 1u64..1_000_000,
        now in now(),
    ) {
        // Failing for about the period (to the second), or for any time.
        let failing_for = failing.map(|(near, delta, any)| {
            if near { (disable_after as i64 + delta).max(0) } else { any }
        });
        let retry = RetryPolicy::new(RetrySchedule::default(), 0.1);
        let policy = Policy { disable_after: Duration::from_secs(disable_after), ..policy(&retry) };
        let d = delivery("dlv_1", "sub_1", 1, 1);
        let attempt = Attempt {
            delivery: &d,
            response,
            failing_since: failing_for.map(|s| now - time::Duration::seconds(s)),
            failing_here_since: None,
            jitter: 0.0,
        };
        let decision = decide(&attempt, &policy, now);
        match failing_for {
            // A first failure is not stored: a streak is, once it lasts.
            None => prop_assert_eq!(decision.health, Health::Unchanged),
            Some(s) if s as u64 >= disable_after => {
                prop_assert!(matches!(decision.health, Health::Disable(ref why) if why.contains("without a success")));
            }
            Some(_) => prop_assert_eq!(decision.health, Health::Unchanged),
        }
        // Disabling does not kill the delivery: it keeps its retry.
        prop_assert_eq!(decision.outcome, Outcome::Failed);
    }

    #[test]
    fn a_failing_streak_is_stored_once_it_lasts_the_grace_and_disables_at_the_period(
        response in failure(),
        streak_s in 0i64..1_000,
        disable_after in 1u64..2_000,
        now in now(),
    ) {
        let retry = RetryPolicy::new(RetrySchedule::default(), 0.1);
        let policy = Policy { disable_after: Duration::from_secs(disable_after), ..policy(&retry) };
        let d = delivery("dlv_1", "sub_1", 1, 1);
        let here = now - time::Duration::seconds(streak_s);
        let attempt = Attempt {
            delivery: &d,
            response,
            failing_since: None,
            failing_here_since: Some(here),
            jitter: 0.0,
        };
        let decision = decide(&attempt, &policy, now);
        let streak = Duration::from_secs(streak_s as u64);
        if streak >= policy.disable_after {
            prop_assert!(matches!(decision.health, Health::Disable(ref why) if why.contains("without a success")));
        } else if streak >= failing_grace(&policy) {
            prop_assert_eq!(decision.health, Health::FailingFrom(here), "stored from the streak's first failure");
        } else {
            prop_assert_eq!(decision.health, Health::Unchanged);
        }
        prop_assert!(failing_grace(&policy) <= Duration::from_secs(60));
        // Once stored, the stored time counts, and a success clears it.
        let stored = Attempt { failing_since: Some(here), ..attempt };
        let again = decide(&stored, &policy, now).health;
        prop_assert!(!matches!(again, Health::FailingFrom(_)), "stored once");
        let delivered = Attempt { response: Response::Answered { status: 200, retry_after: None }, ..stored };
        prop_assert_eq!(decide(&delivered, &policy, now).health, Health::Recovered);
    }

    #[test]
    fn a_refused_attempt_is_deferred_without_using_an_attempt(
        attempt in 1u32..20,
        remaining_ms in 0u64..1_000_000,
        failing_for in prop::option::of(0i64..10_000_000),
        now in now(),
    ) {
        let retry = RetryPolicy::new("1s".parse().unwrap(), 0.1);
        let wait = Duration::from_millis(remaining_ms);
        let d = delivery("dlv_1", "sub_1", 1, attempt);
        let decision = decide(&Attempt {
            delivery: &d,
            response: Response::Refused { wait },
            failing_since: failing_for.map(|s| now - time::Duration::seconds(s)),
            failing_here_since: None,
            jitter: 0.0,
        }, &policy(&retry), now);
        let next = decision.next.expect("deferred");
        prop_assert_eq!(next.attempt, attempt, "no attempt used, even past the schedule");
        prop_assert_eq!(next.due_at_ms, ms(now + wait));
        prop_assert_eq!(decision.outcome, Outcome::Failed);
        prop_assert_eq!(decision.error, Some(ErrorClass::CircuitOpen));
        prop_assert_eq!(decision.health, Health::Unchanged);
        prop_assert_eq!(decision.sent, None);
    }
}

fn breaker_config(threshold: u32, open_for: Duration, max_open_for: Duration) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: threshold,
        // The ratio rule is left out: only consecutive failures open it here.
        min_requests: u32::MAX,
        open_for,
        max_open_for,
        ..BreakerConfig::default()
    }
}

proptest! {
    #[test]
    fn the_breaker_opens_only_at_its_threshold_of_consecutive_failures(
        threshold in 1u32..8,
        responses in prop::collection::vec(any_sent(), 1..40),
        step_ms in 0u64..5_000,
        now in now(),
    ) {
        let retry = RetryPolicy::new(RetrySchedule::default(), 0.1);
        let policy = policy(&retry);
        let origin = Instant::now();
        let mut breaker = Breaker::new(breaker_config(threshold, Duration::from_secs(30), Duration::from_secs(600)), origin);
        let d = delivery("dlv_1", "sub_1", 1, 1);
        let mut run = 0;
        for (i, response) in responses.into_iter().enumerate() {
            let t = origin + Duration::from_millis(step_ms * i as u64);
            prop_assert_eq!(breaker.admit(t), Admission::Allow);
            let sent = decide_one(&d, response, &policy, 0.0, now).sent.expect("sent");
            run = if sent.success { 0 } else { run + 1 };
            let change = record_on_breaker(&mut breaker, sent, t);
            if run == threshold {
                let change = change.expect("opens at the threshold");
                prop_assert_eq!((change.before, change.after), (BreakerState::Closed, BreakerState::Open));
                prop_assert_eq!(change.announcement(), Some(operational::CIRCUIT_OPENED));
                break;
            }
            prop_assert_eq!(change, None, "changed after {} consecutive failures of {}", run, threshold);
            prop_assert_eq!(breaker.state(t), BreakerState::Closed);
        }
    }

    #[test]
    fn a_half_open_probe_success_closes_it_and_a_failure_reopens_it_for_longer(
        threshold in 1u32..6,
        open_s in 1u64..120,
        max_factor in 1u32..4,
        late_ms in 0u64..10_000,
        probe in any_sent(),
        now in now(),
    ) {
        let retry = RetryPolicy::new(RetrySchedule::default(), 0.1);
        let policy = policy(&retry);
        let d = delivery("dlv_1", "sub_1", 1, 1);
        let open_for = Duration::from_secs(open_s);
        let max_open_for = open_for * max_factor;
        let t0 = Instant::now();
        let mut breaker = Breaker::new(breaker_config(threshold, open_for, max_open_for), t0);
        let fail = Sent { success: false, throttled: false };
        for _ in 1..threshold {
            prop_assert_eq!(record_on_breaker(&mut breaker, fail, t0), None);
        }
        prop_assert!(record_on_breaker(&mut breaker, fail, t0).is_some());
        prop_assert_eq!(breaker.admit(t0 + open_for - Duration::from_millis(1)), Admission::Reject);
        let t1 = t0 + open_for + Duration::from_millis(late_ms);
        prop_assert_eq!(breaker.admit(t1), Admission::Probe);
        prop_assert_eq!(breaker.admit(t1), Admission::Reject, "one probe at a time");
        let sent = decide_one(&d, probe, &policy, 0.0, now).sent.expect("sent");
        let change = record_on_breaker(&mut breaker, sent, t1).expect("a probe's answer changes the state");
        prop_assert_eq!(change.before, BreakerState::HalfOpen);
        if sent.success {
            prop_assert_eq!(change.after, BreakerState::Closed);
            prop_assert_eq!(change.announcement(), Some(operational::CIRCUIT_CLOSED));
            prop_assert_eq!(breaker.admit(t1), Admission::Allow);
        } else {
            prop_assert_eq!(change.after, BreakerState::Open);
            prop_assert_eq!(change.announcement(), None);
            let reopened = (open_for * 2).min(max_open_for);
            prop_assert_eq!(breaker.admit(t1 + reopened - Duration::from_millis(1)), Admission::Reject);
            prop_assert_eq!(breaker.admit(t1 + reopened), Admission::Probe);
        }
    }

    #[test]
    fn an_ordered_subscriptions_next_delivery_is_released_only_when_its_head_is_finished(
        seqs in prop::collection::vec(0i64..5, 1..6),
        script in prop::collection::vec(any_sent(), 1..60),
        now in now(),
    ) {
        // Two attempts in all, so every delivery finishes within the script
        // or stays at the head.
        let retry = RetryPolicy::new("1s".parse().unwrap(), 0.0);
        let policy = policy(&retry);
        let mut pending: Vec<ScheduledDelivery> = seqs
            .iter()
            .enumerate()
            .map(|(i, &seq)| delivery(&format!("dlv_{i}"), "sub_1", seq, 1))
            .collect();
        // An unordered delivery of another subscription is never held back.
        let other = ScheduledDelivery { ordered: false, ..delivery("dlv_x", "sub_2", -1, 1) };
        let mut expected: Vec<ScheduledDelivery> = pending.clone();
        expected.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        let mut finished = Vec::new();
        for response in script {
            let mut all = pending.clone();
            all.push(other.clone());
            prop_assert!(releasable(&other, &all));
            let released: Vec<&ScheduledDelivery> =
                pending.iter().filter(|c| releasable(c, &all)).collect();
            if pending.is_empty() {
                prop_assert!(released.is_empty());
                break;
            }
            prop_assert_eq!(released.len(), 1, "exactly the head is released");
            let head = released[0].clone();
            prop_assert!(pending.iter().all(|p| order_key(&head) <= order_key(p)));
            let decision = decide_one(&head, response, &policy, 0.0, now);
            pending.retain(|p| p.delivery_id != head.delivery_id);
            match decision.next {
                Some(next) => {
                    // Rescheduled: it keeps its place at the head.
                    prop_assert_eq!(order_key(&next), order_key(&head));
                    prop_assert_eq!(next.attempt, head.attempt + 1);
                    pending.push(next);
                }
                None => finished.push(head.delivery_id.clone()),
            }
        }
        let ids: Vec<&str> = expected.iter().map(|d| d.delivery_id.as_str()).collect();
        prop_assert_eq!(&finished[..], &ids[..finished.len()], "finished in order");
    }
}
