//! Bulk recovery: re-deliver, as replays, what one subscription had in a time
//! range — every event delivered (or attempted) there, or only those whose
//! latest outcome is `failed` or `dead`.
//!
//! A job is a row in the store. One background task works through the
//! unfinished jobs a page at a time: each page's replays are scheduled, and
//! the job's cursor and counts moved, in one store transaction, so a crash
//! neither loses nor repeats a page, and a restart resumes where it stopped.
//! Pages are paced (at most [`PAGE`] events per [`PACE`]) so a large recovery
//! never floods the schedule ahead of live traffic.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::{
    error::EngineError,
    ids,
    model::ScheduledDelivery,
    resources::{RecoveryJob, RecoveryStatus},
    store::{embedded::now_ms, RecoveryScope, Store},
};

/// Prefix of recovery job ids.
pub const RECOVERY: &str = "rcv";
/// Events handled per step of a job.
const PAGE: usize = 100;
/// Pause between steps.
const PACE: Duration = Duration::from_millis(100);

/// The smallest event id created at `t` (UUIDv7 ids start with their time).
fn event_id_at(t: OffsetDateTime) -> String {
    let ms = (t.unix_timestamp_nanos() / 1_000_000).clamp(0, (1i128 << 48) - 1);
    format!("{}_{ms:012x}{}", ids::EVENT, "0".repeat(20))
}

fn scope(job: &RecoveryJob) -> RecoveryScope {
    RecoveryScope {
        tenant_id: job.tenant_id.clone(),
        subscription_id: job.subscription_id.clone(),
        from_event_id: event_id_at(job.since),
        to_event_id: event_id_at(job.until),
        only_failed: job.only_failed,
    }
}

impl Engine {
    /// Starts a recovery of `subscription_id` over `[since, until)` (an
    /// `until` in the future is taken as now). Returns the job at once; it
    /// proceeds in the background.
    pub async fn start_recovery(
        &self,
        tenant_id: &str,
        subscription_id: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
        only_failed: bool,
    ) -> Result<RecoveryJob, EngineError> {
        let now = OffsetDateTime::now_utc();
        let until = until.min(now);
        if since >= until {
            return Err(EngineError::invalid(
                "since",
                "since must be before until (and before now)",
            ));
        }
        self.subscription(tenant_id, subscription_id).await?;
        let mut job = RecoveryJob {
            id: ids::new_id(RECOVERY),
            tenant_id: tenant_id.to_string(),
            subscription_id: subscription_id.to_string(),
            since,
            until,
            only_failed,
            status: RecoveryStatus::Running,
            total: 0,
            scheduled: 0,
            done: 0,
            created_at: now,
            updated_at: now,
        };
        job.total = self.store.count_recovery_candidates(&scope(&job)).await?;
        self.store.create_recovery(&job).await?;
        self.recovery_wake.notify_one();
        tracing::info!(tenant_id, subscription_id, recovery_id = %job.id, total = job.total, "recovery started");
        Ok(job)
    }

    /// One recovery job of the tenant, with its progress.
    pub async fn recovery(&self, tenant_id: &str, id: &str) -> Result<RecoveryJob, EngineError> {
        self.store
            .get_recovery(tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("recovery"))
    }
}

/// Works through unfinished recovery jobs until cancelled.
pub(super) async fn run(
    store: Arc<dyn Store>,
    wake_scheduler: Arc<Notify>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        let jobs = match store.unfinished_recoveries().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read recovery jobs; retrying");
                Vec::new()
            }
        };
        if jobs.is_empty() {
            tokio::select! {
                _ = wake.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        for (job, cursor) in jobs {
            if let Err(e) = step(store.as_ref(), &job, cursor).await {
                tracing::warn!(recovery_id = %job.id, error = %e, "recovery step failed; retrying");
            }
            wake_scheduler.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(PACE) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

async fn step(
    store: &dyn Store,
    job: &RecoveryJob,
    cursor: Option<String>,
) -> Result<(), crate::store::StoreError> {
    let subscription = store
        .get_subscription(&job.tenant_id, &job.subscription_id)
        .await?;
    if subscription.is_none() {
        // Deleted meanwhile: nothing left to deliver to.
        return store.advance_recovery(job, Vec::new(), cursor, true).await;
    }
    let page = store
        .recovery_candidates(&scope(job), cursor.as_deref(), PAGE)
        .await?;
    let finished = page.len() < PAGE;
    let next_cursor = page.last().map(|c| c.event_id.clone()).or(cursor);
    let now = now_ms();
    let ordered = subscription.is_some_and(|s| s.ordering == crate::model::Ordering::Strict);
    let deliveries = page
        .into_iter()
        .map(|c| ScheduledDelivery {
            delivery_id: ids::new_id(ids::DELIVERY),
            tenant_id: job.tenant_id.clone(),
            event_id: c.event_id,
            subscription_id: job.subscription_id.clone(),
            attempt: 1,
            replay_of: Some(c.delivery_id),
            is_replay: true,
            due_at_ms: now,
            // Recovered deliveries queue behind what is pending, in event order.
            seq: i64::MAX,
            ordered,
        })
        .collect();
    store
        .advance_recovery(job, deliveries, next_cursor, finished)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_bounds_sort_with_real_ids() {
        let before = event_id_at(OffsetDateTime::now_utc() - Duration::from_secs(1));
        let id = ids::new_id(ids::EVENT);
        let after = event_id_at(OffsetDateTime::now_utc() + Duration::from_secs(1));
        assert!(ids::is_valid(ids::EVENT, &before), "{before}");
        assert!(before < id && id < after, "{before} < {id} < {after}");
    }
}
