//! Attempt records, combined: every `record_attempt` waiting when the
//! writer reaches the first one's job is written by that job, inside one
//! savepoint, instead of one job and one savepoint per attempt. Callers still
//! return only after the commit that holds their record.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::{db_err, savepoint, Job};
use crate::{
    model::{ScheduledDelivery, WebhookDeliveryLog},
    store::StoreError,
};

/// One attempt waiting for the writer.
pub(super) struct Pending {
    pub attempt: WebhookDeliveryLog,
    /// The attempt, JSON-encoded (by the caller, off the writer thread).
    pub body: String,
    /// What the attempt does to the delivery's schedule entry.
    pub change: ScheduleChange,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

/// What recording an attempt does to the delivery's schedule entry.
pub(super) enum ScheduleChange {
    /// Due again for its next attempt.
    Reschedule(ScheduledDelivery),
    /// Settled: removed.
    Remove,
    /// Left as it is (another write moves it).
    Keep,
}

/// Attempts waiting for the writer; the first one in submits the job.
#[derive(Clone, Default)]
pub(super) struct AttemptQueue(Arc<Mutex<Vec<Pending>>>);

impl AttemptQueue {
    /// Queues `p`; returns whether the caller must submit [`Self::job`]
    /// (nobody else's job is waiting to take it).
    pub fn push(&self, p: Pending) -> bool {
        let mut q = self.0.lock();
        q.push(p);
        q.len() == 1
    }

    /// Answers every queued attempt with `error` (the writer is gone).
    pub fn refuse(&self, error: &str) {
        for p in std::mem::take(&mut *self.0.lock()) {
            let _ = p
                .reply
                .send(Err(StoreError::Unavailable(error.to_string())));
        }
    }

    /// A writer job that records everything queued when it runs.
    pub fn job(&self) -> Job {
        let queue = self.clone();
        Box::new(move |conn| {
            let batch = std::mem::take(&mut *queue.0.lock());
            let written = savepoint(conn, |conn| batch.iter().try_for_each(|p| write(conn, p)))
                .map_err(|e| e.to_string());
            Box::new(move |commit| {
                let outcome = commit.and(written);
                for p in batch {
                    let _ = p
                        .reply
                        .send(outcome.clone().map_err(StoreError::Unavailable));
                }
            })
        })
    }
}

fn write(conn: &Connection, p: &Pending) -> Result<(), StoreError> {
    let a = &p.attempt;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO delivery_logs (id, tenant_id, delivery_id, event_id, subscription_id, outcome, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            a.id,
            a.tenant_id,
            a.delivery_id,
            a.event_id,
            a.subscription_id,
            a.outcome.as_str(),
            p.body
        ])
    })
    .map_err(db_err)?;
    match &p.change {
        ScheduleChange::Reschedule(n) => conn
            .prepare_cached(
                "UPDATE schedule SET attempt = ?1, due_at = ?2, leased = 0 WHERE delivery_id = ?3",
            )
            .and_then(|mut st| st.execute(params![n.attempt, n.due_at_ms, n.delivery_id])),
        ScheduleChange::Remove => conn
            .prepare_cached("DELETE FROM schedule WHERE delivery_id = ?1")
            .and_then(|mut st| st.execute([&a.delivery_id])),
        ScheduleChange::Keep => Ok(0),
    }
    .map_err(db_err)?;
    Ok(())
}
