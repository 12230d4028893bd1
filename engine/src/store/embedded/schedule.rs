//! The delivery schedule in SQLite: a row per pending delivery, its due
//! time moved forward by a lease while a worker holds it.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    db_err, decode,
    events::{claim_dedupe, insert_event},
    EmbeddedStore,
};
use crate::{
    model::{DomainEvent, ScheduledDelivery},
    store::{FanOut, FanOutResult, ScheduleStore, StoreError},
};

/// Adds a delivery to the schedule, due at its time, or leased until
/// `lease_until_ms` (handed to a shard by the caller).
pub(super) fn insert_schedule(
    conn: &Connection,
    d: &ScheduledDelivery,
    lease_until_ms: Option<i64>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO schedule
         (delivery_id, tenant_id, event_id, subscription_id, attempt, is_replay, replay_of, due_at, seq, ordered, leased)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut st| {
        st.execute(params![
            d.delivery_id,
            d.tenant_id,
            d.event_id,
            d.subscription_id,
            d.attempt,
            d.is_replay,
            d.replay_of,
            lease_until_ms.unwrap_or(d.due_at_ms),
            d.seq,
            d.ordered,
            lease_until_ms.is_some()
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// `events.state`: its deliveries are in the schedule.
const FANNED_OUT: i64 = 1;
/// `events.state`: another event holds its dedupe key (dropped).
const DUPLICATE: i64 = 2;
/// Fanned out unscheduled ([`FanOut::unscheduled`]): the event log keeps
/// its deliveries until each is settled. Kept as a row of `events_kept`
/// (`events.state` stays 0), not in `events`: an update of `events` would
/// write the event's row, body and all, a second time; `events.state = 3`
/// is how versions before schema v10 marked it.
const KEPT_BY_LOG: i64 = 3;

/// The event's fan-out state, or `None` when it is not indexed.
fn fan_out_state(conn: &Connection, event_id: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached(
        "SELECT CASE WHEN e.state = 0 AND EXISTS (SELECT 1 FROM events_kept k WHERE k.id = e.id)
                THEN 3 ELSE e.state END
         FROM events e WHERE e.id = ?1",
    )
    .and_then(|mut st| st.query_row([event_id], |r| r.get(0)).optional())
    .map_err(db_err)
}

/// The subscriptions whose delivery of `event` is settled: its final
/// attempt (delivered, dead) is recorded, or it has an entry in the
/// schedule (a retry, a hold). A failed attempt without an entry is not
/// settled: its retry was not kept (or is kept in a changelog, which
/// restores it).
fn settled_subscriptions(
    conn: &Connection,
    event: &DomainEvent,
) -> Result<Vec<String>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT subscription_id FROM delivery_logs
             WHERE tenant_id = ?1 AND event_id = ?2 AND outcome IN ('delivered', 'dead')
             UNION SELECT subscription_id FROM schedule WHERE event_id = ?2",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map(params![event.tenant_id, event.id], |r| r.get(0))
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

fn set_state(conn: &Connection, event_id: &str, state: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE events SET state = ?1 WHERE id = ?2")
        .and_then(|mut st| st.execute(params![state, event_id]))
        .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl ScheduleStore for EmbeddedStore {
    async fn fan_out(
        &self,
        batch: Vec<FanOut>,
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<FanOutResult>, StoreError> {
        self.write(move |conn| {
            let mut results = Vec::with_capacity(batch.len());
            for item in &batch {
                // Usually indexed at emit already: encode the body only if not.
                let state = match fan_out_state(conn, &item.event.id)? {
                    Some(state) => state,
                    None => {
                        insert_event(conn, &item.event, item.position, &item.event.to_json())?;
                        0
                    }
                };
                if state == FANNED_OUT || state == DUPLICATE {
                    results.push(FanOutResult::AlreadyDone);
                    continue;
                }
                if let Some(key) = &item.event.dedupe_key {
                    let holder = claim_dedupe(conn, &item.event, key, dedupe_until_ms, now_ms)?;
                    if holder != item.event.id {
                        set_state(conn, &item.event.id, DUPLICATE)?;
                        results.push(FanOutResult::Duplicate);
                        continue;
                    }
                }
                // Read again after being handed over unscheduled: what was
                // settled since is left out.
                let settled = if state == KEPT_BY_LOG {
                    settled_subscriptions(conn, &item.event)?
                } else {
                    Vec::new()
                };
                let fresh = |d: &&ScheduledDelivery| !settled.contains(&d.subscription_id);
                if item.unscheduled {
                    // Kept by the log until settled: no schedule rows; a
                    // re-read (its offset not committed) fans it out again.
                    if state != KEPT_BY_LOG {
                        conn.prepare_cached("INSERT OR IGNORE INTO events_kept (id) VALUES (?1)")
                            .and_then(|mut st| st.execute([&item.event.id]))
                            .map_err(db_err)?;
                    }
                } else {
                    for d in item.deliveries.iter().filter(fresh) {
                        insert_schedule(conn, d, item.lease_until_ms.filter(|_| !d.ordered))?;
                    }
                    for d in item.parked.iter().filter(fresh) {
                        insert_schedule(conn, d, None)?;
                        conn.prepare_cached("UPDATE schedule SET held = 1 WHERE delivery_id = ?1")
                            .and_then(|mut st| st.execute([&d.delivery_id]))
                            .map_err(db_err)?;
                    }
                    set_state(conn, &item.event.id, FANNED_OUT)?;
                }
                results.push(if settled.is_empty() {
                    FanOutResult::Scheduled
                } else {
                    FanOutResult::Resumed(settled)
                });
            }
            Ok(results)
        })
        .await
    }

    async fn schedule(&self, deliveries: Vec<ScheduledDelivery>) -> Result<(), StoreError> {
        // A replay's record (the only pending record a schedule call has).
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            deliveries
                .iter()
                .try_for_each(|d| insert_schedule(conn, d, None))?;
            super::audit::insert_pending(conn, &audit)
        })
        .await
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(ScheduledDelivery, DomainEvent)>, StoreError> {
        self.write(move |conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT s.delivery_id, s.tenant_id, s.event_id, s.subscription_id, s.attempt,
                            s.is_replay, s.replay_of, s.due_at, s.seq, s.ordered, e.body
                     FROM schedule s JOIN events e ON e.id = s.event_id
                     WHERE s.due_at <= ?1
                       AND (s.ordered = 0 OR NOT EXISTS (
                             SELECT 1 FROM schedule o
                             WHERE o.subscription_id = s.subscription_id
                               AND (o.seq < s.seq OR (o.seq = s.seq AND o.delivery_id < s.delivery_id))))
                     ORDER BY s.due_at LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map(params![now_ms, limit as i64], |r| {
                    Ok((
                        ScheduledDelivery {
                            delivery_id: r.get(0)?,
                            tenant_id: r.get(1)?,
                            event_id: r.get(2)?,
                            subscription_id: r.get(3)?,
                            attempt: r.get(4)?,
                            is_replay: r.get(5)?,
                            replay_of: r.get(6)?,
                            due_at_ms: r.get(7)?,
                            seq: r.get(8)?,
                            ordered: r.get(9)?,
                        },
                        r.get::<_, String>(10)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (d, body) = row.map_err(db_err)?;
                out.push((d, decode::<DomainEvent>(&body)?));
            }
            let mut lease = conn
                .prepare_cached(
                    "UPDATE schedule SET due_at = ?1, leased = 1, held = 0 WHERE delivery_id = ?2",
                )
                .map_err(db_err)?;
            for (d, _) in &out {
                lease
                    .execute(params![lease_until_ms, d.delivery_id])
                    .map_err(db_err)?;
            }
            Ok(out)
        })
        .await
    }

    async fn hold(
        &self,
        delivery: &ScheduledDelivery,
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.h_hold_all(std::slice::from_ref(delivery), recheck_at_ms)
            .await
    }

    async fn hold_all(
        &self,
        deliveries: &[ScheduledDelivery],
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.h_hold_all(deliveries, recheck_at_ms).await
    }

    async fn release_held(
        &self,
        subscription_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.h_release_held(subscription_id, now_ms, limit).await
    }

    async fn release_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE schedule SET due_at = ?1, leased = 0 WHERE leased = 1",
                [now_ms],
            )
            .map(|n| n as u64)
            .map_err(db_err)
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT min(due_at) FROM schedule", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map_err(db_err)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await
    }

    async fn schedule_backlog(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM schedule", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }
}
