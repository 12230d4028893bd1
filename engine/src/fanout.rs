//! Fan-out: the log consumer that turns events into scheduled deliveries.
//!
//! For each batch read from the log it asks the store, in one transaction
//! per batch, to index the events, drop duplicates by `(tenant,
//! dedupe_key)`, skip events fanned out before (a re-read after a crash) and
//! schedule one delivery per matching subscription. Only then does it commit
//! the batch's log positions: an event is never past the committed offset
//! before its deliveries are durable (at-least-once end to end).
//!
//! The event log is the schedule of first attempts. An event whose
//! deliveries are all unordered is handed to this process's shards without
//! a schedule row: its log offset stays uncommitted until each of its
//! deliveries is settled (recorded, or written to the schedule for a retry
//! or a hold; see [`crate::delivery::handoff`]), so a first attempt that
//! succeeds costs one attempt record and no schedule write, claim or
//! delete. If the process dies first, the event is read again and fanned
//! out again (a duplicate at worst, never a loss).
//!
//! Strictly ordered deliveries wait in the schedule for the scheduler,
//! which releases each subscription's head only; an event with some of
//! those has its other deliveries scheduled already leased, and handed
//! over after the commit.
//!
//! The shards hold at most `handoff_limit` deliveries (memory stays bounded
//! when fan-out outruns the endpoints). A batch with more is fanned out in
//! chunks as the shards drain: the events not yet handed over wait in
//! memory, their offsets uncommitted, instead of in the store's schedule
//! (rows, and on the CQL store a lightweight transaction per claim). Only
//! shards that stay full (`handoff_patience`: endpoints slow to answer)
//! make fan-out schedule an event's deliveries in the store, so that it
//! goes on reading the log.
//!
//! When other processes (`--role api`) write subscriptions to a shared store,
//! the fan-out checks the store's subscription version before each batch and
//! reloads its index when it moved. A subscription is committed before the
//! API answers 201, so every event emitted after that answer is matched
//! against it.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::now_ms,
    delivery::{
        context::SharedEvent,
        handoff::Unsettled,
        retries::Retries,
        worker::{Job, Shards},
    },
    gone::GoneTenants,
    ids,
    log::{EventLog, LogConsumer, LogPosition, Pending, PendingSink},
    model::{Ordering, ScheduledDelivery},
    store::{FanOut, FanOutResult, Store},
    subscriptions::SubscriptionIndex,
};

/// Records read per batch.
const BATCH: usize = 512;

/// The shortest time between two commits of the log offsets. A commit is a
/// file written and synced twice (embedded) or a broker round trip (Kafka);
/// committing after every small batch of single emits cost more than the
/// fan-out itself. A crash re-reads at most this much more of the log (the
/// SQLite store then leaves out what was settled).
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// How long a poll waits for records. An idle poll commits what settled
/// since the last batch (a retry kept, a delivery done), so this bounds how
/// long a settled event stays uncommitted when no other event comes: what a
/// crash in that window re-reads is delivered again (at least once).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How a fan-out runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Its consumer group.
    pub group: String,
    /// How long a `(tenant, dedupe_key)` pair stays unique.
    pub dedupe_window: Duration,
    /// Whether other processes write subscriptions to the store (then the
    /// index is checked against the store before every batch).
    pub follow_store: bool,
    /// How long a delivery handed to the shards stays leased.
    pub lease: Duration,
    /// Counts the deliveries fan-out scheduled for want of room
    /// (`herald_deliveries_overflowed_total`).
    pub overflowed: prometheus::IntCounter,
    /// The deliveries handed over unscheduled (an event whose deliveries
    /// are all unordered and handed over): their events' log offsets stay
    /// uncommitted until they are settled (see [`crate::delivery::handoff`]).
    pub unsettled: Arc<Unsettled>,
    /// Where the retries of such deliveries are kept when the log has a
    /// schedule changelog ([`EventLog::consumer_keeping`]): the consumer
    /// restores its partitions' retries into it.
    pub retries: Arc<Retries>,
    /// Tenants deleted or being deleted: their events are dropped, not
    /// indexed (so a deleted tenant's rows never come back).
    pub gone: Arc<GoneTenants>,
}

/// Runs until `cancel`: hands new unordered deliveries to `shards`, rings
/// `wake` when some are left to the scheduler (ordered, or past the limit).
pub async fn run(
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    subscriptions: Arc<SubscriptionIndex>,
    shards: Arc<Shards>,
    settings: Settings,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Settings {
        group,
        dedupe_window,
        follow_store,
        lease,
        overflowed,
        unsettled,
        retries,
        gone,
    } = settings;
    let mut offsets = Offsets {
        read: BTreeMap::new(),
        committed: BTreeMap::new(),
        unsettled: unsettled.clone(),
        last_commit: None,
    };
    let ownership = Arc::new(Ownership {
        retries: retries.clone(),
        unsettled: unsettled.clone(),
        revoked: Mutex::default(),
    });
    let mut consumer = loop {
        let opened =
            log.consumer_keeping(&group, ownership.clone())
                .await
                .map(|(consumer, changelog)| {
                    if let Some(changelog) = changelog {
                        retries.keep_in(changelog);
                    }
                    consumer
                });
        match opened {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "fan-out cannot open its log consumer; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = cancel.cancelled() => return,
                }
            }
        }
    };
    let mut room = Room::default();
    loop {
        let records = tokio::select! {
            r = consumer.poll(BATCH, IDLE_POLL) => r,
            () = cancel.cancelled() => return,
        };
        ownership.forget_revoked(&mut offsets);
        let records = match records {
            Ok(r) if r.is_empty() => {
                // Deliveries settled since the last batch move the offsets.
                offsets.commit(&mut *consumer).await;
                continue;
            }
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "fan-out could not read the event log; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if follow_store {
            crate::subscriptions::refresh(store.as_ref(), &subscriptions).await;
        }
        let now = now_ms();
        let park_until =
            now + crate::delivery::hold::park_recheck(shards.config()).as_millis() as i64;
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        let mut dropped = 0;
        let batch: Vec<FanOut> = records
            .into_iter()
            .filter(|r| {
                let entry = next.entry(r.position.partition).or_default();
                *entry = (*entry).max(r.position.offset + 1);
                let keep = !gone.contains(&r.event.tenant_id);
                dropped += usize::from(!keep);
                keep
            })
            .map(|r| {
                let e = &r.event;
                let deliveries: Vec<ScheduledDelivery> = subscriptions
                    .matching_event(e)
                    .iter()
                    .map(|sub| ScheduledDelivery {
                        delivery_id: ids::new_id(ids::DELIVERY),
                        tenant_id: e.tenant_id.clone(),
                        event_id: e.id.clone(),
                        subscription_id: sub.id.clone(),
                        attempt: 1,
                        replay_of: None,
                        is_replay: false,
                        due_at_ms: now,
                        seq: r.position.offset as i64,
                        ordered: sub.ordering == Ordering::Strict,
                    })
                    .collect();
                // A subscription whose circuit is open here would only have
                // them refused: parked at once, released when it closes.
                let (parked, deliveries): (Vec<_>, Vec<_>) = deliveries
                    .into_iter()
                    .partition(|d| shards.circuit_open(&d.subscription_id));
                let parked: Vec<ScheduledDelivery> = parked
                    .into_iter()
                    .map(|d| ScheduledDelivery {
                        due_at_ms: park_until,
                        ..d
                    })
                    .collect();
                // Leased and handed over, or scheduled: decided per chunk.
                FanOut {
                    event: r.event,
                    position: r.position,
                    deliveries,
                    lease_until_ms: None,
                    unscheduled: false,
                    parked,
                    indexed: r.indexed,
                }
            })
            .collect();
        if dropped > 0 {
            tracing::info!(dropped, "events of deleted tenants dropped at fan-out");
        }
        // In chunks the shards have room for: the rest of the batch waits
        // in memory (its offsets are not committed) rather than in the
        // store's schedule.
        let mut rest = batch;
        while !rest.is_empty() {
            let take = tokio::select! {
                n = room.take(&rest, &shards) => n,
                () = cancel.cancelled() => return,
            };
            let mut chunk: Vec<FanOut> = rest.drain(..take).collect();
            let now = now_ms();
            let scheduled =
                lease_for_room(&mut chunk, shards.room(), now + lease.as_millis() as i64);
            overflowed.inc_by(scheduled as u64);
            let dedupe_until = now + dedupe_window.as_millis() as i64;
            // The chunk must become durable before its offsets move: retry until it does.
            let mut backoff = Duration::from_millis(50);
            // Whether an earlier try of this chunk failed: it may have
            // committed all the same (a lost acknowledgement).
            let mut retried = false;
            let results = loop {
                match store.fan_out(chunk.clone(), dedupe_until, now).await {
                    Ok(results) => {
                        tracing::debug!(events = results.len(), "fanned out");
                        break results;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "fan-out could not schedule deliveries; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = cancel.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        retried = true;
                    }
                }
            };
            let reached: Vec<(u32, u64)> = chunk
                .iter()
                .map(|f| (f.position.partition, f.position.offset + 1))
                .collect();
            if hand_off(chunk, &results, retried, &shards, &unsettled).await {
                wake.notify_one();
            }
            if !rest.is_empty() {
                // A batch handed over chunk by chunk commits as it goes.
                offsets.read.extend(reached);
                ownership.forget_revoked(&mut offsets);
                offsets.commit(&mut *consumer).await;
            }
        }
        offsets.read.extend(next);
        // A revoke that came while the batch was fanned out: its offsets
        // are not this process's to commit.
        ownership.forget_revoked(&mut offsets);
        offsets.commit(&mut *consumer).await;
    }
}

/// How often fan-out looks at the shards' room while it waits.
const ROOM_LOOK: Duration = Duration::from_millis(5);

/// Whether fan-out waits for the shards' room. A burst that fills them
/// (16,384 deliveries by default) is handed over as they drain, a chunk at
/// a time, and stays in the log meanwhile: no schedule row, no claim (on
/// the CQL store a claim is a lightweight transaction). Shards that free
/// no room for the next event in `handoff_patience` (1 s; endpoints
/// that answer slowly, each holding its queue) are *crowded*: until they
/// have room worth a chunk again,
/// events go to the store's schedule at once, as they all did before, so
/// fan-out goes on reading, indexing and deduplicating (and a Kafka
/// consumer that stopped polling would leave its group). Their deliveries
/// wait there for room like the rest: the scheduler claims no more than
/// the shards take.
#[derive(Debug, Default)]
struct Room {
    crowded: bool,
}

impl Room {
    /// How many of `rest` (at least one) to fan out now: the events whose
    /// deliveries fit in the shards' room, once that room is worth a chunk
    /// (an eighth of the limit) or `handoff_patience` has passed; all of
    /// them when the shards are crowded (what does not fit is scheduled).
    async fn take(&mut self, rest: &[FanOut], shards: &Shards) -> usize {
        let capacity = shards.capacity();
        let first = rest.first().map_or(0, |f| f.deliveries.len());
        if first > capacity {
            // Never fits: scheduled, with the rest of the batch.
            return rest.len();
        }
        let all: usize = rest.iter().map(|f| f.deliveries.len()).sum();
        let worth = all.min(capacity / 8).max(first);
        let deadline = Instant::now() + shards.config().handoff_patience;
        loop {
            let room = shards.room();
            if room >= worth {
                self.crowded = false;
                return fitting(rest, room).max(1);
            }
            if self.crowded {
                return rest.len();
            }
            if Instant::now() >= deadline {
                let fits = fitting(rest, room);
                if fits > 0 {
                    // Draining, if slowly: a smaller chunk.
                    return fits;
                }
                tracing::debug!(
                    room,
                    wanted = first,
                    "the shards stay full: scheduling in the store"
                );
                self.crowded = true;
                return rest.len();
            }
            tokio::time::sleep(ROOM_LOOK).await;
        }
    }
}

/// How many events at the head of `items` have their deliveries fit in
/// `room`.
fn fitting(items: &[FanOut], room: usize) -> usize {
    let mut left = room;
    items
        .iter()
        .take_while(|f| {
            let n = f.deliveries.len();
            let fits = n <= left;
            left = left.saturating_sub(n);
            fits
        })
        .count()
}

/// Leases the deliveries of `chunk`'s events for as long as `room` lasts
/// (in order; the events past it are scheduled, due now) and marks the
/// events handed over unscheduled (see [`crate::delivery::handoff`]);
/// returns how many deliveries it scheduled for want of room.
fn lease_for_room(chunk: &mut [FanOut], mut room: usize, lease_until: i64) -> usize {
    let mut overflowed = 0;
    for item in chunk {
        let handed = item.deliveries.len();
        item.lease_until_ms = (handed <= room).then(|| {
            room -= handed;
            lease_until
        });
        if item.lease_until_ms.is_none() {
            overflowed += handed;
        }
        item.unscheduled = item.lease_until_ms.is_some()
            && !item.deliveries.is_empty()
            && item.parked.is_empty()
            && item.deliveries.iter().all(|d| !d.ordered);
    }
    overflowed
}

/// The consumer's [`PendingSink`]: a partition's kept retries go to
/// [`Retries`]; a revoke also lets go of what fan-out held for the
/// partition, so this process never commits an offset of a partition it no
/// longer owns, nor holds one back for deliveries it dropped.
struct Ownership {
    retries: Arc<Retries>,
    unsettled: Arc<Unsettled>,
    /// Revoked since fan-out last looked ([`Ownership::forget_revoked`]).
    revoked: Mutex<Vec<u32>>,
}

impl Ownership {
    /// Called after each poll, before its records are fanned out: drops
    /// the revoked partitions' offsets, and forgets again what was
    /// registered for them between the revoke and now (a revoke may come
    /// while a batch read before it is fanned out).
    fn forget_revoked(&self, offsets: &mut Offsets) {
        for partition in std::mem::take(&mut *self.revoked.lock()) {
            self.unsettled.forget(partition);
            offsets.read.remove(&partition);
            offsets.committed.remove(&partition);
        }
    }
}

impl PendingSink for Ownership {
    fn restored(&self, partition: u32, pending: Vec<Pending>) {
        self.retries.restored(partition, pending);
    }

    fn revoked(&self, partition: u32) {
        self.retries.revoked(partition);
        self.unsettled.forget(partition);
        self.revoked.lock().push(partition);
    }
}

/// Fan-out's log offsets per partition.
struct Offsets {
    /// The offset after the last record read.
    read: BTreeMap<u32, u64>,
    /// The offset last committed.
    committed: BTreeMap<u32, u64>,
    /// Deliveries handed over unscheduled, which hold their offsets back.
    unsettled: Arc<Unsettled>,
    /// When offsets were last committed.
    last_commit: Option<Instant>,
}

impl Offsets {
    /// Commits, per partition read, the offset after the last record read,
    /// or before the first event with a delivery still unsettled; only
    /// offsets that moved, and at most once per [`COMMIT_EVERY`] (the
    /// next batch or idle poll commits what this call leaves).
    async fn commit(&mut self, consumer: &mut dyn LogConsumer) {
        if self
            .last_commit
            .is_some_and(|at| at.elapsed() < COMMIT_EVERY)
        {
            return;
        }
        let positions: Vec<LogPosition> = self
            .read
            .iter()
            .map(|(&partition, &next)| LogPosition {
                partition,
                offset: self.unsettled.committable(partition, next),
            })
            .filter(|p| self.committed.get(&p.partition) != Some(&p.offset))
            .collect();
        if positions.is_empty() {
            return;
        }
        self.last_commit = Some(Instant::now());
        match consumer.commit(&positions).await {
            Ok(()) => self
                .committed
                .extend(positions.iter().map(|p| (p.partition, p.offset))),
            // Harmless for correctness: the events are re-read and skipped as
            // already fanned out (or fanned out again if they were unscheduled).
            Err(e) => tracing::warn!(error = %e, "fan-out could not commit its log positions"),
        }
    }
}

/// Dispatches the leased deliveries of the events just scheduled; returns
/// whether any delivery was left for the scheduler (ordered, or past the
/// hand-off limit).
///
/// An event found `Resumed` (read again after it was handed over
/// unscheduled) is handed over without the deliveries settled since.
///
/// After a `retried` batch an event found `AlreadyDone` was most likely
/// scheduled, leased under these very delivery ids, by the try whose
/// acknowledgement was lost: those are dispatched too, or they would wait
/// out their lease in a live process. (Should the event have been fanned
/// out by an earlier run instead, the attempt is a duplicate, never a loss.)
async fn hand_off(
    batch: Vec<FanOut>,
    results: &[FanOutResult],
    retried: bool,
    shards: &Shards,
    unsettled: &Arc<Unsettled>,
) -> bool {
    let mut left = false;
    let mut parked: BTreeMap<String, u64> = BTreeMap::new();
    for (mut item, result) in batch.into_iter().zip(results) {
        let ours = match result {
            FanOutResult::Scheduled => true,
            FanOutResult::Resumed(settled) => {
                // Read again: what was settled since is not sent again.
                let fresh = |d: &ScheduledDelivery| !settled.contains(&d.subscription_id);
                item.deliveries.retain(fresh);
                item.parked.retain(fresh);
                true
            }
            FanOutResult::AlreadyDone => retried,
            FanOutResult::Duplicate => false,
        };
        if ours {
            for d in &item.parked {
                *parked.entry(d.subscription_id.clone()).or_default() += 1;
            }
        }
        if !ours || item.deliveries.is_empty() {
            continue;
        }
        if item.lease_until_ms.is_none() {
            left = true;
            continue;
        }
        let event = Arc::new(SharedEvent::from(item.event));
        // Registered before the batch's offsets are committed.
        let mut settles = if item.unscheduled {
            unsettled.register(item.position, item.deliveries.len())
        } else {
            Vec::new()
        };
        for delivery in item.deliveries {
            if delivery.ordered {
                left = true;
                continue;
            }
            let event = event.clone();
            let settle = settles.pop();
            shards
                .dispatch(Job {
                    delivery,
                    event,
                    settle,
                    kept: false,
                })
                .await;
        }
    }
    for (subscription_id, n) in parked {
        shards.parked(&subscription_id, n).await;
    }
    left
}
