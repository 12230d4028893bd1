//! Deliveries held for paused subscriptions, on CQL.
//!
//! A held delivery keeps its `schedule` row, due at a far re-check time, and
//! is listed in `schedule_held` under its subscription in event order, so a
//! resume finds it without reading the schedule. Both moves follow the
//! schedule's rule (new index row first, old one deleted after), and the
//! listing is written before the hold and deleted after the release, so a
//! crash at any point leaves the delivery in the due index: at worst it
//! waits for its re-check time.

use ::scylla::value::CqlValue;

use super::ScyllaStore;
use crate::{model::ScheduledDelivery, store::StoreError};

impl ScyllaStore {
    /// Adds a delivery to the schedule held from the start, due at its
    /// re-check (`due_at_ms`): listed first, as a hold lists before it moves
    /// the schedule row.
    pub(super) async fn insert_held(&self, d: &ScheduledDelivery) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO schedule_held (subscription_id, seq, delivery_id) VALUES (?, ?, ?)",
            (&d.subscription_id, d.seq, &d.delivery_id),
        )
        .await?;
        self.insert_schedule(d, None).await
    }

    /// See [`crate::store::Store::hold`].
    pub(super) async fn hold_delivery(
        &self,
        d: &ScheduledDelivery,
        recheck_at: i64,
    ) -> Result<(), StoreError> {
        let id = &d.delivery_id;
        let row: Option<(i64,)> = self
            .row("SELECT due_at FROM schedule WHERE delivery_id = ?", (id,))
            .await?;
        let Some((leased_until,)) = row else {
            return Ok(());
        };
        self.exec(
            "INSERT INTO schedule_held (subscription_id, seq, delivery_id) VALUES (?, ?, ?)",
            (&d.subscription_id, d.seq, id),
        )
        .await?;
        self.index_due(id, recheck_at).await?;
        let (applied, current) = self
            .lwt(
                "UPDATE schedule SET due_at = ?, leased = false WHERE delivery_id = ? IF due_at = ?",
                (recheck_at, id, leased_until),
            )
            .await?;
        let stale = if applied {
            leased_until
        } else if current.get("due_at") == Some(&CqlValue::BigInt(recheck_at)) {
            return Ok(());
        } else {
            // Moved by someone else (our lease had ended): theirs stands.
            recheck_at
        };
        self.unindex_due(id, stale).await
    }

    /// See [`crate::store::Store::release_held`].
    pub(super) async fn release_held_of(
        &self,
        subscription_id: &str,
        now: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut listed: Vec<(i64, String)> = Vec::new();
        self.scan(
            "SELECT seq, delivery_id FROM schedule_held WHERE subscription_id = ? LIMIT ?",
            (subscription_id, limit),
            |row: (i64, String)| {
                listed.push(row);
                Ok(())
            },
        )
        .await?;
        let mut released = 0;
        for (seq, id) in listed {
            // Due when it is written, not when the release began: a row
            // written due more than the read marks' slack in the past
            // (a long list, slow compare-and-sets under load) lands behind
            // the workers' marks and waits for their pull-back (a minute).
            let now = now.max(crate::clock::now_ms());
            match self.release_one(&id, now).await? {
                Release::Released => released += 1,
                Release::NotHeld => {}
                // Its listing stays: the worker holding it may be holding it
                // again right now (listing first, then the schedule row), and
                // its own release after that must find it. Were the listing
                // deleted here, the delivery would wait for its re-check.
                Release::Leased => continue,
            }
            self.exec(
                "DELETE FROM schedule_held WHERE subscription_id = ? AND seq = ? AND delivery_id = ?",
                (subscription_id, seq, &id),
            )
            .await?;
        }
        Ok(released)
    }

    /// Makes one listed delivery due at `now` unless it is gone, due
    /// already, or leased (a worker holds it and will send it or hold it
    /// again).
    async fn release_one(&self, id: &str, now: i64) -> Result<Release, StoreError> {
        let row: Option<(i64, Option<bool>)> = self
            .row(
                "SELECT due_at, leased FROM schedule WHERE delivery_id = ?",
                (id,),
            )
            .await?;
        let Some((due, leased)) = row else {
            return Ok(Release::NotHeld);
        };
        if leased == Some(true) {
            return Ok(Release::Leased);
        }
        if due <= now {
            return Ok(Release::NotHeld);
        }
        self.index_due(id, now).await?;
        let (applied, current) = self
            .lwt(
                "UPDATE schedule SET due_at = ? WHERE delivery_id = ? IF due_at = ?",
                (now, id, due),
            )
            .await?;
        if !applied {
            // Claimed meanwhile: the claim's index row stands, ours goes;
            // unless another release made it due at the same millisecond,
            // when the index row is theirs as well.
            if current.get("due_at") == Some(&CqlValue::BigInt(now)) {
                return Ok(Release::NotHeld);
            }
            self.unindex_due(id, now).await?;
            return Ok(Release::Leased);
        }
        // A claim that read the new index row before the update above saw it
        // earlier than the schedule row and deleted it as stale: write it again.
        self.index_due(id, now).await?;
        // Due `now` is in the past by now, maybe behind this process's read
        // mark (a slow write under load): its next claim reads it.
        self.marks
            .wrote(super::marks::bucket(now), super::schedule::shard(id), now);
        self.unindex_due(id, due).await?;
        Ok(Release::Released)
    }
}

/// What [`ScyllaStore::release_one`] did with a listed delivery.
enum Release {
    /// Made due now.
    Released,
    /// Gone (sent), or due already: nothing to release.
    NotHeld,
    /// Under a worker's lease (claimed, maybe being held again).
    Leased,
}
