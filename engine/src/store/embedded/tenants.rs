//! Tenants and API keys in SQLite (keys as their SHA-256 hashes).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::{audit::insert_pending, db_err, EmbeddedStore};
use crate::{
    resources::{ApiKey, KeyGrant, Scope, TenantQuotas},
    store::{StoreError, TenantStore},
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
        scopes: Scope::split(r.get::<_, Option<String>>(6)?.as_deref()),
        expires_at: r.get::<_, Option<i64>>(7)?.map(ms_to_time),
    })
}

const KEY_COLUMNS: &str = "id, tenant_id, name, prefix, created_at, revoked_at, scopes, expires_at";

fn insert_key(conn: &Connection, key: &ApiKey, hash: [u8; 32]) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO api_keys (hash, tenant_id, created_at, id, name, prefix, scopes, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            hash.as_slice(),
            key.tenant_id,
            time_to_ms(key.created_at),
            key.id,
            key.name,
            key.prefix,
            Scope::join(&key.scopes),
            key.expires_at.map(time_to_ms),
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl TenantStore for EmbeddedStore {
    async fn create_tenant(
        &self,
        tenant_id: &str,
        first_key: &ApiKey,
        key_hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let tenant = tenant_id.to_string();
        let key = first_key.clone();
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO tenants (id, created_at) VALUES (?1, ?2)",
                    params![tenant, crate::clock::now_ms()],
                )
                .map_err(db_err)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "tenant {tenant:?} already exists"
                )));
            }
            insert_key(conn, &key, key_hash)?;
            insert_pending(conn, &audit)
        })
        .await
    }

    async fn grant_for_key(&self, key_hash: [u8; 32]) -> Result<Option<KeyGrant>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT tenant_id, id, scopes, expires_at FROM api_keys \
                 WHERE hash = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut st| {
                st.query_row([key_hash.as_slice()], |r| {
                    Ok(KeyGrant {
                        tenant_id: r.get(0)?,
                        key_id: r.get(1)?,
                        scopes: Scope::split(r.get::<_, Option<String>>(2)?.as_deref()),
                        expires_at_ms: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(db_err)
        })
        .await
    }

    async fn tenant_quotas(&self, tenant_id: &str) -> Result<Option<TenantQuotas>, StoreError> {
        let tenant = tenant_id.to_string();
        let row: Option<Option<String>> = self
            .read(move |conn| {
                conn.query_row(
                    "SELECT quotas FROM tenants WHERE id = ?1 AND state IS NULL",
                    [tenant],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)
            })
            .await?;
        row.map(|json| {
            json.map_or(Ok(TenantQuotas::default()), |j| {
                serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
        })
        .transpose()
    }

    async fn set_tenant_quotas(
        &self,
        tenant_id: &str,
        quotas: &TenantQuotas,
    ) -> Result<(), StoreError> {
        let tenant = tenant_id.to_string();
        let json = serde_json::to_string(quotas).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE tenants SET quotas = ?1 WHERE id = ?2 AND state IS NULL",
                    params![json, tenant],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::NotFound("tenant"));
            }
            insert_pending(conn, &audit)
        })
        .await
    }

    async fn tenant_exists(&self, tenant_id: &str) -> Result<bool, StoreError> {
        let tenant = tenant_id.to_string();
        self.read(move |conn| {
            conn.query_row(
                "SELECT 1 FROM tenants WHERE id = ?1 AND state IS NULL",
                [tenant],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(db_err)
        })
        .await
    }

    async fn create_api_key(&self, key: &ApiKey, hash: [u8; 32]) -> Result<(), StoreError> {
        let key = key.clone();
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let exists = conn
                .query_row(
                    "SELECT 1 FROM tenants WHERE id = ?1 AND state IS NULL",
                    [&key.tenant_id],
                    |_| Ok(()),
                )
                .optional()
                .map_err(db_err)?;
            if exists.is_none() {
                return Err(StoreError::NotFound("tenant"));
            }
            insert_key(conn, &key, hash)?;
            insert_pending(conn, &audit)
        })
        .await
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
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

    async fn revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (tenant, id) = (tenant_id.to_string(), key_id.to_string());
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let revoked = conn.execute(
                "UPDATE api_keys SET revoked_at = ?3 WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![tenant, id, at_ms],
            )
            .map_err(db_err)?;
            if revoked > 0 {
                insert_pending(conn, &audit)?;
            }
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
}
