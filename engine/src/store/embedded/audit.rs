//! The audit trail in SQLite. A change's record is inserted by the method
//! that makes the change, inside the same writer transaction ([`insert`]),
//! so there is never a change without its record; old records are pruned
//! in small batches.

use async_trait::async_trait;
use rusqlite::{params, types::Value, Connection};

use super::{db_err, json_err, EmbeddedStore};
use crate::{
    audit::{AuditFilter, AuditRecord},
    store::{AuditStore, StoreError},
};

/// Inserts `record` in the current transaction.
pub(super) fn insert(conn: &Connection, record: &AuditRecord) -> Result<(), StoreError> {
    let body = serde_json::to_string(record).map_err(json_err)?;
    conn.prepare_cached(
        "INSERT INTO audit (tenant_id, id, at_ms, action, subscription_id, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            record.tenant_id,
            record.id,
            record.at_ms(),
            record.action,
            record.subscription_id,
            body
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// Inserts the pending record, if any, in the current transaction.
pub(super) fn insert_pending(
    conn: &Connection,
    record: &Option<AuditRecord>,
) -> Result<(), StoreError> {
    match record {
        Some(r) => insert(conn, r),
        None => Ok(()),
    }
}

#[async_trait]
impl AuditStore for EmbeddedStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.write(move |conn| insert(conn, &record)).await
    }

    async fn list_audit(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = String::from("SELECT body FROM audit WHERE tenant_id = ?");
        let mut args = vec![Value::from(tenant_id.to_string())];
        let mut clause = |cond: &str, v: Value| {
            sql.push_str(cond);
            args.push(v);
        };
        if let Some(b) = before {
            clause(" AND id < ?", Value::from(b.to_string()));
        }
        if let Some(a) = &filter.action {
            clause(" AND action = ?", Value::from(a.clone()));
        }
        if let Some(s) = &filter.subscription_id {
            clause(" AND subscription_id = ?", Value::from(s.clone()));
        }
        if let Some(t) = filter.since_ms {
            clause(" AND at_ms >= ?", Value::from(t));
        }
        if let Some(t) = filter.until_ms {
            clause(" AND at_ms < ?", Value::from(t));
        }
        clause(" ORDER BY id DESC LIMIT ?", Value::from(limit as i64));
        self.read(move |conn| {
            let mut st = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|body| {
                let body = body.map_err(db_err)?;
                serde_json::from_str(&body).map_err(json_err)
            })
            .collect()
        })
        .await
    }

    async fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM audit WHERE (tenant_id, id) IN \
                 (SELECT tenant_id, id FROM audit WHERE at_ms < ?1 LIMIT ?2)",
                params![before_ms, limit as i64],
            )
            .map_err(db_err)
        })
        .await
    }
}
