//! One attempt: sign and send, hand the result to [`decide`](super::decide)
//! (how answers are read is written there), then carry the decision out:
//! tell the shard, keep the subscription's health, and record it all.

use std::{sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use time::OffsetDateTime;

use super::{
    client::{Answer, SendError},
    context::{Finished, Job, WorkerContext, USER_AGENT},
    decide::{decide, Attempt, Decision, Health, Policy, Response},
    destination::{Destination, Outbound},
};
use crate::audit::{self, action, Actor, AuditRecord};
use crate::{
    clock::now_ms,
    filters::OPERATIONAL_PREFIX,
    ids,
    log::Pending,
    model::{
        DomainEvent, ErrorClass, Outcome, ScheduledDelivery, SubscriptionStatus,
        WebhookDeliveryLog, WebhookSubscription,
    },
    operational,
};

/// Signs and sends a job, tells the shard how it went, then records it.
pub(super) async fn send_and_finish(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: Job,
    probe: bool,
    report: impl FnOnce(Finished),
) {
    let result = send(ctx, sub, &job).await;
    let now = OffsetDateTime::now_utc();
    let decision = decide_at(ctx, sub, &job, Response::of(&result), now);
    if let Some(sent) = decision.sent {
        let latency = match &result {
            Ok(answer) => answer.latency,
            Err(e) => e.latency,
        };
        report(Finished {
            subscription_id: sub.id.clone(),
            sent,
            probe,
            latency,
        });
    }
    finish(ctx, sub, job, result, decision, now).await;
}

/// The record of a job the open circuit refused (counted in the metrics):
/// not sent, no attempt used, its next attempt shown as the breaker's next
/// probe (`wait` from now). The shard parks the job until the circuit
/// closes and writes the record with [`log_refusal`].
pub(super) fn refusal(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: &Job,
    wait: Duration,
) -> WebhookDeliveryLog {
    let refused = Err(SendError {
        class: ErrorClass::CircuitOpen,
        message: "circuit open: the endpoint failed repeatedly; not sent".into(),
        latency: Duration::ZERO,
    });
    let now = OffsetDateTime::now_utc();
    let decision = decide_at(ctx, sub, job, Response::Refused { wait }, now);
    let record = record_of(job, sub, &refused, &decision, now);
    ctx.metrics.attempt(&record, false, job.event.received_at);
    record
}

/// Writes a [`refusal`] to the delivery log, leaving the schedule entry to
/// the park.
pub(super) async fn log_refusal(ctx: &WorkerContext, record: WebhookDeliveryLog) {
    let id = record.delivery_id.clone();
    retrying(ctx, &id, "log a refused delivery", || {
        ctx.store.log_attempt(record.clone())
    })
    .await;
}

/// The decision about a job's attempt, with the subscription's health as
/// this process's index knows it and a fresh jitter draw.
fn decide_at(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: &Job,
    response: Response,
    now: OffsetDateTime,
) -> Decision {
    let attempt = Attempt {
        delivery: &job.delivery,
        response,
        failing_since: ctx.subscriptions.get(&sub.id).and_then(|s| s.failing_since),
        failing_here_since: ctx.failing_here.lock().get(&sub.id).copied(),
        jitter: ctx.retry.draw(&mut rand::thread_rng()),
    };
    let policy = Policy {
        retry: &ctx.retry,
        max_retry_after: ctx.config.max_retry_after,
        disable_after: ctx.config.disable_after,
    };
    decide(&attempt, &policy, now)
}

/// Builds the signed request and sends it.
async fn send(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: &Job,
) -> Result<Answer, SendError> {
    let event = &job.event;
    let body = event.body(sub.payload);
    let now = OffsetDateTime::now_utc();
    let ts = now.unix_timestamp();
    let signature = sub.signature_header(now, &event.id, ts, &body);
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
    let key = event.dedupe_key.as_ref().unwrap_or(&event.id).clone();
    let out = Outbound {
        key,
        headers,
        body,
        timeout,
    };
    ctx.destinations.send(sub, out).await
}

/// Records the attempt and schedules what the decision says, retrying the
/// write until it is durable (the delivery stays in flight meanwhile).
async fn finish(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    mut job: Job,
    result: Result<Answer, SendError>,
    decision: Decision,
    now: OffsetDateTime,
) {
    let d = &job.delivery;
    let record = record_of(&job, sub, &result, &decision, now);
    match decision.sent {
        Some(sent) if sent.success => {
            ctx.failing_here.lock().remove(&sub.id);
        }
        Some(_) => {
            ctx.failing_here.lock().entry(sub.id.clone()).or_insert(now);
        }
        None => {}
    }
    apply_health(ctx, sub, &decision.health).await;
    ctx.metrics
        .attempt(&record, decision.sent.is_some(), job.event.received_at);
    let dead = decision
        .is_dead()
        .then_some((record.status_code, record.error));
    let retry_wanted = decision.next.is_some();
    // A retry for memory is added only once the delivery is out of flight:
    // one already due would otherwise be dispatched while its id is still
    // in flight, and dropped as a duplicate.
    let mut to_memory = None;
    let (recorded, durable) = if !job.unscheduled() {
        let recorded = persist(ctx, record, decision.next, false).await;
        (recorded, recorded)
    } else {
        // Not in the schedule: record the attempt, then keep the retry (a
        // crash in between re-reads the event or restores the retry: a
        // duplicate, not a loss).
        let recorded = persist(ctx, record, None, true).await;
        let kept = match decision.next {
            Some(next) if recorded => {
                let (kept, pending) = keep_retry(ctx, next, &job).await;
                to_memory = pending;
                kept
            }
            Some(_) => false,
            None if recorded => forget_kept(ctx, &job).await,
            None => false,
        };
        (recorded, recorded && kept)
    };
    if let Some((last_status_code, last_error)) = dead.filter(|_| recorded) {
        announce_dead(ctx, &job, last_status_code, last_error).await;
    }
    ctx.in_flight.lock().remove(&d.delivery_id);
    if let Some(pending) = to_memory {
        ctx.retries.add(pending);
    }
    if d.ordered {
        // The next delivery of this ordered subscription may go now.
        ctx.wake.notify_one();
    }
    if durable {
        if let Some(settle) = job.settle.take() {
            settle.done();
        }
    } else if job.unscheduled() && (!recorded || retry_wanted) {
        send_again_later(ctx, job);
    }
}

/// A delivery with no schedule row whose attempt (or retry) the store would
/// not take: sent again from memory when a lease would have ended, as the
/// scheduler sends a leased row again, keeping its claim on its event's log
/// offset (see [`super::retries::Retries::again`]).
fn send_again_later(ctx: &WorkerContext, job: Job) {
    let Job {
        delivery,
        event,
        settle,
        ..
    } = job;
    let due_at_ms = now_ms() + ctx.config.lease().as_millis() as i64;
    tracing::warn!(
        delivery_id = %delivery.delivery_id,
        in_ms = due_at_ms - now_ms(),
        "a delivery the store would not record is sent again when its lease would end"
    );
    ctx.retries.again(
        Pending {
            delivery: ScheduledDelivery {
                due_at_ms,
                ..delivery
            },
            event: DomainEvent::clone(&event),
        },
        settle,
    );
}

/// The delivery log record of an attempt.
fn record_of(
    job: &Job,
    sub: &WebhookSubscription,
    result: &Result<Answer, SendError>,
    decision: &Decision,
    now: OffsetDateTime,
) -> WebhookDeliveryLog {
    let d = &job.delivery;
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
        error: decision.error,
        error_message: None,
        outcome: decision.outcome,
        next_attempt_at: decision.next_attempt_at(),
    };
    match result {
        Ok(answer) => {
            record.created_at = now - answer.latency;
            // A Kafka acknowledgement has no HTTP status.
            record.status_code =
                (Destination::of(&sub.url) == Destination::Http).then_some(answer.status);
            record.latency_ms = Some(answer.latency.as_millis() as u64);
            if !answer.is_success() {
                record.location = answer.location.clone();
            }
            record.response_body = Some(answer.body.clone());
        }
        Err(e) => {
            record.created_at = now - e.latency;
            record.latency_ms = Some(e.latency.as_millis() as u64);
            record.error_message = Some(e.message.clone());
        }
    }
    record
}

/// Tells the tenant a delivery is dead (after its record is stored, so the
/// announcement never precedes the log it points to).
async fn announce_dead(
    ctx: &WorkerContext,
    job: &Job,
    last_status_code: Option<u16>,
    last_error: Option<ErrorClass>,
) {
    let d = &job.delivery;
    tracing::warn!(delivery_id = %d.delivery_id, event_id = %d.event_id, subscription_id = %d.subscription_id, "delivery is dead; it can be replayed");
    if job.event.event_type.starts_with(OPERATIONAL_PREFIX) {
        return;
    }
    let payload = json!({
        "delivery_id": d.delivery_id,
        "event_id": d.event_id,
        "event_type": job.event.event_type,
        "subscription_id": d.subscription_id,
        "attempts": d.attempt,
        "last_status_code": last_status_code,
        "last_error": last_error,
    });
    ctx.operational
        .emit(&d.tenant_id, operational::DELIVERY_DEAD, payload)
        .await;
}

/// Carries out a health change: keeps `failing_since`, disables a
/// subscription that is gone (410) or has failed for too long.
async fn apply_health(ctx: &WorkerContext, sub: &WebhookSubscription, health: &Health) {
    match health {
        Health::Unchanged => {}
        Health::Recovered => {
            modify(ctx, sub, Box::new(|s| s.failing_since.take().is_some())).await;
        }
        &Health::FailingFrom(since) => {
            modify(
                ctx,
                sub,
                Box::new(move |s| {
                    s.failing_since.is_none() && s.failing_since.replace(since).is_none()
                }),
            )
            .await;
        }
        Health::Disable(reason) => disable(ctx, sub, reason.clone()).await,
    }
}

async fn disable(ctx: &WorkerContext, sub: &WebhookSubscription, reason: String) {
    let why = reason.clone();
    let since = ctx
        .failing_here
        .lock()
        .get(&sub.id)
        .copied()
        .unwrap_or_else(OffsetDateTime::now_utc);
    let mut record = AuditRecord::new(&sub.tenant_id, action::SUBSCRIPTION_DISABLED)
        .subscription(&sub.id)
        .detail("reason", reason.clone());
    record.actor = Actor::Herald;
    let changed = audit::recorded(
        record,
        modify(
            ctx,
            sub,
            Box::new(move |s| {
                if s.status == SubscriptionStatus::Disabled {
                    return false;
                }
                s.status = SubscriptionStatus::Disabled;
                s.disabled_reason = Some(why.clone());
                // Disabled before the streak was stored (attempts further
                // apart than the grace): since when it failed.
                s.failing_since.get_or_insert(since);
                s.updated_at = OffsetDateTime::now_utc();
                true
            }),
        ),
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

/// Times a failed store write of an attempt is tried again before it is given up.
const PERSIST_TRIES: u32 = 8;

/// Records the attempt (and the delivery's next state) in the store,
/// retrying a failed write [`PERSIST_TRIES`] times with backoff (about 15 s
/// in all). Then it gives up, counts it and says so: the delivery is still
/// leased in the schedule, so it falls due again when its lease ends and is
/// sent again (a duplicate at worst, never a loss), and the shard's slot is
/// not held by a store that stays down; a delivery fan-out did not schedule
/// stays unsettled, so its event is read again after a restart. Returns
/// whether it was recorded. `unscheduled`: the delivery has no schedule
/// entry (fan-out handed it over without one), and `next` is `None`.
async fn persist(
    ctx: &WorkerContext,
    record: WebhookDeliveryLog,
    next: Option<ScheduledDelivery>,
    unscheduled: bool,
) -> bool {
    let id = record.delivery_id.clone();
    retrying(ctx, &id, "record an attempt", || {
        let (record, next) = (record.clone(), next.clone());
        async move {
            if unscheduled {
                ctx.store.log_attempt(record).await
            } else {
                ctx.store.record_attempt(record, next).await
            }
        }
    })
    .await
}

/// Keeps the retry of a delivery the store's schedule does not have: in
/// the schedule changelog and in memory when the log keeps one and the
/// retry is near enough (see [`super::retries::Retries::takes`]), else in
/// the store's schedule (and then forgotten in the changelog). Whether it
/// is durable, and the retry for the caller to add to memory once the
/// delivery is out of flight; a retry the changelog refused still goes
/// from memory (its earlier state, or its event, is read again after a
/// restart).
async fn keep_retry(
    ctx: &WorkerContext,
    next: ScheduledDelivery,
    job: &Job,
) -> (bool, Option<Pending>) {
    let log = ctx
        .retries
        .log()
        .filter(|_| ctx.retries.takes(&next.tenant_id, next.due_at_ms, now_ms()));
    let Some(log) = log else {
        let scheduled = schedule_durably(ctx, vec![next]).await;
        if scheduled {
            forget_kept(ctx, job).await;
        }
        return (scheduled, None);
    };
    let pending = Pending {
        delivery: next,
        event: DomainEvent::clone(&job.event),
    };
    let id = pending.delivery.delivery_id.clone();
    let kept = retrying(
        ctx,
        &id,
        "keep a retry in the schedule changelog",
        || async { log.keep(&pending).await.map_err(changelog_error) },
    )
    .await;
    (kept, Some(pending))
}

/// Forgets a delivery the changelog keeps (it is recorded, or now in the
/// store's schedule); true for any other. Whether that is durable: if not,
/// a restore brings it back (a duplicate, never a loss).
pub(super) async fn forget_kept(ctx: &WorkerContext, job: &Job) -> bool {
    let (true, Some(log)) = (job.kept, ctx.retries.log()) else {
        return true;
    };
    let d = &job.delivery;
    if ctx.retries.lost(&d.tenant_id) {
        return true;
    }
    retrying(
        ctx,
        &d.delivery_id,
        "forget a retry in the schedule changelog",
        || async {
            log.forget(&d.tenant_id, &d.delivery_id)
                .await
                .map_err(changelog_error)
        },
    )
    .await
}

fn changelog_error(e: crate::log::LogError) -> crate::store::StoreError {
    crate::store::StoreError::Unavailable(e.to_string())
}

/// Writes deliveries to the schedule, retrying like [`persist`].
pub(super) async fn schedule_durably(
    ctx: &WorkerContext,
    deliveries: Vec<ScheduledDelivery>,
) -> bool {
    let Some(id) = deliveries.first().map(|d| d.delivery_id.clone()) else {
        return true;
    };
    retrying(ctx, &id, "schedule a delivery", || {
        ctx.store.schedule(deliveries.clone())
    })
    .await
}

async fn retrying<F, Fut>(ctx: &WorkerContext, delivery_id: &str, what: &str, mut write: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::store::StoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    for tries in 1..=PERSIST_TRIES {
        match write().await {
            Ok(()) => return true,
            Err(e) if tries < PERSIST_TRIES => {
                tracing::warn!(error = %e, delivery_id, tries, "could not {what}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    delivery_id,
                    tries,
                    "could not {what}; giving up: the delivery is sent again when its lease ends (or its event is read again)"
                );
            }
        }
    }
    ctx.metrics.attempt_records_abandoned.inc();
    false
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
    let recorded = persist(&ctx, record, None, job.unscheduled()).await;
    let recorded = recorded && forget_kept(&ctx, &job).await;
    ctx.in_flight.lock().remove(&d.delivery_id);
    if d.ordered {
        ctx.wake.notify_one();
    }
    if let Some(settle) = job.settle.filter(|_| recorded) {
        settle.done();
    }
}
