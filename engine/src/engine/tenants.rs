//! Tenants and the API keys that authenticate them.

use crate::audit::{self, action, AuditRecord};
use crate::{
    error::EngineError,
    input::{hash_key, validate_tenant_id},
    resources::KeyGrant,
};

use super::{manage, Engine};

impl Engine {
    /// Creates a tenant and returns its first API key (shown once; stored hashed).
    pub async fn create_tenant(&self, tenant_id: &str) -> Result<String, EngineError> {
        validate_tenant_id(tenant_id)?;
        let (record, key) = manage::new_key(tenant_id, Some("initial".into()));
        // The tenant's first key is its first audit record.
        let audited = AuditRecord::new(tenant_id, action::API_KEY_CREATED)
            .target(&record.id)
            .detail("initial", true);
        let create = self.store.create_tenant(tenant_id, &record, hash_key(&key));
        audit::recorded(audited, create).await?;
        tracing::info!(tenant_id, "tenant created");
        Ok(key)
    }

    /// The tenant, scopes and expiry of an API key; `None` for an unknown
    /// or revoked key. An expired key is returned (see
    /// [`KeyGrant::expired_at`]): the caller tells it apart.
    pub async fn authenticate(&self, api_key: &str) -> Result<Option<KeyGrant>, EngineError> {
        if api_key.is_empty() || api_key.len() > 256 {
            return Ok(None);
        }
        Ok(self.store.grant_for_key(hash_key(api_key)).await?)
    }
}
