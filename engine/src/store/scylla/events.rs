//! The event index (by tenant and day), the dedupe window and fan-out's
//! per-event state.
//!
//! **Append-only on the hot path.** An event's index is its
//! `events_by_day` row, keyed `(tenant, day of its id)`: lists walk it, and
//! a get by id reads the row by its full key (the day is in the UUIDv7 id).
//! It is written blind and grouped, one unlogged batch per `(tenant, day)`:
//! by the emitter, and again by fan-out unless the emitter wrote it inside
//! the batch's log transaction (the record is marked: the emitter of a
//! single event, or one that died between its append and its index, or
//! the CDC relay, leaves it to fan-out). Nothing is read before it is
//! written.
//!
//! `events` (by id) holds fan-out's state only, for the events fan-out
//! writes schedule rows for (`fanned out`) and for duplicates. Fan-out
//! reads it only before it schedules, so that an event re-read after a
//! crash is not scheduled twice; an event whose deliveries it hands over
//! unscheduled (`delivery::handoff`), or that has none, reads nothing.
//!
//! The dedupe key is claimed with `INSERT .. IF NOT EXISTS USING TTL
//! <window>`: exactly one event wins a key while the claim lives, and the
//! database forgets it when the window ends. The loser is marked a
//! duplicate and leaves the day index. Fan-out writes an event's
//! deliveries before it marks the event fanned out, so a crash in between
//! repeats the fan-out (duplicates possible) instead of losing deliveries.

use ::scylla::value::CqlValue;
use async_trait::async_trait;

use super::{decode, encode, id_day, ScyllaStore};
use crate::{
    log::LogPosition,
    model::{DomainEvent, ScheduledDelivery},
    store::{EventFilter, EventStore, FanOut, FanOutResult, PruneCursor, Pruned, StoreError},
};

const BY_DAY: &str =
    "INSERT INTO events_by_day (tenant_id, day, id, event_type, body) VALUES (?, ?, ?, ?, ?)";

const STATE_FANNED_OUT: i32 = 1;
const STATE_DUPLICATE: i32 = 2;

impl ScyllaStore {
    /// Claims `(tenant, key)` for the event until `until_ms` unless a live
    /// claim exists; returns the holder's event id.
    pub(super) async fn claim_dedupe(
        &self,
        event: &DomainEvent,
        key: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let ttl = ((until_ms - now_ms) / 1000).clamp(1, 630_720_000) as i32;
        let (applied, current) = self
            .lwt(
                "INSERT INTO dedupe (tenant_id, dedupe_key, event_id, expires_at) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
                (&event.tenant_id, key, &event.id, until_ms, ttl),
            )
            .await?;
        if applied {
            return Ok(event.id.clone());
        }
        match current.get("event_id") {
            Some(CqlValue::Text(holder)) => Ok(holder.clone()),
            _ => Err(super::corrupt("dedupe claim without an event id")),
        }
    }

    /// Marks an event the duplicate of the holder of its dedupe key.
    async fn mark_duplicate(&self, event: &DomainEvent) -> Result<FanOutResult, StoreError> {
        self.exec(
            "UPDATE events SET state = ? WHERE id = ?",
            (STATE_DUPLICATE, &event.id),
        )
        .await?;
        self.exec(
            "DELETE FROM events_by_day WHERE tenant_id = ? AND day = ? AND id = ?",
            (&event.tenant_id, id_day(&event.id), &event.id),
        )
        .await?;
        Ok(FanOutResult::Duplicate)
    }

    /// Whether fan-out of `item` reads nothing (see the module doc): it
    /// leaves no schedule rows.
    pub(super) fn fans_out_blind(item: &FanOut) -> bool {
        item.unscheduled || (item.deliveries.is_empty() && item.parked.is_empty())
    }

    /// The fan-out of events that leave no schedule rows
    /// ([`Self::fans_out_blind`]): their day-index rows grouped, then their
    /// dedupe claims.
    pub(super) async fn fan_out_blind(
        &self,
        items: &[&FanOut],
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<FanOutResult>, StoreError> {
        let events: Vec<&DomainEvent> = items.iter().map(|item| &item.event).collect();
        let unindexed: Vec<&DomainEvent> = items
            .iter()
            .filter(|item| !item.indexed)
            .map(|item| &item.event)
            .collect();
        if !unindexed.is_empty() {
            self.index_by_day(&unindexed).await?;
        }
        let claims = events.iter().map(|event| async move {
            let Some(key) = &event.dedupe_key else {
                return Ok(FanOutResult::Scheduled);
            };
            let holder = self
                .claim_dedupe(event, key, dedupe_until_ms, now_ms)
                .await?;
            if holder == event.id {
                Ok(FanOutResult::Scheduled)
            } else {
                self.mark_duplicate(event).await
            }
        });
        futures::future::try_join_all(claims).await
    }

    /// The day-index rows of `events`: one unlogged batch per `(tenant, day)`.
    async fn index_by_day(&self, events: &[&DomainEvent]) -> Result<(), StoreError> {
        let bodies = events.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let rows = events.iter().zip(&bodies).map(|(e, body)| {
            let day = id_day(&e.id);
            let row = (&*e.tenant_id, day, &*e.id, &*e.event_type, &**body);
            ((&*e.tenant_id, day), row, body.len())
        });
        super::grouped::write_table(&self.session, &self.ops, BY_DAY, rows)
            .await
            .map_err(super::unavailable)
    }

    /// The dedupe claims of a batch of events just appended.
    async fn claim_all(
        &self,
        events: &[(DomainEvent, LogPosition)],
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        let now = crate::clock::now_ms();
        let claims = events.iter().filter_map(|(e, _)| {
            let key = e.dedupe_key.as_ref()?;
            Some(self.claim_dedupe(e, key, dedupe_until_ms, now))
        });
        futures::future::try_join_all(claims).await?;
        Ok(())
    }

    /// One event's fan-out (see `ScheduleStore::fan_out`).
    pub(super) async fn fan_out_one(
        &self,
        item: &FanOut,
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<FanOutResult, StoreError> {
        let event = &item.event;
        let state: Option<(Option<i32>,)> = self
            .row("SELECT state FROM events WHERE id = ?", (&event.id,))
            .await?;
        if let Some((Some(_),)) = state {
            return Ok(FanOutResult::AlreadyDone);
        }
        if !item.indexed {
            self.index_by_day(&[event]).await?;
        }
        if let Some(key) = &event.dedupe_key {
            let holder = self
                .claim_dedupe(event, key, dedupe_until_ms, now_ms)
                .await?;
            if holder != event.id {
                return self.mark_duplicate(event).await;
            }
        }
        if item.unscheduled {
            // Kept by the log until settled: no schedule rows, and the event
            // is not marked fanned out, so a re-read fans it out again.
            return Ok(FanOutResult::Scheduled);
        }
        // A lease is a due time in the future (see `schedule`).
        let leased: Vec<ScheduledDelivery> = item
            .deliveries
            .iter()
            .map(|d| match item.lease_until_ms.filter(|_| !d.ordered) {
                Some(until) => ScheduledDelivery {
                    due_at_ms: until,
                    ..d.clone()
                },
                None => d.clone(),
            })
            .collect();
        let work = leased.iter().map(|d| self.insert_schedule(d, None));
        futures::future::try_join_all(work).await?;
        let parked = item.parked.iter().map(|d| self.insert_held(d));
        futures::future::try_join_all(parked).await?;
        self.exec(
            "UPDATE events SET state = ? WHERE id = ?",
            (STATE_FANNED_OUT, &event.id),
        )
        .await?;
        Ok(FanOutResult::Scheduled)
    }
}

#[async_trait]
impl EventStore for ScyllaStore {
    async fn record_event(
        &self,
        event: &DomainEvent,
        position: LogPosition,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.record_events(vec![(event.clone(), position)], dedupe_until_ms)
            .await
    }

    /// The day-index rows, one unlogged batch per `(tenant, day)`, then the
    /// dedupe claims.
    async fn record_events(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        let all: Vec<&DomainEvent> = events.iter().map(|(e, _)| e).collect();
        self.index_by_day(&all).await?;
        self.claim_all(&events, dedupe_until_ms).await
    }

    /// The day index is written in the batch's log transaction: fan-out
    /// reads the records marked and writes it again only for the others.
    fn indexes_in_append(&self) -> bool {
        true
    }

    async fn index_events(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        let all: Vec<&DomainEvent> = events.iter().collect();
        self.index_by_day(&all).await
    }

    async fn unindex_events(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        let deletes = events.iter().map(|e| {
            self.exec(
                "DELETE FROM events_by_day WHERE tenant_id = ? AND day = ? AND id = ?",
                (&e.tenant_id, id_day(&e.id), &e.id),
            )
        });
        futures::future::try_join_all(deletes).await.map(|_| ())
    }

    async fn claim_dedupe_keys(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.claim_all(&events, dedupe_until_ms).await
    }

    async fn event_by_dedupe_key(
        &self,
        tenant_id: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<DomainEvent>, StoreError> {
        let row: Option<(String, i64)> = self
            .row(
                "SELECT event_id, expires_at FROM dedupe WHERE tenant_id = ? AND dedupe_key = ?",
                (tenant_id, key),
            )
            .await?;
        match row {
            Some((event_id, expires)) if expires > now_ms => {
                self.get_event(tenant_id, &event_id).await
            }
            _ => Ok(None),
        }
    }

    async fn get_event(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<DomainEvent>, StoreError> {
        let row: Option<(String,)> = self
            .row(
                "SELECT body FROM events_by_day WHERE tenant_id = ? AND day = ? AND id = ?",
                (tenant_id, id_day(id), id),
            )
            .await?;
        row.map(|(body,)| decode(&body)).transpose()
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let wanted = filter.event_type.clone();
        let rows = self
            .walk_days(
                "SELECT id, event_type, tenant_id, body FROM events_by_day WHERE tenant_id = ? AND day = ? AND id < ? LIMIT ?",
                &[tenant_id],
                filter.before.as_deref(),
                limit,
                |event_type, _| match &wanted {
                    None => true,
                    Some(t) => match t.strip_suffix('*') {
                        Some(prefix) => event_type.starts_with(prefix),
                        None => event_type == t,
                    },
                },
            )
            .await?;
        rows.iter()
            .filter_map(|(_, body)| body.as_deref())
            .map(decode)
            .collect()
    }

    async fn purge_expired(&self, _now_ms: i64) -> Result<u64, StoreError> {
        // Dedupe claims carry a TTL: the database drops them itself.
        Ok(0)
    }

    async fn prune_before(
        &self,
        _before_ms: i64,
        _from: &PruneCursor,
        _limit: usize,
    ) -> Result<Pruned, StoreError> {
        // Events and delivery logs carry the retention as their TTL.
        Ok(Pruned::default())
    }
}
