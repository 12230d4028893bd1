//! Recovery jobs in SQLite: the job, the deliveries it scheduled (to count
//! what is done) and the lease on stepping it.

use async_trait::async_trait;
use rusqlite::{params, types::Value, OptionalExtension};
use time::OffsetDateTime;

use super::{db_err, decode, json_err, schedule::insert_schedule, EmbeddedStore};
use crate::{
    model::ScheduledDelivery,
    resources::{RecoveryCandidate, RecoveryJob, RecoveryStatus},
    store::{RecoveryScope, RecoveryStore, StoreError},
};

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

#[async_trait]
impl RecoveryStore for EmbeddedStore {
    async fn create_recovery(&self, job: &RecoveryJob) -> Result<(), StoreError> {
        let body = serde_json::to_string(job).map_err(json_err)?;
        let (id, tenant) = (job.id.clone(), job.tenant_id.clone());
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO recoveries (id, tenant_id, finished, body) VALUES (?1, ?2, 0, ?3)",
                params![id, tenant, body],
            )
            .map_err(db_err)?;
            super::audit::insert_pending(conn, &audit)
        })
        .await
    }

    async fn get_recovery(
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

    async fn unfinished_recoveries(
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

    async fn lease_recovery(
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

    async fn count_recovery_candidates(&self, scope: &RecoveryScope) -> Result<u64, StoreError> {
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

    async fn recovery_candidates(
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

    async fn advance_recovery(
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
