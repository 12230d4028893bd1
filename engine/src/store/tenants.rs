//! Tenants and their API keys (stored as SHA-256 hashes, never the keys).

use async_trait::async_trait;

use super::StoreError;
use crate::resources::{ApiKey, KeyGrant, TenantQuotas};

/// Tenants and API keys.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Creates a tenant with its first API key (stored as a SHA-256 hash).
    /// `Conflict` if the tenant exists.
    async fn create_tenant(
        &self,
        tenant_id: &str,
        first_key: &ApiKey,
        key_hash: [u8; 32],
    ) -> Result<(), StoreError>;

    /// Whether the tenant exists.
    async fn tenant_exists(&self, tenant_id: &str) -> Result<bool, StoreError>;

    /// The tenant, id, scopes and expiry of the key with this hash, unless
    /// it is revoked (an expired key is returned: the caller answers it
    /// apart). A key stored before keys had scopes has full access.
    async fn grant_for_key(&self, key_hash: [u8; 32]) -> Result<Option<KeyGrant>, StoreError>;

    /// Adds an API key (stored as its SHA-256 hash) to an existing tenant;
    /// `NotFound` if there is no such tenant.
    async fn create_api_key(&self, key: &ApiKey, key_hash: [u8; 32]) -> Result<(), StoreError>;

    /// A tenant's API keys (without the keys), in id order (oldest first).
    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes a key of a tenant at `at_ms`; `None` if there is no such key.
    /// From the moment this returns the key no longer authenticates.
    async fn revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<Option<ApiKey>, StoreError>;

    /// A tenant's quotas (none set: the default, no limits); `None` if
    /// there is no such tenant.
    async fn tenant_quotas(&self, tenant_id: &str) -> Result<Option<TenantQuotas>, StoreError>;

    /// Replaces a tenant's quotas; `NotFound` if there is no such tenant.
    async fn set_tenant_quotas(
        &self,
        tenant_id: &str,
        quotas: &TenantQuotas,
    ) -> Result<(), StoreError>;
}
