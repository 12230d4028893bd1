//! The tenants this process knows to be deleted or being deleted. Events
//! for them are refused wherever they enter — the CDC relay dead-letters
//! them, fan-out drops them unindexed — so a deleted tenant's rows never
//! come back after its purge (an outbox row written before the deletion
//! and relayed after it, an emit that raced the `DELETE`).
//!
//! The list is read from the store at start, grows at once when this
//! process deletes a tenant, and is re-read when the store's subscriptions
//! version moves (beginning a deletion moves it), which the processes that
//! share a store check every half second.

use std::collections::HashSet;

use parking_lot::{Mutex, RwLock};

use crate::store::Store;

/// Tenants deleted or being deleted (see the module doc).
#[derive(Debug, Default)]
pub struct GoneTenants {
    tenants: RwLock<HashSet<String>>,
    /// The subscriptions version the list was read at.
    version: Mutex<Option<u64>>,
}

impl GoneTenants {
    /// Whether `tenant_id` is deleted or being deleted.
    pub fn contains(&self, tenant_id: &str) -> bool {
        let tenants = self.tenants.read();
        !tenants.is_empty() && tenants.contains(tenant_id)
    }

    /// Adds a tenant this process is deleting.
    pub fn insert(&self, tenant_id: &str) {
        self.tenants.write().insert(tenant_id.to_string());
    }

    /// Re-reads the list when the store's subscriptions version moved since
    /// the last read (always, the first time). Failures are logged; the
    /// list stays as it was.
    pub async fn refresh(&self, store: &dyn Store) {
        let version = match store.subscriptions_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the store for deleted tenants");
                return;
            }
        };
        if *self.version.lock() == Some(version) {
            return;
        }
        // Read after the version: the list is at least that recent.
        match store.tenants_gone().await {
            Ok(gone) => {
                let mut tenants = self.tenants.write();
                // A tenant only ever leaves by being deleted: keep what this
                // process added since.
                tenants.extend(gone);
                *self.version.lock() = Some(version);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the deleted tenants"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_added_is_gone_and_the_others_are_not() {
        let gone = GoneTenants::default();
        assert!(!gone.contains("acme"));
        gone.insert("acme");
        assert!(gone.contains("acme"));
        assert!(!gone.contains("globex"));
    }
}
