//! Recovery jobs (issue 3's resources) on CQL.
//!
//! A recovery walks `sub_event_state` — the latest delivery of each event
//! to the subscription, partitioned by the event's day — over the job's
//! time range in event-id order, one `LIMIT`ed page at a time: it never
//! loads the range into memory. (Replaying every event of a range comes
//! from the event log instead: see [`crate::log_recovery`].) The job's cursor lives in
//! `recoveries_unfinished`, so a restarted process resumes after the last
//! page it recorded. Progress: `scheduled` is counted as pages are
//! scheduled; `done` counts the job's deliveries whose final attempt was
//! recorded (`recovery_done`, written by the attempt that removes the
//! delivery from the schedule).

use ::scylla::value::CqlValue;
use async_trait::async_trait;

use super::{decode, encode, id_day, ScyllaStore};
use crate::{
    model::{Outcome, ScheduledDelivery},
    resources::{RecoveryCandidate, RecoveryJob, RecoveryStatus},
    store::{RecoveryScope, RecoveryStore, StoreError},
};

impl ScyllaStore {
    /// One recovery job as stored (`done` not counted: the steps store 0).
    async fn stored_recovery(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<RecoveryJob>, StoreError> {
        let row: Option<(String,)> = self
            .row(
                "SELECT body FROM recoveries WHERE tenant_id = ? AND id = ?",
                (tenant_id, id),
            )
            .await?;
        row.map(|(body,)| decode(&body)).transpose()
    }
}

/// The day partitions a scope covers, oldest first.
fn days(scope: &RecoveryScope) -> impl Iterator<Item = i32> {
    id_day(&scope.from_event_id)..=id_day(&scope.to_event_id)
}

fn wanted(scope: &RecoveryScope, outcome: Option<&str>) -> bool {
    !scope.only_failed || outcome.and_then(Outcome::parse) != Some(Outcome::Delivered)
}

#[async_trait]
impl RecoveryStore for ScyllaStore {
    /// Stores a new recovery job (unfinished, no cursor yet).
    async fn create_recovery(&self, job: &RecoveryJob) -> Result<(), StoreError> {
        // Write-ahead; kept if the job's insert fails (its outcome is unknown).
        if let Some(record) = crate::audit::take_pending() {
            self.audit_ahead(&record).await?;
        }
        self.exec(
            "INSERT INTO recoveries (tenant_id, id, body) VALUES (?, ?, ?)",
            (&job.tenant_id, &job.id, encode(job)?),
        )
        .await?;
        if job.status == RecoveryStatus::Running {
            self.exec(
                "INSERT INTO recoveries_unfinished (id, tenant_id) VALUES (?, ?)",
                (&job.id, &job.tenant_id),
            )
            .await?;
        }
        Ok(())
    }

    /// One recovery job of a tenant, with `done` counted now.
    async fn get_recovery(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<RecoveryJob>, StoreError> {
        let Some(mut job) = self.stored_recovery(tenant_id, id).await? else {
            return Ok(None);
        };
        let done: Option<(i64,)> = self
            .row(
                "SELECT COUNT(*) FROM recovery_done WHERE recovery_id = ?",
                (id,),
            )
            .await?;
        job.done = done.map_or(0, |(n,)| n.max(0) as u64).min(job.scheduled);
        Ok(Some(job))
    }

    /// Jobs still scheduling, each with the last event id it handled.
    async fn unfinished_recoveries(
        &self,
    ) -> Result<Vec<(RecoveryJob, Option<String>)>, StoreError> {
        let mut open = Vec::new();
        self.scan(
            "SELECT id, tenant_id, cursor FROM recoveries_unfinished",
            (),
            |row: (String, String, Option<String>)| {
                open.push(row);
                Ok(())
            },
        )
        .await?;
        let mut out = Vec::new();
        for (id, tenant, cursor) in open {
            // Not `get_recovery`: stepping needs no `done`, and counting it
            // reads every delivery of the job that is done.
            if let Some(job) = self.stored_recovery(&tenant, &id).await? {
                out.push((job, cursor));
            }
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    /// Takes or renews the lease on stepping job `id` (see
    /// [`crate::store::Store::lease_recovery`]): a conditional insert for a
    /// job nobody held, else a compare-and-set on the holder and end read.
    async fn lease_recovery(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let (applied, current) = self
            .lwt(
                "INSERT INTO recovery_leases (id, owner, until_ms) VALUES (?, ?, ?) IF NOT EXISTS USING TTL 86400",
                (id, owner, until_ms),
            )
            .await?;
        if applied {
            return Ok(true);
        }
        let (Some(CqlValue::Text(holder)), Some(CqlValue::BigInt(until))) =
            (current.get("owner"), current.get("until_ms"))
        else {
            return Err(StoreError::Corrupt(format!(
                "recovery lease {id} has no holder or end"
            )));
        };
        if holder != owner && *until >= now_ms {
            return Ok(false);
        }
        let (applied, _) = self
            .lwt(
                "UPDATE recovery_leases USING TTL 86400 SET owner = ?, until_ms = ? WHERE id = ? IF owner = ? AND until_ms = ?",
                (owner, until_ms, id, holder, until),
            )
            .await?;
        Ok(applied)
    }

    /// Counts the events in scope (a paged walk, nothing held in memory).
    async fn count_recovery_candidates(&self, scope: &RecoveryScope) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for day in days(scope) {
            self.scan(
                "SELECT event_id, outcome FROM sub_event_state WHERE tenant_id = ? AND subscription_id = ? AND day = ? AND event_id >= ? AND event_id < ?",
                (
                    &scope.tenant_id,
                    &scope.subscription_id,
                    day,
                    &scope.from_event_id,
                    &scope.to_event_id,
                ),
                |(_, outcome): (String, Option<String>)| {
                    if wanted(scope, outcome.as_deref()) {
                        n += 1;
                    }
                    Ok(())
                },
            )
            .await?;
        }
        Ok(n)
    }

    /// Up to `limit` events in scope with ids after `after`, in id order,
    /// each with its latest delivery to the subscription.
    async fn recovery_candidates(
        &self,
        scope: &RecoveryScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecoveryCandidate>, StoreError> {
        let mut out = Vec::new();
        let first_day = after.map_or(i32::MIN, id_day);
        for day in days(scope).filter(|d| *d >= first_day) {
            let mut cursor = after.map(str::to_string);
            loop {
                let want = limit - out.len();
                let values = (
                    &scope.tenant_id,
                    &scope.subscription_id,
                    day,
                    cursor.as_deref().unwrap_or(&scope.from_event_id),
                    &scope.to_event_id,
                    (want.max(1) * 2).min(5_000) as i32,
                );
                let rows: Vec<(String, Option<String>, Option<String>)> = if cursor.is_some() {
                    self.rows(
                        "SELECT event_id, delivery_id, outcome FROM sub_event_state WHERE tenant_id = ? AND subscription_id = ? AND day = ? AND event_id > ? AND event_id < ? LIMIT ?",
                        values,
                    )
                    .await?
                } else {
                    self.rows(
                        "SELECT event_id, delivery_id, outcome FROM sub_event_state WHERE tenant_id = ? AND subscription_id = ? AND day = ? AND event_id >= ? AND event_id < ? LIMIT ?",
                        values,
                    )
                    .await?
                };
                let page_full = rows.len() == values.5 as usize;
                for (event_id, delivery_id, outcome) in rows {
                    cursor = Some(event_id.clone());
                    if wanted(scope, outcome.as_deref()) {
                        out.push(RecoveryCandidate {
                            event_id,
                            delivery_id: delivery_id.unwrap_or_default(),
                        });
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                if !page_full {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Schedules a page of the job's replays, records them as the job's,
    /// moves its cursor and counts, and marks it completed when `finished`.
    /// Ordered for at-least-once: deliveries first, cursor last (a crash in
    /// between schedules the page again rather than skipping it).
    async fn advance_recovery(
        &self,
        job: &RecoveryJob,
        deliveries: Vec<ScheduledDelivery>,
        cursor: Option<String>,
        finished: bool,
    ) -> Result<(), StoreError> {
        // What this process last recorded for the job, if the stored job
        // still says so: nobody stepped it since and no step of ours failed
        // half-way, so this page's count adds to it. Otherwise the job's
        // delivery set is counted (a page scheduled twice after a crash,
        // with the same ids, counts once) — a read of the whole set, which
        // a process that keeps the job pays once, not at every page.
        let tallied = self.recovery_tally.lock().remove(&job.id);
        let base = tallied.filter(|n| *n == job.scheduled);
        let work = deliveries.iter().map(|d| async move {
            self.exec(
                "INSERT INTO recovery_deliveries (recovery_id, delivery_id) VALUES (?, ?)",
                (&job.id, &d.delivery_id),
            )
            .await?;
            self.insert_schedule(d, Some(&job.id)).await
        });
        futures::future::try_join_all(work).await?;
        let scheduled = match base {
            Some(n) => n + deliveries.len() as u64,
            None => {
                let counted: Option<(i64,)> = self
                    .row(
                        "SELECT COUNT(*) FROM recovery_deliveries WHERE recovery_id = ?",
                        (&job.id,),
                    )
                    .await?;
                counted.map_or(0, |(n,)| n.max(0) as u64)
            }
        };
        let mut updated = job.clone();
        updated.scheduled = scheduled;
        updated.done = 0;
        updated.updated_at = time::OffsetDateTime::now_utc();
        if finished {
            updated.status = RecoveryStatus::Completed;
        }
        self.exec(
            "UPDATE recoveries SET body = ? WHERE tenant_id = ? AND id = ?",
            (encode(&updated)?, &job.tenant_id, &job.id),
        )
        .await?;
        if finished {
            self.exec("DELETE FROM recoveries_unfinished WHERE id = ?", (&job.id,))
                .await
        } else {
            self.exec(
                "UPDATE recoveries_unfinished SET cursor = ?, tenant_id = ? WHERE id = ?",
                (cursor, &job.tenant_id, &job.id),
            )
            .await?;
            self.recovery_tally.lock().insert(job.id.clone(), scheduled);
            Ok(())
        }
    }
}
