//! Tenants and the API keys that authenticate them.
//!
//! A key's grant is read through a cache that keeps it for [`KEY_CACHE_FOR`]:
//! every API request authenticates, and a store read per request was the
//! largest single cost of a single emit after the HTTP work. A key revoked
//! (or a tenant deleted) through this process stops authenticating at once;
//! through another process sharing the store, within [`KEY_CACHE_FOR`].
//! Only live keys are kept: an unknown key is looked up every time.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

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
        let hash = hash_key(api_key);
        if let Some(grant) = self.keys.fresh(&hash) {
            return Ok(Some(grant));
        }
        let generation = self.keys.generation();
        let grant = self.store.grant_for_key(hash).await?;
        if let Some(grant) = &grant {
            self.keys.put(hash, grant.clone(), generation);
        }
        Ok(grant)
    }
}

/// How long a key's grant is used without reading the store again.
pub const KEY_CACHE_FOR: Duration = Duration::from_secs(1);

/// Grants cached at most; past it the cache starts over.
const KEY_CACHE_MAX: usize = 10_000;

/// The grants of live keys seen lately, by key hash.
#[derive(Default)]
pub(super) struct KeyCache {
    inner: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    grants: HashMap<[u8; 32], (KeyGrant, Instant)>,
    /// Moves at every [`KeyCache::forget_all`], so a grant read before a
    /// revocation is not cached after it.
    generation: u64,
}

impl KeyCache {
    fn fresh(&self, hash: &[u8; 32]) -> Option<KeyGrant> {
        let keys = self.inner.lock();
        let (grant, read_at) = keys.grants.get(hash)?;
        (read_at.elapsed() < KEY_CACHE_FOR).then(|| grant.clone())
    }

    fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    fn put(&self, hash: [u8; 32], grant: KeyGrant, generation: u64) {
        let mut keys = self.inner.lock();
        if keys.generation != generation {
            return;
        }
        if keys.grants.len() >= KEY_CACHE_MAX {
            keys.grants.clear();
        }
        keys.grants.insert(hash, (grant, Instant::now()));
    }

    /// Forgets every grant (a key revoked, a tenant deleted).
    pub(super) fn forget_all(&self) {
        let mut keys = self.inner.lock();
        keys.grants.clear();
        keys.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(tenant: &str) -> KeyGrant {
        KeyGrant {
            tenant_id: tenant.into(),
            key_id: "key_1".into(),
            scopes: Vec::new(),
            expires_at_ms: None,
        }
    }

    #[test]
    fn a_grant_is_kept_until_forgotten_and_one_read_before_a_revocation_is_not_kept() {
        let cache = KeyCache::default();
        let generation = cache.generation();
        cache.put([1; 32], grant("acme"), generation);
        assert_eq!(cache.fresh(&[1; 32]), Some(grant("acme")));
        assert_eq!(cache.fresh(&[2; 32]), None);
        // A lookup begins, a revocation lands, the lookup ends.
        let before = cache.generation();
        cache.forget_all();
        assert_eq!(cache.fresh(&[1; 32]), None, "forgotten");
        cache.put([1; 32], grant("acme"), before);
        assert_eq!(cache.fresh(&[1; 32]), None, "read before the revocation");
        cache.put([1; 32], grant("acme"), cache.generation());
        assert!(cache.fresh(&[1; 32]).is_some());
    }

    #[test]
    fn a_grant_is_read_again_after_its_time() {
        let cache = KeyCache::default();
        cache.put([1; 32], grant("acme"), cache.generation());
        cache.inner.lock().grants.get_mut(&[1; 32]).unwrap().1 -= KEY_CACHE_FOR;
        assert_eq!(cache.fresh(&[1; 32]), None);
    }
}
