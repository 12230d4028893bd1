//! Deliveries a worker meets for a subscription that takes none right now.
//!
//! A paused subscription's delivery is held: parked in the schedule until
//! the subscription is resumed (which makes it due at once), or until
//! [`HOLD_RECHECK`] has passed, whichever comes first; the re-check only
//! matters when a resume was missed (a crash right after it, or another
//! process whose index still showed the subscription paused). A disabled
//! subscription's delivery is recorded dead, once, so it never comes back
//! by itself; the recover endpoint re-delivers it.
//!
//! An active subscription's delivery that finds its endpoint's queue full,
//! or its circuit open, is parked the same way (held, in batches), and
//! released a chunk at a time as the queue drains and once the circuit is
//! closed (see `worker.rs`): the queue stays bounded, no delivery waits for
//! a lease to end in a live process, and a dead endpoint's backlog stays
//! parked. Its re-check is the longest open period (at least
//! [`HOLD_RECHECK`]): should the release be lost with the process, an
//! embedded restart releases it at once, and the next process to have a
//! delivery of the subscription (after a restart or a rebalance) releases
//! it then; the re-check is the bound when neither happens.

use std::{sync::Arc, time::Duration};

use super::context::{Job, WorkerContext};
use crate::{
    clock::now_ms,
    model::{ScheduledDelivery, SubscriptionStatus},
};

/// How long a held delivery stays parked when no resume releases it.
pub const HOLD_RECHECK: Duration = Duration::from_secs(300);

/// What a disabled subscription's pending delivery is recorded dead with.
pub const DISABLED: &str = "the subscription is disabled; recover it to deliver this event";

/// Parks a paused subscription's delivery (see the module doc). If the
/// subscription was resumed while this ran, releases it again at once.
pub(super) async fn hold(ctx: Arc<WorkerContext>, mut job: Job) {
    if !schedule_unscheduled(&ctx, std::slice::from_mut(&mut job)).await {
        ctx.in_flight.lock().remove(&job.delivery.delivery_id);
        return;
    }
    let d = &job.delivery;
    let recheck = now_ms() + HOLD_RECHECK.as_millis() as i64;
    if let Err(e) = ctx.store.hold(d, recheck).await {
        // It stays leased and comes back when the lease ends.
        tracing::warn!(error = %e, delivery_id = %d.delivery_id, "could not hold a paused subscription's delivery");
    }
    ctx.in_flight.lock().remove(&d.delivery_id);
    let resumed = ctx
        .subscriptions
        .get(&d.subscription_id)
        .is_some_and(|s| s.status == SubscriptionStatus::Active);
    if resumed {
        match ctx
            .store
            .release_held(&d.subscription_id, now_ms(), usize::MAX)
            .await
        {
            Ok(_) => ctx.wake.notify_one(),
            Err(e) => {
                tracing::warn!(error = %e, subscription_id = %d.subscription_id, "could not release held deliveries; they go at their re-check")
            }
        }
    }
}

/// Parks deliveries that found their endpoint's queue full, or its circuit
/// open (see the module doc), due again after `recheck` unless released
/// first. They leave the shard either way: parked, or, if the write failed,
/// leased until their lease ends.
pub(super) async fn park(ctx: &WorkerContext, mut jobs: Vec<Job>, recheck: Duration) {
    if !schedule_unscheduled(ctx, &mut jobs).await {
        // Not in the schedule: they stay unsettled (read again after a restart).
        let mut in_flight = ctx.in_flight.lock();
        for j in &jobs {
            in_flight.remove(&j.delivery.delivery_id);
        }
        return;
    }
    let deliveries: Vec<ScheduledDelivery> = jobs.into_iter().map(|j| j.delivery).collect();
    let recheck = now_ms() + recheck.as_millis() as i64;
    match ctx.store.hold_all(&deliveries, recheck).await {
        Ok(()) => ctx
            .metrics
            .deliveries_parked
            .inc_by(deliveries.len() as u64),
        Err(e) => {
            tracing::warn!(error = %e, deliveries = deliveries.len(), "could not park deliveries for a full endpoint queue; they go when their lease ends")
        }
    }
    let mut in_flight = ctx.in_flight.lock();
    for d in &deliveries {
        in_flight.remove(&d.delivery_id);
    }
}

/// How long a parked delivery waits, unless released first: the longest
/// open period of the breaker, at least [`HOLD_RECHECK`].
pub fn park_recheck(config: &crate::config::DeliveryConfig) -> Duration {
    HOLD_RECHECK.max(config.breaker_max_open_for)
}

/// Makes the next `limit` parked deliveries of a subscription due and rings
/// the scheduler; `None` (after a pause) if the store failed.
pub(super) async fn release_chunk(
    ctx: &WorkerContext,
    subscription_id: &str,
    limit: usize,
) -> Option<u64> {
    match ctx
        .store
        .release_held(subscription_id, now_ms(), limit)
        .await
    {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, subscription_id, "could not release parked deliveries; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}

/// Writes the jobs fan-out handed over unscheduled (and the retries the
/// changelog keeps) to the schedule, due when a lease would end (as if they
/// had been scheduled leased), and settles them: from then on the schedule
/// keeps them, not the log (a retry is forgotten in the changelog). Whether
/// every job is in the schedule now.
pub(super) async fn schedule_unscheduled(ctx: &WorkerContext, jobs: &mut [Job]) -> bool {
    let due = now_ms() + ctx.config.lease().as_millis() as i64;
    let deliveries: Vec<ScheduledDelivery> = jobs
        .iter()
        .filter(|j| j.unscheduled())
        .map(|j| ScheduledDelivery {
            due_at_ms: due,
            ..j.delivery.clone()
        })
        .collect();
    if deliveries.is_empty() {
        return true;
    }
    if !super::attempt::schedule_durably(ctx, deliveries).await {
        return false;
    }
    for job in jobs.iter_mut() {
        if let Some(settle) = job.settle.take() {
            settle.done();
        }
        if job.kept {
            // Not forgotten (the changelog is down): a restore brings it
            // back as well, a duplicate at worst.
            super::attempt::forget_kept(ctx, job).await;
            job.kept = false;
        }
    }
    true
}
