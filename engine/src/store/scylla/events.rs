//! The event index (by id, and by tenant and day), the dedupe window and
//! fan-out's per-event state.
//!
//! The dedupe key is claimed with `INSERT .. IF NOT EXISTS USING TTL
//! <window>`: exactly one event wins a key while the claim lives, and the
//! database forgets it when the window ends. Fan-out writes an event's
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

const BY_ID: &str =
    "INSERT INTO events (id, tenant_id, log_partition, log_offset, body) VALUES (?, ?, ?, ?, ?)";
const BY_DAY: &str =
    "INSERT INTO events_by_day (tenant_id, day, id, event_type, body) VALUES (?, ?, ?, ?, ?)";

const STATE_FANNED_OUT: i32 = 1;
const STATE_DUPLICATE: i32 = 2;

impl ScyllaStore {
    /// Writes the event to both indexes (idempotent; keeps its fan-out state).
    pub(super) async fn index_event(
        &self,
        event: &DomainEvent,
        position: LogPosition,
    ) -> Result<(), StoreError> {
        let body = encode(event)?;
        let by_id = self.exec(
            BY_ID,
            (
                &event.id,
                &event.tenant_id,
                position.partition as i32,
                position.offset as i64,
                &body,
            ),
        );
        let by_day = self.exec(
            BY_DAY,
            (
                &event.tenant_id,
                id_day(&event.id),
                &event.id,
                &event.event_type,
                &body,
            ),
        );
        // The `events` row last: fan-out takes it as the sign the event is
        // fully indexed and does not write it again.
        by_day.await?;
        by_id.await?;
        Ok(())
    }

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

    /// The event by id, whatever its tenant (the scheduler's read).
    pub(super) async fn event_any(&self, id: &str) -> Result<Option<DomainEvent>, StoreError> {
        let row: Option<(String,)> = self
            .row("SELECT body FROM events WHERE id = ?", (id,))
            .await?;
        row.map(|(b,)| decode(&b)).transpose()
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
        match state {
            // Usually indexed at emit already: written again only if not.
            None => self.index_event(event, item.position).await?,
            Some((Some(_),)) => return Ok(FanOutResult::AlreadyDone),
            Some((None,)) => {}
        }
        if let Some(key) = &event.dedupe_key {
            let holder = self
                .claim_dedupe(event, key, dedupe_until_ms, now_ms)
                .await?;
            if holder != event.id {
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
                return Ok(FanOutResult::Duplicate);
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
        self.index_event(event, position).await?;
        if let Some(key) = &event.dedupe_key {
            self.claim_dedupe(event, key, dedupe_until_ms, crate::clock::now_ms())
                .await?;
        }
        Ok(())
    }

    /// A batch emit's index: the day-index rows as one unlogged batch per
    /// `(tenant, day)`, then each `events` row (the sign fan-out reads, so
    /// last), then the dedupe claims.
    async fn record_events(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        let bodies = events
            .iter()
            .map(|(e, _)| encode(e))
            .collect::<Result<Vec<_>, _>>()?;
        let by_day = events.iter().zip(&bodies).map(|((e, _), body)| {
            let day = id_day(&e.id);
            let row = (&*e.tenant_id, day, &*e.id, &*e.event_type, &**body);
            ((&*e.tenant_id, day), row, body.len())
        });
        super::grouped::write_table(&self.session, &self.ops, BY_DAY, by_day)
            .await
            .map_err(super::unavailable)?;
        let by_id = events.iter().zip(&bodies).map(|((e, position), body)| {
            let row = (
                &e.id,
                &e.tenant_id,
                position.partition as i32,
                position.offset as i64,
                body,
            );
            self.exec(BY_ID, row)
        });
        futures::future::try_join_all(by_id).await?;
        let now = crate::clock::now_ms();
        let claims = events.iter().filter_map(|(e, _)| {
            let key = e.dedupe_key.as_ref()?;
            Some(self.claim_dedupe(e, key, dedupe_until_ms, now))
        });
        futures::future::try_join_all(claims).await?;
        Ok(())
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
        let row: Option<(String, Option<i32>, String)> = self
            .row(
                "SELECT tenant_id, state, body FROM events WHERE id = ?",
                (id,),
            )
            .await?;
        match row {
            Some((tenant, state, body))
                if tenant == tenant_id && state != Some(STATE_DUPLICATE) =>
            {
                decode(&body).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let wanted = filter.event_type.clone();
        let bodies = self
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
        bodies.iter().map(|b| decode(b)).collect()
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
