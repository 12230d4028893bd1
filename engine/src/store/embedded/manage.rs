//! The embedded store's management queries: subscription lists and deletes,
//! API keys, the event-type catalogue and recovery jobs. Same rules as the
//! rest of the store: writes return after their commit.

use rusqlite::{params, types::Value, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::{db_err, decode, insert_schedule, json_err, query_bodies, EmbeddedStore};
use crate::{
    model::{ScheduledDelivery, WebhookSubscription},
    resources::{ApiKey, EventTypeSchema, RecoveryCandidate, RecoveryJob, RecoveryStatus},
    store::{RecoveryScope, StoreError},
};

fn ms_to_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn time_to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        prefix: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        created_at: ms_to_time(r.get(4)?),
        revoked_at: r.get::<_, Option<i64>>(5)?.map(ms_to_time),
    })
}

const KEY_COLUMNS: &str = "id, tenant_id, name, prefix, created_at, revoked_at";

pub(super) fn insert_key(
    conn: &Connection,
    key: &ApiKey,
    hash: [u8; 32],
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO api_keys (hash, tenant_id, created_at, id, name, prefix) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            hash.as_slice(),
            key.tenant_id,
            time_to_ms(key.created_at),
            key.id,
            key.name,
            key.prefix
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// The scope's WHERE clause over `delivery_logs` and its arguments.
fn scope_sql(scope: &RecoveryScope, after: Option<&str>) -> (String, Vec<Value>) {
    let mut sql = String::from(
        "SELECT l.event_id, l.delivery_id FROM delivery_logs l JOIN (
           SELECT event_id, MAX(id) AS last FROM delivery_logs
           WHERE tenant_id = ? AND subscription_id = ? AND event_id >= ? AND event_id < ?",
    );
    let mut args = vec![
        Value::from(scope.tenant_id.clone()),
        Value::from(scope.subscription_id.clone()),
        Value::from(scope.from_event_id.clone()),
        Value::from(scope.to_event_id.clone()),
    ];
    if let Some(after) = after {
        sql.push_str(" AND event_id > ?");
        args.push(Value::from(after.to_string()));
    }
    sql.push_str(" GROUP BY event_id) x ON l.id = x.last");
    if scope.only_failed {
        sql.push_str(" WHERE l.outcome != 'delivered'");
    }
    (sql, args)
}

impl EmbeddedStore {
    pub(super) async fn m_list_subscriptions(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError> {
        let mut sql = String::from("SELECT body FROM subscriptions WHERE tenant_id = ?");
        let mut args = vec![Value::from(tenant_id.to_string())];
        if let Some(b) = before {
            sql.push_str(" AND id < ?");
            args.push(Value::from(b.to_string()));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(Value::from(limit as i64));
        let codec = self.codec.clone();
        self.read(move |conn| super::query_subs(conn, &codec, &sql, args))
            .await
    }

    pub(super) async fn m_delete_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant_id.to_string(), id.to_string());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM subscriptions WHERE tenant_id = ?1 AND id = ?2",
                params![tenant, id],
            )
            .map(|n| n > 0)
            .map_err(db_err)
        })
        .await
    }

    pub(super) async fn m_tenant_exists(&self, tenant_id: &str) -> Result<bool, StoreError> {
        let tenant = tenant_id.to_string();
        self.read(move |conn| {
            conn.query_row("SELECT 1 FROM tenants WHERE id = ?1", [tenant], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
                .map_err(db_err)
        })
        .await
    }

    pub(super) async fn m_create_api_key(
        &self,
        key: &ApiKey,
        hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            let exists = conn
                .query_row(
                    "SELECT 1 FROM tenants WHERE id = ?1",
                    [&key.tenant_id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(db_err)?;
            if exists.is_none() {
                return Err(StoreError::NotFound("tenant"));
            }
            insert_key(conn, &key, hash)
        })
        .await
    }

    pub(super) async fn m_list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let tenant = tenant_id.to_string();
        self.read(move |conn| {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 ORDER BY id"
                ))
                .map_err(db_err)?;
            let rows = st.query_map([tenant], key_row).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    pub(super) async fn m_revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (tenant, id) = (tenant_id.to_string(), key_id.to_string());
        self.write(move |conn| {
            conn.execute(
                "UPDATE api_keys SET revoked_at = ?3 WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![tenant, id, at_ms],
            )
            .map_err(db_err)?;
            conn.query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 AND id = ?2"),
                params![tenant, id],
                key_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    pub(super) async fn m_put_event_type(
        &self,
        schema: &EventTypeSchema,
    ) -> Result<bool, StoreError> {
        let body = serde_json::to_string(schema).map_err(json_err)?;
        let schema = schema.clone();
        self.write(move |conn| {
            let existing: Option<String> = conn
                .query_row(
                    "SELECT body FROM event_types WHERE tenant_id = ?1 AND event_type = ?2 AND schema_version = ?3",
                    params![schema.tenant_id, schema.event_type, schema.schema_version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if let Some(existing) = existing {
                let existing: EventTypeSchema = decode(&existing)?;
                return if existing.schema == schema.schema {
                    Ok(false)
                } else {
                    Err(StoreError::Conflict(format!(
                        "schema_version {} of {} is registered with another schema; versions are immutable, register a new schema_version",
                        schema.schema_version, schema.event_type
                    )))
                };
            }
            conn.execute(
                "INSERT INTO event_types (tenant_id, event_type, schema_version, body) VALUES (?1, ?2, ?3, ?4)",
                params![schema.tenant_id, schema.event_type, schema.schema_version, body],
            )
            .map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn m_all_event_types(&self) -> Result<Vec<EventTypeSchema>, StoreError> {
        self.read(|conn| {
            query_bodies(
                conn,
                "SELECT body FROM event_types ORDER BY tenant_id, event_type, schema_version",
                Vec::new(),
            )
        })
        .await
    }

    pub(super) async fn m_create_recovery(&self, job: &RecoveryJob) -> Result<(), StoreError> {
        let body = serde_json::to_string(job).map_err(json_err)?;
        let (id, tenant) = (job.id.clone(), job.tenant_id.clone());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO recoveries (id, tenant_id, finished, body) VALUES (?1, ?2, 0, ?3)",
                params![id, tenant, body],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn m_get_recovery(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<RecoveryJob>, StoreError> {
        let (tenant, id) = (tenant_id.to_string(), id.to_string());
        self.read(move |conn| {
            let body: Option<String> = conn
                .query_row(
                    "SELECT body FROM recoveries WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(body) = body else { return Ok(None) };
            let mut job: RecoveryJob = decode(&body)?;
            let pending: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM recovery_deliveries r JOIN schedule s ON s.delivery_id = r.delivery_id
                     WHERE r.recovery_id = ?1",
                    [&job.id],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            job.done = job.scheduled.saturating_sub(pending as u64);
            Ok(Some(job))
        })
        .await
    }

    pub(super) async fn m_unfinished_recoveries(
        &self,
    ) -> Result<Vec<(RecoveryJob, Option<String>)>, StoreError> {
        self.read(|conn| {
            let mut st = conn
                .prepare_cached("SELECT body FROM recoveries WHERE finished = 0 ORDER BY id")
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let body = row.map_err(db_err)?;
                let value: serde_json::Value = decode(&body)?;
                let cursor = value
                    .get("cursor")
                    .and_then(|c| c.as_str())
                    .map(str::to_string);
                out.push((decode(&body)?, cursor));
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn m_lease_recovery(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "INSERT INTO recovery_leases (id, owner, until_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
                     WHERE owner = excluded.owner OR until_ms < ?4",
                )
                .and_then(|mut st| st.execute(params![id, owner, until_ms, now_ms]))
                .map_err(db_err)?;
            Ok(changed == 1)
        })
        .await
    }

    pub(super) async fn m_count_recovery_candidates(
        &self,
        scope: &RecoveryScope,
    ) -> Result<u64, StoreError> {
        let (sql, args) = scope_sql(scope, None);
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT COUNT(*) FROM ({sql})"),
                rusqlite::params_from_iter(args),
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db_err)
        })
        .await
    }

    pub(super) async fn m_recovery_candidates(
        &self,
        scope: &RecoveryScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecoveryCandidate>, StoreError> {
        let (mut sql, mut args) = scope_sql(scope, after);
        sql.push_str(" ORDER BY l.event_id LIMIT ?");
        args.push(Value::from(limit as i64));
        self.read(move |conn| {
            let mut st = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok(RecoveryCandidate {
                        event_id: r.get(0)?,
                        delivery_id: r.get(1)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    pub(super) async fn m_advance_recovery(
        &self,
        job: &RecoveryJob,
        deliveries: Vec<ScheduledDelivery>,
        cursor: Option<String>,
        finished: bool,
    ) -> Result<(), StoreError> {
        let mut job = job.clone();
        self.write(move |conn| {
            for d in &deliveries {
                insert_schedule(conn, d, None)?;
                conn.execute(
                    "INSERT OR IGNORE INTO recovery_deliveries (recovery_id, delivery_id) VALUES (?1, ?2)",
                    params![job.id, d.delivery_id],
                )
                .map_err(db_err)?;
            }
            // Counted from the job's delivery set: a page scheduled twice
            // (a log replay repeated after a crash) with the same ids counts once.
            let scheduled: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM recovery_deliveries WHERE recovery_id = ?1",
                    [&job.id],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            job.scheduled = scheduled.max(0) as u64;
            job.updated_at = OffsetDateTime::now_utc();
            if finished {
                job.status = RecoveryStatus::Completed;
            }
            let mut body = serde_json::to_value(&job).map_err(json_err)?;
            if let Some(c) = cursor {
                body["cursor"] = serde_json::Value::String(c);
            }
            conn.execute(
                "UPDATE recoveries SET body = ?2, finished = ?3 WHERE id = ?1",
                params![job.id, body.to_string(), finished],
            )
            .map_err(db_err)?;
            if finished {
                conn.execute("DELETE FROM recovery_leases WHERE id = ?1", [&job.id])
                    .map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }
}
