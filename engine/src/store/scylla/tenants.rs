//! Tenants and API keys. Keys are found by the SHA-256 hash of the key
//! (`api_keys`, the authentication path: one partition read) and listed by
//! tenant (`api_keys_by_tenant`). A tenant is created with `IF NOT EXISTS`,
//! so two concurrent creations cannot both succeed.

use async_trait::async_trait;

use super::{decode, encode, ScyllaStore};
use crate::{
    clock::now_ms,
    resources::{ApiKey, KeyGrant, Scope, TenantQuotas},
    store::{StoreError, TenantStore},
};

impl ScyllaStore {
    /// Writes a key: its listing row, then its authentication row.
    async fn insert_key(&self, key: &ApiKey, key_hash: [u8; 32]) -> Result<(), StoreError> {
        // The listing row first: a key that authenticates is always listed (and revocable).
        self.exec(
            "INSERT INTO api_keys_by_tenant (tenant_id, key_id, key_hash, body) VALUES (?, ?, ?, ?)",
            (&key.tenant_id, &key.id, key_hash.to_vec(), encode(key)?),
        )
        .await?;
        let expires_at_ms = key
            .expires_at
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64);
        self.exec(
            "INSERT INTO api_keys (key_hash, tenant_id, key_id, scopes, expires_at) VALUES (?, ?, ?, ?, ?)",
            (
                key_hash.to_vec(),
                &key.tenant_id,
                &key.id,
                Scope::join(&key.scopes),
                expires_at_ms,
            ),
        )
        .await
    }
}

#[async_trait]
impl TenantStore for ScyllaStore {
    async fn create_tenant(
        &self,
        tenant_id: &str,
        first_key: &ApiKey,
        key_hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let create = async {
            let (applied, _) = self
                .lwt(
                    "INSERT INTO tenants (tenant_id, created_at) VALUES (?, ?) IF NOT EXISTS",
                    (tenant_id, now_ms()),
                )
                .await?;
            if !applied {
                return Err(StoreError::Conflict(format!(
                    "tenant {tenant_id:?} already exists"
                )));
            }
            Ok(())
        };
        self.audited(crate::audit::take_pending(), create, |_| true)
            .await?;
        self.insert_key(first_key, key_hash).await
    }

    async fn tenant_quotas(&self, tenant_id: &str) -> Result<Option<TenantQuotas>, StoreError> {
        let row: Option<(Option<String>, Option<String>)> = self
            .row(
                "SELECT quotas, state FROM tenants WHERE tenant_id = ?",
                (tenant_id,),
            )
            .await?;
        row.filter(|(_, state)| state.is_none())
            .map(|(json, _)| json.map_or(Ok(TenantQuotas::default()), |j| decode(&j)))
            .transpose()
    }

    async fn set_tenant_quotas(
        &self,
        tenant_id: &str,
        quotas: &TenantQuotas,
    ) -> Result<(), StoreError> {
        // A conditional update, so that it never creates a tenant row.
        let body = encode(quotas)?;
        let change = async {
            if !self.tenant_exists(tenant_id).await? {
                return Err(StoreError::NotFound("tenant"));
            }
            let (applied, _) = self
                .lwt(
                    "UPDATE tenants SET quotas = ? WHERE tenant_id = ? IF EXISTS",
                    (body, tenant_id),
                )
                .await?;
            if !applied {
                return Err(StoreError::NotFound("tenant"));
            }
            Ok(())
        };
        self.audited(crate::audit::take_pending(), change, |_| true)
            .await
    }

    async fn tenant_exists(&self, tenant_id: &str) -> Result<bool, StoreError> {
        let row: Option<(String, Option<String>)> = self
            .row(
                "SELECT tenant_id, state FROM tenants WHERE tenant_id = ?",
                (tenant_id,),
            )
            .await?;
        Ok(row.is_some_and(|(_, state)| state.is_none()))
    }

    async fn grant_for_key(&self, key_hash: [u8; 32]) -> Result<Option<KeyGrant>, StoreError> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        let row: Option<Row> = self
            .row(
                "SELECT tenant_id, key_id, revoked_at, scopes, expires_at FROM api_keys WHERE key_hash = ?",
                (key_hash.to_vec(),),
            )
            .await?;
        Ok(match row {
            Some((Some(tenant_id), key_id, None, scopes, expires_at_ms)) => Some(KeyGrant {
                tenant_id,
                key_id: key_id.unwrap_or_default(),
                // Null: a key written before keys had scopes (full access).
                scopes: Scope::split(scopes.as_deref()),
                expires_at_ms,
            }),
            _ => None,
        })
    }

    async fn create_api_key(&self, key: &ApiKey, key_hash: [u8; 32]) -> Result<(), StoreError> {
        let audit = crate::audit::take_pending();
        if !self.tenant_exists(&key.tenant_id).await? {
            return Err(StoreError::NotFound("tenant"));
        }
        self.audited(audit, self.insert_key(key, key_hash), |_| true)
            .await
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys = Vec::new();
        self.scan(
            "SELECT body FROM api_keys_by_tenant WHERE tenant_id = ?",
            (tenant_id,),
            |(body,): (String,)| {
                keys.push(decode(&body)?);
                Ok(())
            },
        )
        .await?;
        Ok(keys)
    }

    async fn revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<Option<ApiKey>, StoreError> {
        let audit = crate::audit::take_pending();
        let row: Option<(Vec<u8>, String)> = self
            .row(
                "SELECT key_hash, body FROM api_keys_by_tenant WHERE tenant_id = ? AND key_id = ?",
                (tenant_id, key_id),
            )
            .await?;
        let Some((hash, body)) = row else {
            return Ok(None);
        };
        let mut key: ApiKey = decode(&body)?;
        if key.revoked_at.is_none() {
            if let Some(record) = audit {
                self.audit_ahead(&record).await?;
            }
            key.revoked_at = Some(
                time::OffsetDateTime::from_unix_timestamp_nanos(at_ms as i128 * 1_000_000)
                    .map_err(super::corrupt)?,
            );
        }
        // Authentication first: from here on the key no longer works.
        self.exec(
            "UPDATE api_keys SET revoked_at = ? WHERE key_hash = ?",
            (at_ms, hash),
        )
        .await?;
        self.exec(
            "UPDATE api_keys_by_tenant SET body = ? WHERE tenant_id = ? AND key_id = ?",
            (encode(&key)?, tenant_id, key_id),
        )
        .await?;
        Ok(Some(key))
    }
}
