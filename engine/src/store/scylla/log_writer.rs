//! Group commit of the delivery log. Attempts recorded at the same time are
//! written together: their rows of each log table are grouped by partition
//! key and sent as one unlogged batch per key (split past [`BATCH_BYTES`]),
//! so the rows of one batch land on one replica set in one mutation. A
//! caller's write returns once every batch holding its rows is applied; a
//! failed batch fails every caller of its flush, who writes again (the rows
//! are idempotent by id).
//!
//! Nothing waits for a group to fill: a flush takes what has queued since
//! the last one began, so an idle store writes an attempt at once and a
//! busy one batches as deep as its load.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

use ::scylla::client::caching_session::CachingSession;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{encode, event_slot, grouped::write_table, id_day};
use crate::{
    model::WebhookDeliveryLog,
    store::{OpCounts, StoreError},
};

/// Most attempts one flush takes.
const GROUP: usize = 512;
/// Flushes in flight at once.
const FLUSHES: usize = 4;

const BY_TENANT: &str = "INSERT INTO logs_by_tenant (tenant_id, day, id, subscription_id, outcome, body) VALUES (?, ?, ?, ?, ?, ?)";
// The attempt's body is written once, to `logs_by_tenant`; the other two
// tables list ids, and a list fetches their bodies from it (`logs`).
const BY_SUBSCRIPTION: &str = "INSERT INTO logs_by_subscription (tenant_id, subscription_id, day, id, outcome) VALUES (?, ?, ?, ?, ?)";
const BY_EVENT: &str = "INSERT INTO logs_by_event_slot (tenant_id, slot, event_id, id, subscription_id, outcome) VALUES (?, ?, ?, ?, ?, ?)";
/// What a row without a body adds to a batch, for its split.
const KEY_ROW_BYTES: usize = 128;
const LATEST: &str = "INSERT INTO sub_event_state (tenant_id, subscription_id, day, event_id, delivery_id, outcome) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?";

/// One attempt waiting for its flush.
struct Pending {
    attempt: WebhookDeliveryLog,
    body: String,
    /// Write timestamp of its `sub_event_state` row (µs), taken when it
    /// was queued: flushes run concurrently and may land in any order, and
    /// the later attempt must win.
    queued_at: i64,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle the store writes attempts through; its flusher task ends
/// when the handle is dropped.
pub(super) struct LogWriter {
    queue: mpsc::UnboundedSender<Pending>,
    /// The last write timestamp handed out (µs): they only grow.
    clock: AtomicI64,
}

impl LogWriter {
    /// Starts the flusher on the current runtime.
    pub(super) fn start(session: Arc<CachingSession>, ops: Arc<OpCounts>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, session, ops));
        Self {
            queue,
            clock: AtomicI64::new(0),
        }
    }

    /// Writes one attempt to every log table, with whatever else is queued.
    pub(super) async fn write(&self, attempt: &WebhookDeliveryLog) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        let now = crate::clock::now_ms() * 1_000;
        let last = self
            .clock
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| Some(now.max(t + 1)))
            .unwrap_or(now);
        let pending = Pending {
            attempt: attempt.clone(),
            body: encode(attempt)?,
            queued_at: now.max(last + 1),
            done,
        };
        let closed = || StoreError::Unavailable("the delivery-log writer stopped".into());
        self.queue.send(pending).map_err(|_| closed())?;
        result
            .await
            .map_err(|_| closed())?
            .map_err(StoreError::Unavailable)
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    session: Arc<CachingSession>,
    ops: Arc<OpCounts>,
) {
    let slots = Arc::new(Semaphore::new(FLUSHES));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot is what lets the next group grow.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let (session, ops) = (session.clone(), ops.clone());
        tokio::spawn(async move {
            let result = flush(&session, &ops, &group).await;
            for p in group {
                let _ = p.done.send(result.clone());
            }
            drop(slot);
        });
    }
}

/// Writes a group's rows to the four log tables, concurrently.
async fn flush(session: &CachingSession, ops: &OpCounts, group: &[Pending]) -> Result<(), String> {
    let by_tenant = group.iter().map(|p| {
        let a = &p.attempt;
        let day = id_day(&a.id);
        let row = (
            &*a.tenant_id,
            day,
            &*a.id,
            &*a.subscription_id,
            a.outcome.as_str(),
            &*p.body,
        );
        ((&*a.tenant_id, day), row, p.body.len())
    });
    let by_subscription = group.iter().map(|p| {
        let a = &p.attempt;
        let day = id_day(&a.id);
        let row = (
            &*a.tenant_id,
            &*a.subscription_id,
            day,
            &*a.id,
            a.outcome.as_str(),
        );
        (
            (&*a.tenant_id, &*a.subscription_id, day),
            row,
            KEY_ROW_BYTES,
        )
    });
    let by_event = group.iter().map(|p| {
        let a = &p.attempt;
        let slot = event_slot(&a.event_id);
        let row = (
            &*a.tenant_id,
            slot,
            &*a.event_id,
            &*a.id,
            &*a.subscription_id,
            a.outcome.as_str(),
        );
        ((&*a.tenant_id, slot), row, KEY_ROW_BYTES)
    });
    // One row per (subscription, event), written with the timestamp taken
    // when its attempt was queued, so that the later attempt wins however
    // the flushes land. Within a group the last one is the latest.
    let mut seen = std::collections::HashSet::new();
    let mut newest: Vec<&Pending> = group
        .iter()
        .rev()
        .filter(|p| seen.insert((&p.attempt.subscription_id, &p.attempt.event_id)))
        .collect();
    newest.reverse();
    let latest = newest.into_iter().map(|p| {
        let a = &p.attempt;
        let day = id_day(&a.event_id);
        let row = (
            &*a.tenant_id,
            &*a.subscription_id,
            day,
            &*a.event_id,
            &*a.delivery_id,
            a.outcome.as_str(),
            p.queued_at,
        );
        (
            (&*a.tenant_id, &*a.subscription_id, day),
            row,
            KEY_ROW_BYTES,
        )
    });
    futures::try_join!(
        write_table(session, ops, BY_TENANT, by_tenant),
        write_table(session, ops, BY_SUBSCRIPTION, by_subscription),
        write_table(session, ops, BY_EVENT, by_event),
        write_table(session, ops, LATEST, latest),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}
