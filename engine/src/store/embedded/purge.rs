//! Tenant deletion in SQLite: the `deleting` mark and the removal of the
//! keys share one transaction; the purge then deletes the tenant's rows in
//! batches of its own transactions, each idempotent.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{db_err, subscriptions::bump_version, EmbeddedStore};
use crate::store::{StoreError, TenantPurgeStore, TenantState};

fn state_of(raw: Option<String>) -> TenantState {
    match raw.as_deref() {
        None => TenantState::Active,
        Some("deleted") => TenantState::Deleted,
        Some(_) => TenantState::Deleting,
    }
}

fn read_state(conn: &Connection, tenant: &str) -> Result<Option<TenantState>, StoreError> {
    conn.query_row("SELECT state FROM tenants WHERE id = ?1", [tenant], |r| {
        r.get::<_, Option<String>>(0)
    })
    .optional()
    .map(|row| row.map(state_of))
    .map_err(db_err)
}

/// Deletes up to `limit` rows of `table` whose `tenant_id` is `tenant`,
/// picked by the column `key` (unique within a tenant).
fn delete_some(
    conn: &Connection,
    table: &str,
    key: &str,
    tenant: &str,
    limit: usize,
) -> Result<usize, StoreError> {
    conn.prepare_cached(&format!(
        "DELETE FROM {table} WHERE tenant_id = ?1 AND {key} IN \
         (SELECT {key} FROM {table} WHERE tenant_id = ?1 LIMIT ?2)"
    ))
    .and_then(|mut st| st.execute(params![tenant, limit as i64]))
    .map_err(db_err)
}

/// The ids of the tenants whose row passes `condition`, in order.
fn tenant_ids(conn: &Connection, condition: &str) -> Result<Vec<String>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT id FROM tenants WHERE {condition} ORDER BY id"
        ))
        .map_err(db_err)?;
    let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
    rows.collect::<Result<Vec<String>, _>>().map_err(db_err)
}

#[async_trait]
impl TenantPurgeStore for EmbeddedStore {
    async fn tenant_state(&self, tenant_id: &str) -> Result<Option<TenantState>, StoreError> {
        let tenant = tenant_id.to_string();
        self.read(move |conn| read_state(conn, &tenant)).await
    }

    async fn begin_tenant_deletion(
        &self,
        tenant_id: &str,
    ) -> Result<Option<TenantState>, StoreError> {
        let tenant = tenant_id.to_string();
        self.write(move |conn| {
            let before = read_state(conn, &tenant)?;
            if before == Some(TenantState::Active) {
                conn.execute(
                    "UPDATE tenants SET state = 'deleting' WHERE id = ?1",
                    [&tenant],
                )
                .map_err(db_err)?;
                conn.execute("DELETE FROM api_keys WHERE tenant_id = ?1", [&tenant])
                    .map_err(db_err)?;
                // Followers re-read the tenants gone (see `tenants_gone`).
                bump_version(conn)?;
            }
            Ok(before)
        })
        .await
    }

    async fn purge_tenant(&self, tenant_id: &str, limit: usize) -> Result<usize, StoreError> {
        let tenant = tenant_id.to_string();
        let limit = limit.max(1);
        self.write(move |conn| {
            let mut deleted = conn
                .execute("DELETE FROM api_keys WHERE tenant_id = ?1", [&tenant])
                .map_err(db_err)?;
            let subs = conn
                .execute("DELETE FROM subscriptions WHERE tenant_id = ?1", [&tenant])
                .map_err(db_err)?;
            if subs > 0 {
                bump_version(conn)?;
            }
            deleted += subs;
            // Pending deliveries go before anything a worker could record.
            deleted += delete_some(conn, "schedule", "delivery_id", &tenant, limit)?;
            for (table, key) in [
                ("events", "id"),
                ("dedupe", "dedupe_key"),
                ("delivery_logs", "id"),
                ("audit", "id"),
            ] {
                if deleted >= limit {
                    break;
                }
                deleted += delete_some(conn, table, key, &tenant, limit - deleted)?;
            }
            deleted += conn
                .execute("DELETE FROM event_types WHERE tenant_id = ?1", [&tenant])
                .map_err(db_err)?;
            for sql in [
                "DELETE FROM recovery_deliveries WHERE recovery_id IN (SELECT id FROM recoveries WHERE tenant_id = ?1)",
                "DELETE FROM recovery_leases WHERE id IN (SELECT id FROM recoveries WHERE tenant_id = ?1)",
                "DELETE FROM recoveries WHERE tenant_id = ?1",
            ] {
                deleted += conn.execute(sql, [&tenant]).map_err(db_err)?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn finish_tenant_deletion(&self, tenant_id: &str) -> Result<(), StoreError> {
        // Crypto-shredding: the subscriptions are purged; the key that
        // sealed their secrets goes before the tenant is marked deleted, so
        // a crash in between deletes it again on the resumed deletion.
        self.key_file.delete(self.codec.keys(), tenant_id)?;
        let tenant = tenant_id.to_string();
        self.write(move |conn| {
            conn.execute(
                "UPDATE tenants SET state = 'deleted', quotas = NULL WHERE id = ?1",
                [&tenant],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn tenants_deleting(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| tenant_ids(conn, "state = 'deleting'"))
            .await
    }

    async fn tenants_gone(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| tenant_ids(conn, "state IS NOT NULL"))
            .await
    }
}
