//! Deleting a tenant: a durable `deleting` mark first, then its rows purged
//! step by step, then a `deleted` mark. Every step is idempotent, so a
//! deletion interrupted by a crash is finished by running it again (the
//! engine does so at start for every tenant left [`TenantState::Deleting`]).

use async_trait::async_trait;

use super::StoreError;

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// In use.
    Active,
    /// Being deleted: its keys no longer authenticate, its rows are being purged.
    Deleting,
    /// Deleted: nothing of it is left but this mark (its id is not reused).
    Deleted,
}

/// Tenant deletion.
#[async_trait]
pub trait TenantPurgeStore: Send + Sync + 'static {
    /// The tenant's state; `None` if it never existed.
    async fn tenant_state(&self, tenant_id: &str) -> Result<Option<TenantState>, StoreError>;

    /// Marks an active tenant `deleting` (durably) and removes its API keys,
    /// so none authenticates from the moment this returns; a tenant already
    /// deleting or deleted is left as it is. Returns the state before the
    /// call, `None` if there is no such tenant.
    async fn begin_tenant_deletion(
        &self,
        tenant_id: &str,
    ) -> Result<Option<TenantState>, StoreError>;

    /// Deletes rows of a tenant being deleted: API keys, subscriptions and
    /// their pending deliveries first, then events, dedupe claims, delivery
    /// logs, event types, recovery jobs and audit records. Returns how many
    /// rows it deleted (about `limit` at most where the store can bound it);
    /// 0 once nothing is left.
    async fn purge_tenant(&self, tenant_id: &str, limit: usize) -> Result<usize, StoreError>;

    /// Marks a tenant `deleted` (and drops its quotas).
    async fn finish_tenant_deletion(&self, tenant_id: &str) -> Result<(), StoreError>;

    /// Tenants left `deleting` (by a crash, or a failed purge).
    async fn tenants_deleting(&self) -> Result<Vec<String>, StoreError>;

    /// Every tenant `deleting` or `deleted`: events for them are refused
    /// wherever they come from (the CDC relay, a fan-out). Beginning a
    /// deletion moves the subscriptions version, so processes that follow
    /// the store re-read this list when it moves.
    async fn tenants_gone(&self) -> Result<Vec<String>, StoreError>;
}
