//! One attempt: sign and send, read the answer the way the best peers do,
//! decide what follows, keep the endpoint's health, and record it all.
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
//!
//! A subscription that has failed without a single success for the
//! configured period (default 5 days) is disabled with the reason.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use time::OffsetDateTime;

use super::{
    client::{Answer, SendError},
    retry::RetryAction,
    worker::{Finished, Job, WorkerContext, USER_AGENT},
};
use crate::{
    ids,
    model::{
        ErrorClass, Outcome, ScheduledDelivery, SubscriptionStatus, WebhookDeliveryLog,
        WebhookSubscription, OPERATIONAL_PREFIX,
    },
    operational, signing,
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

/// Reads an attempt's result.
pub fn verdict(result: &Result<Answer, SendError>) -> Verdict {
    match result {
        Ok(a) if a.is_success() => Verdict::Delivered,
        Ok(a) if a.status == 410 => Verdict::Gone,
        Ok(a) if matches!(a.status, 429 | 502 | 503 | 504) => Verdict::Throttled,
        _ => Verdict::Failed,
    }
}

/// Signs and sends a job, tells the shard how it went, then records it.
pub(super) async fn send_and_finish(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: Job,
    probe: bool,
    report: impl FnOnce(Finished),
) {
    let result = send(ctx, sub, &job).await;
    let v = verdict(&result);
    report(Finished {
        subscription_id: sub.id.clone(),
        success: v == Verdict::Delivered,
        throttled: v == Verdict::Throttled,
        probe,
    });
    finish(ctx, sub, job, result, None).await;
}

/// Records a job the open circuit refused: not sent, no attempt used, due
/// again after `wait`.
pub(super) async fn deferred(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: Job,
    wait: Duration,
) {
    let refused = Err(SendError {
        class: ErrorClass::CircuitOpen,
        message: "circuit open: the endpoint failed repeatedly; not sent".into(),
        latency: Duration::ZERO,
    });
    finish(ctx, sub, job, refused, Some(wait)).await;
}

/// Builds the signed request and sends it.
async fn send(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: &Job,
) -> Result<Answer, SendError> {
    let event = &job.event;
    let body = Bytes::from(event.envelope_bytes());
    let now = OffsetDateTime::now_utc();
    let ts = now.unix_timestamp();
    let signature = signing::signature_header(sub.live_secrets(now), &event.id, ts, &body);
    let mut headers = HeaderMap::with_capacity(12);
    for (name, value) in &sub.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(n, v);
        }
    }
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("webhook-id", &event.id);
    put("webhook-timestamp", &ts.to_string());
    put("webhook-signature", &signature);
    put("herald-event-type", &event.event_type);
    if let Some(key) = &event.dedupe_key {
        put("herald-dedupe-key", key);
    }
    put("herald-attempt", &job.delivery.attempt.to_string());
    put("herald-delivery-id", &job.delivery.delivery_id);
    put("herald-subscription-id", &sub.id);
    put("user-agent", USER_AGENT);
    let timeout = sub
        .timeout_seconds
        .map(|s| Duration::from_secs(u64::from(s)));
    ctx.client.post(&sub.url, headers, body, timeout).await
}

/// Records the attempt and schedules what follows, retrying the write until
/// it is durable (the delivery stays in flight meanwhile). `deferred` is set
/// when nothing was sent (open circuit): the same attempt is due again then.
async fn finish(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: Job,
    result: Result<Answer, SendError>,
    deferred: Option<Duration>,
) {
    let d = &job.delivery;
    let v = verdict(&result);
    let now = OffsetDateTime::now_utc();
    let due_in = |delay: Duration, attempt: u32| {
        let mut next = d.clone();
        next.attempt = attempt;
        next.due_at_ms = ((now + delay).unix_timestamp_nanos() / 1_000_000) as i64;
        next
    };
    let retry_after = result.as_ref().ok().and_then(|a| a.retry_after);
    let (outcome, next) = match (deferred, v) {
        (Some(wait), _) => (Outcome::Failed, Some(due_in(wait, d.attempt))),
        (None, Verdict::Delivered) => (Outcome::Delivered, None),
        (None, Verdict::Gone) => (Outcome::Dead, None),
        (None, Verdict::Throttled | Verdict::Failed) => {
            match ctx.retry.decide(d.attempt, false, &mut rand::thread_rng()) {
                RetryAction::Done | RetryAction::Dead => (Outcome::Dead, None),
                RetryAction::RetryAfter(scheduled) => {
                    let delay = match retry_after {
                        Some(asked) => {
                            asked.clamp(Duration::from_secs(1), ctx.config.max_retry_after)
                        }
                        None if v == Verdict::Throttled => scheduled * 2,
                        None => scheduled,
                    };
                    (Outcome::Failed, Some(due_in(delay, d.attempt + 1)))
                }
            }
        }
    };
    let mut record = WebhookDeliveryLog {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id: d.delivery_id.clone(),
        event_id: d.event_id.clone(),
        subscription_id: d.subscription_id.clone(),
        tenant_id: d.tenant_id.clone(),
        attempt: d.attempt,
        trigger: d.trigger(),
        replay_of: d.replay_of.clone(),
        url: sub.url.clone(),
        created_at: now,
        status_code: None,
        latency_ms: None,
        response_body: None,
        location: None,
        error: None,
        error_message: None,
        outcome,
        next_attempt_at: next.as_ref().and_then(|n| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(n.due_at_ms) * 1_000_000).ok()
        }),
    };
    match &result {
        Ok(answer) => {
            record.created_at = now - answer.latency;
            record.status_code = Some(answer.status);
            record.latency_ms = Some(answer.latency.as_millis() as u64);
            if !answer.is_success() {
                record.error = Some(ErrorClass::HttpStatus);
                record.location = answer.location.clone();
            }
            record.response_body = Some(answer.body.clone());
        }
        Err(e) => {
            record.created_at = now - e.latency;
            record.latency_ms = Some(e.latency.as_millis() as u64);
            record.error = Some(e.class);
            record.error_message = Some(e.message.clone());
        }
    }
    if deferred.is_none() {
        track_health(ctx, sub, v).await;
    }
    if outcome == Outcome::Dead {
        tracing::warn!(delivery_id = %d.delivery_id, event_id = %d.event_id, subscription_id = %d.subscription_id, "delivery is dead; it can be replayed");
        if !job.event.event_type.starts_with(OPERATIONAL_PREFIX) {
            let payload = json!({
                "delivery_id": d.delivery_id,
                "event_id": d.event_id,
                "event_type": job.event.event_type,
                "subscription_id": d.subscription_id,
                "attempts": d.attempt,
                "last_status_code": record.status_code,
                "last_error": record.error,
            });
            ctx.operational
                .emit(&d.tenant_id, operational::DELIVERY_DEAD, payload)
                .await;
        }
    }
    ctx.metrics
        .attempt(&record, deferred.is_none(), job.event.received_at);
    persist(ctx, record, next).await;
    ctx.in_flight.lock().remove(&d.delivery_id);
    if d.ordered {
        // The next delivery of this ordered subscription may go now.
        ctx.wake.notify_one();
    }
}

/// Keeps `failing_since`, and disables a subscription that is gone (410) or
/// has failed without a success for longer than the configured period.
async fn track_health(ctx: &WorkerContext, sub: &WebhookSubscription, v: Verdict) {
    let now = OffsetDateTime::now_utc();
    let current = ctx.subscriptions.get(&sub.id);
    let failing_since = current.as_ref().and_then(|s| s.failing_since);
    match v {
        Verdict::Delivered if failing_since.is_some() => {
            modify(ctx, sub, Box::new(|s| s.failing_since.take().is_some())).await;
        }
        Verdict::Delivered => {}
        Verdict::Gone => disable(ctx, sub, "the endpoint answered 410 Gone".into()).await,
        Verdict::Throttled | Verdict::Failed => match failing_since {
            None => {
                modify(
                    ctx,
                    sub,
                    Box::new(move |s| {
                        s.failing_since.is_none() && s.failing_since.replace(now).is_none()
                    }),
                )
                .await;
            }
            Some(since) if now - since >= ctx.config.disable_after => {
                let reason = format!(
                    "every delivery failed since {since} ({} without a success)",
                    humantime::format_duration(Duration::try_from(now - since).unwrap_or_default())
                );
                disable(ctx, sub, reason).await;
            }
            Some(_) => {}
        },
    }
}

async fn disable(ctx: &WorkerContext, sub: &WebhookSubscription, reason: String) {
    let why = reason.clone();
    let changed = modify(
        ctx,
        sub,
        Box::new(move |s| {
            if s.status == SubscriptionStatus::Disabled {
                return false;
            }
            s.status = SubscriptionStatus::Disabled;
            s.disabled_reason = Some(why);
            s.updated_at = OffsetDateTime::now_utc();
            true
        }),
    )
    .await;
    if changed {
        tracing::warn!(subscription_id = %sub.id, %reason, "subscription disabled");
        let payload = json!({ "subscription_id": sub.id, "url": sub.url, "reason": reason });
        ctx.operational
            .emit(&sub.tenant_id, operational::SUBSCRIPTION_DISABLED, payload)
            .await;
    }
}

/// Applies a change to the stored subscription and the index; whether it changed.
async fn modify(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    change: crate::store::SubscriptionChange,
) -> bool {
    match ctx
        .store
        .modify_subscription(&sub.tenant_id, &sub.id, change)
        .await
    {
        Ok(Some((updated, true))) => {
            ctx.subscriptions.upsert(updated);
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, subscription_id = %sub.id, "could not update subscription health");
            false
        }
    }
}

async fn persist(ctx: &WorkerContext, record: WebhookDeliveryLog, next: Option<ScheduledDelivery>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match ctx.store.record_attempt(record.clone(), next.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, delivery_id = %record.delivery_id, "could not record an attempt; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A delivery whose subscription no longer exists: recorded dead and removed.
pub(super) async fn drop_orphan(ctx: Arc<WorkerContext>, job: Job) {
    drop_dead(ctx, job, "the subscription no longer exists").await;
}

/// A delivery that is not sent: recorded dead with `why`, no attempt used,
/// and removed from the schedule.
pub(super) async fn drop_dead(ctx: Arc<WorkerContext>, job: Job, why: &str) {
    let d = &job.delivery;
    let record = WebhookDeliveryLog {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id: d.delivery_id.clone(),
        event_id: d.event_id.clone(),
        subscription_id: d.subscription_id.clone(),
        tenant_id: d.tenant_id.clone(),
        attempt: d.attempt,
        trigger: d.trigger(),
        replay_of: d.replay_of.clone(),
        url: String::new(),
        created_at: OffsetDateTime::now_utc(),
        status_code: None,
        latency_ms: None,
        response_body: None,
        location: None,
        error: None,
        error_message: Some(why.into()),
        outcome: Outcome::Dead,
        next_attempt_at: None,
    };
    ctx.metrics.attempt(&record, false, job.event.received_at);
    persist(&ctx, record, None).await;
    ctx.in_flight.lock().remove(&d.delivery_id);
    if d.ordered {
        ctx.wake.notify_one();
    }
}

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
