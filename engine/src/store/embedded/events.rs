//! The event index and the dedupe window in SQLite. An event's `state` is
//! 0 while it waits for fan-out, 1 once fanned out, 2 when dropped as a
//! duplicate (hidden from reads); an event fanned out unscheduled keeps
//! state 0 and has a row in `events_kept`.

use async_trait::async_trait;
use rusqlite::{params, types::Value, Connection};

use super::{db_err, query_bodies, EmbeddedStore};
use crate::{
    ids,
    log::LogPosition,
    model::DomainEvent,
    store::{id_floor, EventFilter, EventStore, PruneCursor, Pruned, StoreError},
};

/// Indexes an event (state 0: not fanned out yet) unless it is indexed.
/// `body` is the event's JSON ([`DomainEvent::to_json`]).
pub(super) fn insert_event(
    conn: &Connection,
    event: &DomainEvent,
    position: LogPosition,
    body: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO events (id, tenant_id, event_type, state, partition, log_offset, body)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            event.id,
            event.tenant_id,
            event.event_type,
            position.partition,
            position.offset as i64,
            body
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// Claims `(tenant, dedupe_key)` for the event unless a live claim exists;
/// returns the event id holding it afterwards.
pub(super) fn claim_dedupe(
    conn: &Connection,
    event: &DomainEvent,
    key: &str,
    until_ms: i64,
    now_ms: i64,
) -> Result<String, StoreError> {
    conn.prepare_cached(
        "DELETE FROM dedupe WHERE tenant_id = ?1 AND dedupe_key = ?2 AND expires_at <= ?3",
    )
    .and_then(|mut st| st.execute(params![event.tenant_id, key, now_ms]))
    .map_err(db_err)?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO dedupe (tenant_id, dedupe_key, event_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![event.tenant_id, key, event.id, until_ms]))
    .map_err(db_err)?;
    conn.prepare_cached("SELECT event_id FROM dedupe WHERE tenant_id = ?1 AND dedupe_key = ?2")
        .and_then(|mut st| st.query_row(params![event.tenant_id, key], |r| r.get(0)))
        .map_err(db_err)
}

/// One retention step over `table`: the next `limit` ids after `from`
/// below `floor` are examined and `delete` (over the range `?1` exclusive
/// to `?2` inclusive, `?3` = `now` when given) removes those that may go.
/// Returns the rows deleted and the last id examined (`None`: nothing was
/// left to examine).
fn prune_range(
    conn: &Connection,
    table: &str,
    from: Option<&str>,
    floor: &str,
    limit: usize,
    delete: &str,
    now: Option<i64>,
) -> Result<(usize, Option<String>), StoreError> {
    let from = from.unwrap_or("");
    let last: Option<String> = conn
        .prepare_cached(&format!(
            "SELECT max(id) FROM (SELECT id FROM {table} WHERE id > ?1 AND id < ?2 \
             ORDER BY id LIMIT ?3)"
        ))
        .and_then(|mut st| st.query_row(params![from, floor, limit as i64], |r| r.get(0)))
        .map_err(db_err)?;
    let Some(last) = last else {
        return Ok((0, None));
    };
    let mut st = conn.prepare_cached(delete).map_err(db_err)?;
    let deleted = match now {
        Some(now) => st.execute(params![from, last, now]),
        None => st.execute(params![from, last]),
    }
    .map_err(db_err)?;
    Ok((deleted, Some(last)))
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn record_event(
        &self,
        event: &DomainEvent,
        position: LogPosition,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.record_events(vec![(event.clone(), position)], dedupe_until_ms)
            .await
    }

    async fn record_events(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        // Encoded here, not on the one writer thread.
        let bodies: Vec<String> = events.iter().map(|(e, _)| e.to_json()).collect();
        self.write(move |conn| {
            for ((event, position), body) in events.iter().zip(&bodies) {
                insert_event(conn, event, *position, body)?;
                if let Some(key) = &event.dedupe_key {
                    claim_dedupe(conn, event, key, dedupe_until_ms, crate::clock::now_ms())?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn event_by_dedupe_key(
        &self,
        tenant_id: &str,
        dedupe_key: &str,
        now_ms: i64,
    ) -> Result<Option<DomainEvent>, StoreError> {
        let args = vec![
            Value::from(tenant_id.to_string()),
            Value::from(dedupe_key.to_string()),
            Value::from(now_ms),
        ];
        self.read(move |conn| {
            query_bodies(
                conn,
                "SELECT e.body FROM dedupe d JOIN events e ON e.id = d.event_id
                 WHERE d.tenant_id = ?1 AND d.dedupe_key = ?2 AND d.expires_at > ?3",
                args,
            )
            .map(|mut v| v.pop())
        })
        .await
    }

    async fn get_event(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<DomainEvent>, StoreError> {
        let args = vec![
            Value::from(tenant_id.to_string()),
            Value::from(id.to_string()),
        ];
        self.read(move |conn| {
            query_bodies(
                conn,
                "SELECT body FROM events WHERE tenant_id = ?1 AND id = ?2 AND state != 2",
                args,
            )
            .map(|mut v| v.pop())
        })
        .await
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let mut sql = String::from("SELECT body FROM events WHERE tenant_id = ? AND state != 2");
        let mut args = vec![Value::from(tenant_id.to_string())];
        if let Some(before) = &filter.before {
            sql.push_str(" AND id < ?");
            args.push(Value::from(before.clone()));
        }
        if let Some(t) = &filter.event_type {
            if let Some(prefix) = t.strip_suffix('*') {
                sql.push_str(" AND substr(event_type, 1, ?) = ?");
                args.push(Value::from(prefix.len() as i64));
                args.push(Value::from(prefix.to_string()));
            } else {
                sql.push_str(" AND event_type = ?");
                args.push(Value::from(t.clone()));
            }
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(Value::from(limit as i64));
        self.read(move |conn| query_bodies(conn, &sql, args)).await
    }

    async fn prune_before(
        &self,
        before_ms: i64,
        from: &PruneCursor,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        let events_floor = id_floor(ids::EVENT, before_ms);
        let logs_floor = id_floor(ids::ATTEMPT, before_ms);
        let from = from.clone();
        let now = crate::clock::now_ms();
        self.write(move |conn| {
            let (events, events_to) = prune_range(
                conn,
                "events",
                from.events.as_deref(),
                &events_floor,
                limit,
                // Kept: not yet fanned out, a delivery pending, a live
                // dedupe key (a repeat of the key must still find it).
                "DELETE FROM events WHERE id IN (SELECT e.id FROM events e \
                 WHERE e.id > ?1 AND e.id <= ?2 \
                 AND (e.state <> 0 OR EXISTS (SELECT 1 FROM events_kept k WHERE k.id = e.id)) \
                 AND NOT EXISTS (SELECT 1 FROM schedule s WHERE s.event_id = e.id) \
                 AND NOT EXISTS (SELECT 1 FROM dedupe d WHERE d.tenant_id = e.tenant_id \
                     AND d.dedupe_key = json_extract(e.body, '$.dedupe_key') \
                     AND d.event_id = e.id AND d.expires_at > ?3))",
                Some(now),
            )?;
            let (delivery_logs, logs_to) = prune_range(
                conn,
                "delivery_logs",
                from.delivery_logs.as_deref(),
                &logs_floor,
                limit,
                // Kept: a pending delivery's attempts.
                "DELETE FROM delivery_logs WHERE id IN (SELECT l.id FROM delivery_logs l \
                 WHERE l.id > ?1 AND l.id <= ?2 \
                 AND NOT EXISTS (SELECT 1 FROM schedule s WHERE s.event_id = l.event_id))",
                None,
            )?;
            let next = (events_to.is_some() || logs_to.is_some()).then(|| PruneCursor {
                events: events_to.or(from.events),
                delivery_logs: logs_to.or(from.delivery_logs),
            });
            Ok(Pruned {
                events,
                delivery_logs,
                next,
            })
        })
        .await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            conn.execute("DELETE FROM dedupe WHERE expires_at <= ?1", [now_ms])
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }
}
