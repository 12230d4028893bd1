//! Replaying every event of a time range from the event log to one
//! subscription, at scale: the engine-side runner of a recovery job whose
//! events come from the log (`only_failed = false`) rather than from the
//! delivery history.
//!
//! What it guarantees, and how:
//! - **Nothing loaded whole**: it seeks the tenant's partition to the first
//!   offset appended at `since` ([`EventLog::offset_for_time`]) and reads
//!   pages of records until one appended at `until` (or the end offset seen
//!   at start), so memory stays one page whatever the range.
//! - **Throttled**: deliveries are scheduled no faster than `rate_per_sec`
//!   (they fall due as they are scheduled), so a recovering endpoint is not
//!   flooded and live traffic keeps its share of the workers.
//! - **Resumable, at least once, no duplicates on repeat**: after each page
//!   the job's cursor (the next log offset) is stored with its deliveries.
//!   A restarted process continues from the stored cursor. Delivery ids
//!   are derived from `(job, event)`, so a page repeated after a crash
//!   between scheduling and the cursor write schedules the same rows again
//!   instead of new ones.
//! - **Visible progress**: the job counts `scheduled` (rows in the job's
//!   delivery set) and `done` (their final attempts recorded).
//!
//! The runner works against the CQL store (the distributed deployment
//! where ranges get large); the recovery job methods join the `Store`
//! trait with issue 3's recovery resource.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{
    error::EngineError,
    ids,
    log::EventLog,
    model::ScheduledDelivery,
    resources::RecoveryJob,
    store::{embedded::now_ms, scylla::ScyllaStore, Store},
};

/// Records read from the log per page.
const PAGE: usize = 200;

/// The delivery id of `event_id`'s replay in job `job_id` (stable across repeats).
pub fn replay_delivery_id(job_id: &str, event_id: &str) -> String {
    let digest = Sha256::digest(format!("{job_id}/{event_id}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}_{hex}", ids::DELIVERY)
}

/// Runs job `job` from `cursor` (a log offset; `None` = from `since`) until
/// the range is scheduled (`Ok(true)`) or `cancel` fires (`Ok(false)`).
pub async fn run_log_recovery(
    store: &ScyllaStore,
    log: &dyn EventLog,
    job: &RecoveryJob,
    cursor: Option<String>,
    rate_per_sec: u32,
    cancel: &CancellationToken,
) -> Result<bool, EngineError> {
    let rate = rate_per_sec.max(1) as f64;
    let partition = log.partition_for(&job.tenant_id);
    let mut offset = match cursor.as_deref().map(str::parse::<u64>) {
        Some(Ok(o)) => o,
        _ => log.offset_for_time(partition, job.since).await?,
    };
    let end = log.end_offset(partition).await?;
    // The log stamps records to the millisecond: compare at that grain, so
    // a record appended in `until`'s millisecond (after it) stays outside.
    let until_ms = (job.until.unix_timestamp_nanos() / 1_000_000) as i64;
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    loop {
        let Some(sub) = store
            .get_subscription(&job.tenant_id, &job.subscription_id)
            .await?
        else {
            // Deleted meanwhile: nothing left to deliver to.
            store.advance_recovery(job, Vec::new(), None, true).await?;
            return Ok(true);
        };
        let want = PAGE.min(rate_per_sec.max(1) as usize);
        let records = if offset < end {
            log.read(partition, offset, want).await?
        } else {
            Vec::new()
        };
        let mut finished = records.is_empty();
        let mut deliveries = Vec::new();
        for record in &records {
            let appended_ms = (record.appended_at.unix_timestamp_nanos() / 1_000_000) as i64;
            if appended_ms >= until_ms || record.position.offset >= end {
                finished = true;
                break;
            }
            offset = record.position.offset + 1;
            let event = &record.event;
            if event.tenant_id != job.tenant_id || !sub.matches(&event.event_type) {
                continue;
            }
            deliveries.push(ScheduledDelivery {
                delivery_id: replay_delivery_id(&job.id, &event.id),
                tenant_id: job.tenant_id.clone(),
                event_id: event.id.clone(),
                subscription_id: job.subscription_id.clone(),
                attempt: 1,
                replay_of: None,
                is_replay: true,
                due_at_ms: now_ms(),
                seq: record.position.offset as i64,
                ordered: false,
            });
        }
        if offset >= end {
            finished = true;
        }
        sent += deliveries.len() as u64;
        store
            .advance_recovery(job, deliveries, Some(offset.to_string()), finished)
            .await?;
        if finished {
            return Ok(true);
        }
        // Pace: `sent` deliveries may go out no sooner than sent / rate seconds in.
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = cancel.cancelled() => return Ok(false),
        }
    }
}
