//! The scheduler: takes due deliveries from the durable schedule, and the
//! retries the changelog keeps in memory ([`run_kept`]), and hands them to
//! the shards.
//!
//! Claiming a delivery leases it (its due time moves past the longest an
//! attempt can take), so after a crash every claimed-but-unrecorded delivery
//! falls due again: nothing is lost, at the price of a possible duplicate.
//! Due order is by time across all endpoints, and a dead endpoint's retries
//! sit in the future, so it never holds up anybody else's deliveries.
//! It claims no more than the shards have room for (the hand-off limit), so
//! nothing it claims waits in a live process for its lease to end.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    retries::Retries,
    worker::{Job, Shards},
};
use crate::{clock::now_ms, gone::GoneTenants, store::Store};

/// Deliveries claimed per round.
const CLAIM_BATCH: usize = 512;
/// How often the schedule is checked when nobody rings.
const IDLE_TICK: Duration = Duration::from_millis(200);
/// How often the shards' room is checked while they are full.
const FULL_TICK: Duration = Duration::from_millis(5);
/// How often expired dedupe claims are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Runs until `cancel`: claim due deliveries, dispatch, sleep until rung
/// (`wake`) or the idle tick.
pub async fn run(
    store: Arc<dyn Store>,
    shards: Arc<Shards>,
    wake: Arc<Notify>,
    lease: Duration,
    cancel: CancellationToken,
) {
    let mut last_purge = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        // Claim no more than the shards have room for: a claimed delivery
        // that no shard takes would wait for its lease to end.
        let room = shards.room().min(CLAIM_BATCH);
        if room < CLAIM_BATCH.min(shards.capacity() / 4).max(1) {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(FULL_TICK) => {}
                () = cancel.cancelled() => return,
            }
            continue;
        }
        let now = now_ms();
        let claimed = match store
            .claim_due(now, now + lease.as_millis() as i64, room)
            .await
        {
            Ok(c) => {
                backoff = Duration::from_millis(50);
                c
            }
            Err(e) => {
                tracing::error!(error = %e, "could not read the delivery schedule; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let full = claimed.len() == room;
        for (delivery, event) in claimed {
            tokio::select! {
                () = shards.dispatch(Job::scheduled(delivery, Arc::new(event.into()))) => {}
                () = cancel.cancelled() => return,
            }
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            match store.purge_expired(now_ms()).await {
                Ok(n) if n > 0 => tracing::debug!(purged = n, "expired dedupe claims removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not purge expired dedupe claims"),
            }
        }
        if full {
            continue;
        }
        // Sleep until the next delivery falls due (a retry due in 10 ms goes
        // in 10 ms), the idle tick at most, or until rung.
        let nap = match store.next_due().await {
            Ok(Some(due)) if due > now_ms() => {
                Duration::from_millis((due - now_ms()) as u64).min(IDLE_TICK)
            }
            _ => IDLE_TICK,
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(nap) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Kept retries handed over at a time.
const KEPT_BATCH: usize = 256;

/// Hands each retry the changelog keeps ([`super::retries`]) to the
/// shards when it is due, until `cancel`. A retry of a deleted tenant is
/// forgotten instead: nothing of the tenant is written after its purge
/// (the purge cannot reach a worker's memory).
pub async fn run_kept(
    retries: Arc<Retries>,
    shards: Arc<Shards>,
    gone: Arc<GoneTenants>,
    cancel: CancellationToken,
) {
    loop {
        let due = retries.take_due(now_ms(), KEPT_BATCH);
        if due.len() == KEPT_BATCH {
            tokio::task::yield_now().await;
        }
        let idle = due.is_empty();
        for p in due {
            let d = &p.delivery;
            let settle = retries.settle_of(&d.delivery_id);
            if gone.contains(&d.tenant_id) {
                // Nothing of the tenant is delivered any more.
                if let Some(settle) = settle {
                    settle.done();
                }
                if let Some(log) = retries.log().cloned() {
                    let (tenant, id) = (d.tenant_id.clone(), d.delivery_id.clone());
                    tokio::spawn(async move {
                        if let Err(e) = log.forget(&tenant, &id).await {
                            tracing::debug!(error = %e, "could not forget a deleted tenant's retry; a restore drops it again");
                        }
                    });
                }
                continue;
            }
            let mut job = Job::kept(p.delivery, Arc::new(p.event.into()));
            job.settle = settle;
            shards.dispatch(job).await;
        }
        if !idle {
            continue;
        }
        let nap = retries.next_due().map_or(Duration::from_secs(1), |at| {
            Duration::from_millis((at - now_ms()).clamp(0, 1_000) as u64)
        });
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            () = retries.wake.notified() => {}
            () = cancel.cancelled() => return,
        }
    }
}
