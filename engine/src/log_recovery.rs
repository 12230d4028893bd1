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
//! A recovery job with `"source": "log"` (`POST …/recover`) runs here, on
//! either store; the engine's recovery task paces it at `--recovery-rate`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    clock::now_ms, error::EngineError, ids, log::EventLog, model::ScheduledDelivery,
    resources::RecoveryJob, store::Store,
};

/// Records read from the log per page.
const PAGE: usize = 200;

/// One page of job `job` from `cursor` (a log offset; `None` = from
/// `since`): schedules the replays of at most `page` records and moves the
/// cursor past them, in one [`Store::advance_recovery`].
pub async fn log_step(
    store: &dyn Store,
    log: &dyn EventLog,
    job: &RecoveryJob,
    cursor: Option<&str>,
    page: usize,
) -> Result<LogStep, EngineError> {
    let Some(sub) = store
        .get_subscription(&job.tenant_id, &job.subscription_id)
        .await?
    else {
        // Deleted meanwhile: nothing left to deliver to.
        store
            .advance_recovery(job, Vec::new(), cursor.map(str::to_string), true)
            .await?;
        return Ok(LogStep {
            scheduled: 0,
            cursor: cursor.unwrap_or_default().to_string(),
            finished: true,
        });
    };
    let partition = log.partition_for(&job.tenant_id);
    let mut offset = match cursor.map(str::parse::<u64>) {
        Some(Ok(o)) => o,
        _ => log.offset_for_time(partition, job.since).await?,
    };
    let end = log.end_offset(partition).await?;
    // The log stamps records to the millisecond: compare at that grain, so
    // a record appended in `until`'s millisecond (after it) stays outside.
    let until_ms = (job.until.unix_timestamp_nanos() / 1_000_000) as i64;
    let records = if offset < end {
        log.read(partition, offset, page.max(1)).await?
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
            // Stable across repeats of the page.
            delivery_id: ids::derived(ids::DELIVERY, &event.id, &job.id),
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
    let step = LogStep {
        scheduled: deliveries.len(),
        cursor: offset.to_string(),
        finished,
    };
    store
        .advance_recovery(job, deliveries, Some(step.cursor.clone()), finished)
        .await?;
    Ok(step)
}

/// What one [`log_step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStep {
    /// Deliveries it scheduled.
    pub scheduled: usize,
    /// The job's cursor after it (the next log offset).
    pub cursor: String,
    /// Whether the range is done (the job is completed).
    pub finished: bool,
}

/// The records appended to the tenant's partition in the job's range (an
/// upper bound of what the job schedules: other tenants share partitions).
pub async fn records_in_range(log: &dyn EventLog, job: &RecoveryJob) -> Result<u64, EngineError> {
    let partition = log.partition_for(&job.tenant_id);
    let from = log.offset_for_time(partition, job.since).await?;
    let to = log.offset_for_time(partition, job.until).await?;
    Ok(to.saturating_sub(from))
}

/// Runs job `job` from `cursor` to its end, `rate_per_sec` deliveries a
/// second at most: until the range is scheduled (`Ok(true)`) or `cancel`
/// fires (`Ok(false)`). The engine's recovery task runs jobs a step at a
/// time instead (see `Engine::start_recovery`); this is the same work for
/// one job in a loop.
pub async fn run_log_recovery(
    store: &dyn Store,
    log: &dyn EventLog,
    job: &RecoveryJob,
    mut cursor: Option<String>,
    rate_per_sec: u32,
    cancel: &CancellationToken,
) -> Result<bool, EngineError> {
    let rate = rate_per_sec.max(1) as f64;
    let page = PAGE.min(rate_per_sec.max(1) as usize);
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    loop {
        let step = log_step(store, log, job, cursor.as_deref(), page).await?;
        if step.finished {
            return Ok(true);
        }
        cursor = Some(step.cursor);
        sent += step.scheduled as u64;
        // Pace: `sent` deliveries may go out no sooner than sent / rate seconds in.
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = cancel.cancelled() => return Ok(false),
        }
    }
}
