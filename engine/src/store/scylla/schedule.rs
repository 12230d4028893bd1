//! The durable schedule on CQL, safe for several worker processes.
//!
//! `schedule` holds one row per pending delivery; `schedule_due` indexes
//! them by due time in one-minute buckets, each split in [`SHARDS`]
//! partitions (so a busy minute is spread over several replicas), and
//! `schedule_buckets` lists, per shard, the buckets that may hold rows (so
//! a claim reads only those, never a range of empty minutes).
//!
//! **Claim protocol.** A worker reads due index rows, then takes each with a
//! lightweight transaction on the schedule row: `UPDATE .. SET due_at =
//! <lease end> IF due_at = <due time seen>`. Only one worker's condition
//! holds; the loser skips the row. The lease end is a new due time, so if
//! the winner dies the delivery falls due again when the lease ends: no
//! coordinator, no lease table, nothing to release at start.
//!
//! **Reads skip tombstones.** Claims and settles delete index rows, and a
//! CQL read steps over every deleted row in its range; each process keeps
//! read marks (`marks.rs`: the oldest live bucket per shard, and per bucket
//! the due time up to which it read everything) and starts its reads there,
//! pulled back now and then for rows written late. A bucket is delisted only
//! after a read of the whole of it found nothing.
//!
//! **Moves are new-index-first.** Before a schedule row's due time changes
//! (claim, retry), the index row for the new time is written; the old one
//! is deleted after. A crash leaves at worst a stale index row, which a
//! later claim sees disagreeing with the schedule row and deletes (after a
//! grace period, so a row whose schedule write is still in flight is not
//! mistaken for stale). A delivery is never left without an index row.

use ::scylla::value::CqlValue;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};

use super::{
    marks::{bucket, BUCKET_MS},
    ScyllaStore,
};
use crate::{
    model::{DomainEvent, ScheduledDelivery},
    store::{EventStore, FanOut, FanOutResult, ScheduleStore, StoreError},
};

/// Partitions per due-index bucket.
pub(super) const SHARDS: i32 = 8;
/// How far ahead [`ScyllaStore::earliest_due`] looks.
const SOON_MS: i64 = 1_000;
/// Age after which an index row that disagrees with its schedule row is stale.
const STALE_GRACE_MS: i64 = 5 * 60_000;

pub(super) fn shard(delivery_id: &str) -> i32 {
    (crc32fast::hash(delivery_id.as_bytes()) % SHARDS as u32) as i32
}

type ScheduleRow = (
    String,         // tenant_id
    String,         // event_id
    String,         // subscription_id
    i32,            // attempt
    bool,           // is_replay
    Option<String>, // replay_of
    i64,            // due_at
    Option<i64>,    // seq
    Option<bool>,   // ordered
    Option<String>, // recovery_id
);

const SELECT_ROW: &str = "SELECT tenant_id, event_id, subscription_id, attempt, is_replay, replay_of, due_at, seq, ordered, recovery_id FROM schedule WHERE delivery_id = ?";

impl ScyllaStore {
    /// Adds an index row for `(delivery, due)` and makes its bucket visible.
    pub(super) async fn index_due(&self, delivery_id: &str, due_ms: i64) -> Result<(), StoreError> {
        let (b, s) = (bucket(due_ms), shard(delivery_id));
        let listed = self.exec(
            "INSERT INTO schedule_buckets (shard, bucket) VALUES (?, ?)",
            (s, b),
        );
        let indexed = self.exec(
            "INSERT INTO schedule_due (bucket, shard, due_at, delivery_id) VALUES (?, ?, ?, ?)",
            (b, s, due_ms, delivery_id),
        );
        futures::try_join!(listed, indexed)?;
        Ok(())
    }

    pub(super) async fn unindex_due(
        &self,
        delivery_id: &str,
        due_ms: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM schedule_due WHERE bucket = ? AND shard = ? AND due_at = ? AND delivery_id = ?",
            (bucket(due_ms), shard(delivery_id), due_ms, delivery_id),
        )
        .await
    }

    /// Adds a delivery to the schedule (idempotent for the same id).
    pub(super) async fn insert_schedule(
        &self,
        d: &ScheduledDelivery,
        recovery_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.index_due(&d.delivery_id, d.due_at_ms).await?;
        if d.ordered {
            self.exec(
                "INSERT INTO schedule_order (subscription_id, seq, delivery_id) VALUES (?, ?, ?)",
                (&d.subscription_id, d.seq, &d.delivery_id),
            )
            .await?;
        }
        self.exec(
            "INSERT INTO schedule (delivery_id, tenant_id, event_id, subscription_id, attempt, is_replay, replay_of, due_at, leased, seq, ordered, recovery_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, false, ?, ?, ?)",
            (
                &d.delivery_id,
                &d.tenant_id,
                &d.event_id,
                &d.subscription_id,
                d.attempt as i32,
                d.is_replay,
                &d.replay_of,
                d.due_at_ms,
                d.seq,
                d.ordered,
                recovery_id,
            ),
        )
        .await
    }

    async fn try_claim(
        &self,
        delivery_id: String,
        due: i64,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<(ScheduledDelivery, DomainEvent)>, StoreError> {
        let row: Option<ScheduleRow> = self.row(SELECT_ROW, (&delivery_id,)).await?;
        let Some(row) = row else {
            if due < now - STALE_GRACE_MS {
                self.unindex_due(&delivery_id, due).await?;
            }
            return Ok(None);
        };
        let d = delivery_of(&delivery_id, &row);
        if row.6 != due {
            if due < now - STALE_GRACE_MS {
                self.unindex_due(&delivery_id, due).await?;
            } else if row.6 > due {
                self.unindex_early(&delivery_id, due).await?;
            }
            return Ok(None);
        }
        if d.ordered {
            let head: Option<(String,)> = self
                .row(
                    "SELECT delivery_id FROM schedule_order WHERE subscription_id = ? LIMIT 1",
                    (&d.subscription_id,),
                )
                .await?;
            if head.is_some_and(|(h,)| h != delivery_id) {
                return Ok(None);
            }
        }
        self.index_due(&delivery_id, lease_until).await?;
        let (applied, current) = self
            .lwt(
                "UPDATE schedule SET due_at = ?, leased = true WHERE delivery_id = ? IF due_at = ?",
                (lease_until, &delivery_id, due),
            )
            .await?;
        if !applied {
            // Another process claimed (or moved) it first: the entry written
            // for our lease is not its due time, unless theirs is the same.
            if current.get("due_at") != Some(&CqlValue::BigInt(lease_until)) {
                self.unindex_due(&delivery_id, lease_until).await?;
            }
            return Ok(None);
        }
        self.unindex_due(&delivery_id, due).await?;
        let Some(event) = EventStore::get_event(self, &d.tenant_id, &d.event_id).await? else {
            // The event expired from the index (retention): nothing to deliver.
            tracing::warn!(delivery_id, event_id = %d.event_id, "scheduled delivery without its event; dropped");
            self.remove_schedule(&d, lease_until).await?;
            return Ok(None);
        };
        Ok(Some((d, event)))
    }

    /// Deletes an index row earlier than its schedule row: left by a claim
    /// or a retry (which move the row later, new index row first), unless a
    /// release is moving the row earlier right now (new index row first as
    /// well). The schedule row is read again after the delete: if the
    /// release landed meanwhile, the index row is written back, so a delete
    /// that raced the release's own re-write cannot leave the delivery
    /// without one.
    async fn unindex_early(&self, delivery_id: &str, due: i64) -> Result<(), StoreError> {
        self.unindex_due(delivery_id, due).await?;
        let current: Option<(i64,)> = self
            .row(
                "SELECT due_at FROM schedule WHERE delivery_id = ?",
                (delivery_id,),
            )
            .await?;
        if current.is_some_and(|(d,)| d == due) {
            self.index_due(delivery_id, due).await?;
        }
        Ok(())
    }

    async fn remove_schedule(&self, d: &ScheduledDelivery, due: i64) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM schedule WHERE delivery_id = ?",
            (&d.delivery_id,),
        )
        .await?;
        if d.ordered {
            self.exec(
                "DELETE FROM schedule_order WHERE subscription_id = ? AND seq = ? AND delivery_id = ?",
                (&d.subscription_id, d.seq, &d.delivery_id),
            )
            .await?;
        }
        self.unindex_due(&d.delivery_id, due).await
    }

    /// After an attempt: reschedule (`next`) or remove the delivery.
    pub(super) async fn settle(
        &self,
        delivery_id: &str,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError> {
        let row: Option<ScheduleRow> = self.row(SELECT_ROW, (delivery_id,)).await?;
        let Some(row) = row else {
            return Ok(());
        };
        let current = delivery_of(delivery_id, &row);
        match next {
            Some(n) => {
                self.index_due(delivery_id, n.due_at_ms).await?;
                self.exec(
                    "UPDATE schedule SET attempt = ?, due_at = ?, leased = false WHERE delivery_id = ?",
                    (n.attempt as i32, n.due_at_ms, delivery_id),
                )
                .await?;
                if n.due_at_ms != row.6 {
                    self.unindex_due(delivery_id, row.6).await?;
                }
            }
            None => {
                if let Some(recovery_id) = &row.9 {
                    self.exec(
                        "INSERT INTO recovery_done (recovery_id, delivery_id) VALUES (?, ?)",
                        (recovery_id, delivery_id),
                    )
                    .await?;
                }
                self.remove_schedule(&current, row.6).await?;
            }
        }
        Ok(())
    }
}

fn delivery_of(delivery_id: &str, row: &ScheduleRow) -> ScheduledDelivery {
    ScheduledDelivery {
        delivery_id: delivery_id.to_string(),
        tenant_id: row.0.clone(),
        event_id: row.1.clone(),
        subscription_id: row.2.clone(),
        attempt: row.3.max(1) as u32,
        is_replay: row.4,
        replay_of: row.5.clone(),
        due_at_ms: row.6,
        seq: row.7.unwrap_or(0),
        ordered: row.8.unwrap_or(false),
    }
}

#[async_trait]
impl ScheduleStore for ScyllaStore {
    async fn fan_out(
        &self,
        batch: Vec<FanOut>,
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<FanOutResult>, StoreError> {
        // Events that leave no schedule rows go together, reading nothing.
        let (blind, read): (Vec<_>, Vec<_>) =
            (0..batch.len()).partition(|&i| ScyllaStore::fans_out_blind(&batch[i]));
        let blind_items: Vec<&FanOut> = blind.iter().map(|&i| &batch[i]).collect();
        let read_work = read
            .iter()
            .map(|&i| self.fan_out_one(&batch[i], dedupe_until_ms, now_ms));
        let (blind_results, read_results) = futures::future::try_join(
            async {
                if blind_items.is_empty() {
                    return Ok(Vec::new());
                }
                self.fan_out_blind(&blind_items, dedupe_until_ms, now_ms)
                    .await
            },
            futures::future::try_join_all(read_work),
        )
        .await?;
        let mut results = vec![FanOutResult::Scheduled; batch.len()];
        for (i, r) in blind.into_iter().zip(blind_results) {
            results[i] = r;
        }
        for (i, r) in read.into_iter().zip(read_results) {
            results[i] = r;
        }
        Ok(results)
    }

    async fn schedule(&self, deliveries: Vec<ScheduledDelivery>) -> Result<(), StoreError> {
        // A replay's record (the only pending record a schedule call has), write-ahead.
        if let Some(record) = crate::audit::take_pending() {
            self.audit_ahead(&record).await?;
        }
        let work = deliveries.iter().map(|d| self.insert_schedule(d, None));
        futures::future::try_join_all(work).await?;
        Ok(())
    }

    /// Takes up to `limit` due deliveries (see the module doc).
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<(ScheduledDelivery, DomainEvent)>, StoreError> {
        // Rows this process writes from here on may not be in what it reads.
        let since = self.marks.generation();
        let now_bucket = bucket(now);
        let mut candidates: Vec<(i64, String)> = Vec::new();
        // Partitions whose every row due by `now` was read.
        let mut read_whole: Vec<(i64, i32)> = Vec::new();
        // Start at a random shard so concurrent workers spread out.
        let first = rand::random::<u32>() % SHARDS as u32;
        for k in 0..SHARDS {
            let s = ((first as i32) + k) % SHARDS;
            let buckets: Vec<(i64,)> = self
                .rows(
                    "SELECT bucket FROM schedule_buckets WHERE shard = ? AND bucket >= ? AND bucket <= ?",
                    (s, self.marks.first_bucket(s), now_bucket),
                )
                .await?;
            let mut oldest_kept = None;
            for (b,) in buckets {
                if candidates.len() >= limit {
                    oldest_kept = oldest_kept.or(Some(b));
                    break;
                }
                let from = self.marks.first_due(b, s);
                let want = limit - candidates.len();
                let rows: Vec<(i64, String)> = self
                    .rows(
                        "SELECT due_at, delivery_id FROM schedule_due WHERE bucket = ? AND shard = ? AND due_at >= ? AND due_at <= ? LIMIT ?",
                        (b, s, from, now, want as i32),
                    )
                    .await?;
                if rows.len() < want {
                    read_whole.push((b, s));
                }
                if rows.is_empty() && b < now_bucket - 1 && from <= b * BUCKET_MS {
                    // Read whole and empty; nothing is ever indexed that far
                    // in the past again.
                    self.exec(
                        "DELETE FROM schedule_buckets WHERE shard = ? AND bucket = ?",
                        (s, b),
                    )
                    .await?;
                } else {
                    oldest_kept = oldest_kept.or(Some(b));
                }
                candidates.extend(rows);
            }
            let first_live = oldest_kept.unwrap_or(now_bucket - 1).min(now_bucket - 1);
            self.marks.set_first_bucket(s, first_live);
        }
        let mut out = Vec::new();
        let attempts = candidates
            .iter()
            .map(|(due, id)| self.try_claim(id.clone(), *due, now, lease_until));
        let results = futures::future::join_all(attempts).await;
        // A partition read whole is marked read up to `now`, or up to the
        // first row it still holds (not taken: another's ordered head, or
        // claimed elsewhere), which the next claim must see again.
        let mut upto: std::collections::HashMap<(i64, i32), i64> =
            read_whole.into_iter().map(|p| (p, now)).collect();
        for ((due, id), result) in candidates.iter().zip(&results) {
            if matches!(result, Ok(None)) {
                if let Some(u) = upto.get_mut(&(bucket(*due), shard(id))) {
                    *u = (*u).min(due + super::marks::LATE_MS);
                }
            }
        }
        for claimed in results {
            if let Some(pair) = claimed? {
                out.push(pair);
            }
        }
        for ((b, s), u) in upto {
            self.marks.read_through(b, s, u, since);
        }
        // Same due time (a resumed subscription's held deliveries): event order.
        out.sort_by_key(|(d, _)| (d.due_at_ms, d.seq));
        Ok(out)
    }

    /// Makes every leased delivery due at `now` (single-process use only).
    async fn hold(
        &self,
        delivery: &ScheduledDelivery,
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.hold_delivery(delivery, recheck_at_ms).await
    }

    async fn release_held(
        &self,
        subscription_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.release_held_of(subscription_id, now_ms, limit).await
    }

    async fn release_leases(&self, now: i64) -> Result<u64, StoreError> {
        let mut leased = Vec::new();
        self.scan(
            "SELECT delivery_id, due_at, leased FROM schedule",
            (),
            |(id, due, l): (String, i64, Option<bool>)| {
                if l == Some(true) {
                    leased.push((id, due));
                }
                Ok(())
            },
        )
        .await?;
        for (id, due) in &leased {
            self.index_due(id, now).await?;
            self.exec(
                "UPDATE schedule SET due_at = ?, leased = false WHERE delivery_id = ?",
                (now, id),
            )
            .await?;
            self.unindex_due(id, *due).await?;
        }
        Ok(leased.len() as u64)
    }

    /// Deliveries in the schedule, counted in the due index one
    /// `(bucket, shard)` partition at a time (every row has one entry there;
    /// an entry a crash left between two writes counts until a claim meets
    /// and drops it): bounded single-partition reads, a few at once, never a
    /// scan of the whole `schedule` table.
    async fn schedule_backlog(&self) -> Result<u64, StoreError> {
        let mut partitions = Vec::new();
        for s in 0..SHARDS {
            self.scan(
                "SELECT bucket FROM schedule_buckets WHERE shard = ? AND bucket >= ?",
                (s, self.marks.first_bucket(s)),
                |(b,): (i64,)| {
                    partitions.push((b, s));
                    Ok(())
                },
            )
            .await?;
        }
        futures::stream::iter(partitions)
            .map(|(b, s)| async move {
                let n: Option<(i64,)> = self
                    .row(
                        "SELECT COUNT(*) FROM schedule_due WHERE bucket = ? AND shard = ?",
                        (b, s),
                    )
                    .await?;
                Ok::<_, StoreError>(n.map_or(0, |(n,)| n.max(0) as u64))
            })
            .buffer_unordered(8)
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await
    }

    /// The earliest due time in the index up to [`SOON_MS`] from now (stale
    /// rows may make it early, which only wakes the scheduler sooner). Rows
    /// due later are not looked for: the scheduler naps less than that, and
    /// a read of a future bucket would step over the tombstones of every
    /// lease that ended early there.
    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let horizon = crate::clock::now_ms() + SOON_MS;
        let mut best: Option<i64> = None;
        for s in 0..SHARDS {
            let buckets: Vec<(i64,)> = self
                .rows(
                    "SELECT bucket FROM schedule_buckets WHERE shard = ? AND bucket >= ? AND bucket <= ? LIMIT 4",
                    (s, self.marks.first_bucket(s), bucket(horizon)),
                )
                .await?;
            for (b,) in buckets {
                let first: Option<(i64,)> = self
                    .row(
                        "SELECT due_at FROM schedule_due WHERE bucket = ? AND shard = ? AND due_at >= ? AND due_at <= ? LIMIT 1",
                        (b, s, self.marks.first_due(b, s), horizon),
                    )
                    .await?;
                if let Some((due,)) = first {
                    best = Some(best.map_or(due, |x: i64| x.min(due)));
                    break;
                }
            }
        }
        Ok(best)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: Option<(String,)> = self
            .row("SELECT release_version FROM system.local", ())
            .await?;
        Ok(())
    }

    fn op_counts(&self) -> Option<&crate::store::OpCounts> {
        Some(&*self.ops)
    }
}
