//! Bulk recovery: re-deliver, as replays, what one subscription had in a time
//! range — every event delivered (or attempted) there, or only those whose
//! latest outcome is `failed` or `dead` (source `deliveries`), or every
//! matching event the log holds for the range (source `log`, see
//! [`crate::log_recovery`]).
//!
//! A job is a row in the store. One background task works through the
//! unfinished jobs a page at a time: each page's replays are scheduled, and
//! the job's cursor and counts moved, in one store write, so a crash never
//! skips a page, and a restart resumes where it stopped. Pages are paced
//! to the configured rate (`--recovery-rate`, replays a second for all jobs
//! of the process) so a large recovery never floods an endpoint or the
//! schedule ahead of live traffic.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::audit::{self, action, AuditRecord};
use crate::{
    clock::now_ms,
    error::EngineError,
    ids,
    log::EventLog,
    log_recovery,
    model::ScheduledDelivery,
    resources::{RecoveryCandidate, RecoveryJob, RecoverySource, RecoveryStatus},
    store::{RecoveryScope, Store},
};

/// Prefix of recovery job ids.
pub const RECOVERY: &str = "rcv";
/// Events handled per step of a job (fewer when the rate is lower).
const PAGE: usize = 100;
/// How long a process holds a job it steps; renewed at every step. A killed
/// holder's job is taken over this long after its last step.
const LEASE: Duration = Duration::from_secs(15);
/// How often a process looks again for jobs other processes hold.
const LOOK_AGAIN: Duration = Duration::from_secs(2);

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
        source: RecoverySource,
    ) -> Result<RecoveryJob, EngineError> {
        let now = OffsetDateTime::now_utc();
        let until = until.min(now);
        if since >= until {
            return Err(EngineError::invalid(
                "since",
                "since must be before until (and before now)",
            ));
        }
        if only_failed && source == RecoverySource::Log {
            return Err(EngineError::invalid(
                "only_failed",
                "only_failed needs the delivery history: use source \"deliveries\" (the default) \
                 or drop only_failed",
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
            source,
            status: RecoveryStatus::Running,
            total: 0,
            scheduled: 0,
            done: 0,
            created_at: now,
            updated_at: now,
        };
        job.total = match source {
            RecoverySource::Deliveries => {
                self.store.count_recovery_candidates(&scope(&job)).await?
            }
            RecoverySource::Log => log_recovery::records_in_range(self.log.as_ref(), &job).await?,
        };
        let record = AuditRecord::new(tenant_id, action::RECOVERY_REQUESTED)
            .subscription(subscription_id)
            .target(&job.id)
            .detail("source", format!("{source:?}").to_lowercase());
        audit::recorded(record, self.store.create_recovery(&job)).await?;
        self.recovery_wake.notify_one();
        tracing::info!(tenant_id, subscription_id, recovery_id = %job.id, ?source, total = job.total, "recovery started");
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

/// Works through unfinished recovery jobs until cancelled, `rate` replays
/// a second at most. A job is stepped only under this process's lease on it
/// ([`Store::lease_recovery`]): with several processes on one store, each
/// job moves at its rate, and a page is never scheduled by two at once.
pub(super) async fn run(
    store: Arc<dyn Store>,
    log: Arc<dyn EventLog>,
    rate: u32,
    wake_scheduler: Arc<Notify>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let page = PAGE.min(rate.max(1) as usize);
    // One page per pause keeps the process at `rate` replays a second.
    let pace = Duration::from_secs_f64(page as f64 / f64::from(rate.max(1)));
    let owner = ids::new_id("prc");
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
        let mut stepped_any = false;
        for (job, cursor) in jobs {
            let now = now_ms();
            let until = now + LEASE.as_millis() as i64;
            match store.lease_recovery(&job.id, &owner, now, until).await {
                Ok(true) => stepped_any = true,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(recovery_id = %job.id, error = %e, "cannot lease recovery job; retrying");
                    continue;
                }
            }
            let stepped = match job.source {
                RecoverySource::Deliveries => step(store.as_ref(), &job, cursor, page)
                    .await
                    .map_err(EngineError::from),
                RecoverySource::Log => log_recovery::log_step(
                    store.as_ref(),
                    log.as_ref(),
                    &job,
                    cursor.as_deref(),
                    page,
                )
                .await
                .map(|_| ()),
            };
            if let Err(e) = stepped {
                tracing::warn!(recovery_id = %job.id, error = %e, "recovery step failed; retrying");
            }
            wake_scheduler.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(pace) => {}
                _ = cancel.cancelled() => return,
            }
        }
        if !stepped_any {
            // Every open job is another process's for now.
            tokio::select! {
                _ = tokio::time::sleep(LOOK_AGAIN) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

async fn step(
    store: &dyn Store,
    job: &RecoveryJob,
    cursor: Option<String>,
    page_size: usize,
) -> Result<(), crate::store::StoreError> {
    let subscription = store
        .get_subscription(&job.tenant_id, &job.subscription_id)
        .await?;
    if subscription.is_none() {
        // Deleted meanwhile: nothing left to deliver to.
        return store.advance_recovery(job, Vec::new(), cursor, true).await;
    }
    let page = store
        .recovery_candidates(&scope(job), cursor.as_deref(), page_size)
        .await?;
    let finished = page.len() < page_size;
    let next_cursor = page.last().map(|c| c.event_id.clone()).or(cursor);
    let ordered = subscription.is_some_and(|s| s.ordering == crate::model::Ordering::Strict);
    let deliveries = replays(job, page, now_ms(), ordered);
    store
        .advance_recovery(job, deliveries, next_cursor, finished)
        .await
}

/// The deliveries that replay a page of candidates. Their ids derive from
/// the job and the event, so a page stepped again — after the process that
/// stepped it died before saving its cursor — schedules the same deliveries,
/// and the job counts them once; they sort in event order.
fn replays(
    job: &RecoveryJob,
    page: Vec<RecoveryCandidate>,
    now: i64,
    ordered: bool,
) -> Vec<ScheduledDelivery> {
    page.into_iter()
        .map(|c| ScheduledDelivery {
            delivery_id: ids::derived(ids::DELIVERY, &c.event_id, &job.id),
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
        .collect()
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

    #[test]
    fn a_page_stepped_again_replays_with_the_same_deliveries() {
        let job: RecoveryJob = serde_json::from_value(serde_json::json!({
            "id": "rcv_1", "tenant_id": "t", "subscription_id": "sub_1",
            "since": "2026-12-01T00:00:00Z", "until": "2026-12-02T00:00:00Z",
            "only_failed": false, "source": "deliveries", "status": "running",
            "total": 2, "scheduled": 0, "done": 0,
            "created_at": "2026-12-02T00:00:00Z", "updated_at": "2026-12-02T00:00:00Z"
        }))
        .unwrap();
        let page = || {
            [ids::new_id(ids::EVENT), ids::new_id(ids::EVENT)]
                .map(|event_id| RecoveryCandidate {
                    event_id,
                    delivery_id: ids::new_id(ids::DELIVERY),
                })
                .to_vec()
        };
        let first = page();
        let ids_of = |page: Vec<RecoveryCandidate>, now| {
            replays(&job, page, now, true)
                .into_iter()
                .map(|d| d.delivery_id)
                .collect::<Vec<_>>()
        };
        let once = ids_of(first.clone(), 1);
        assert_eq!(
            once,
            ids_of(first, 2),
            "a re-step must not mint new deliveries"
        );
        assert!(once[0] < once[1], "replays keep event order: {once:?}");
        assert!(once.iter().all(|id| !ids_of(page(), 1).contains(id)));
    }
}
