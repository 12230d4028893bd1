//! Deleting a tenant (issue #20): the store marks it `deleting` and removes
//! its API keys in one step, so from then on no key of it authenticates;
//! its subscriptions leave the matching index (fan-out stops at once) and
//! its rows are purged in batches, its pending deliveries before anything a
//! worker could record; then it is marked `deleted`. Every step is
//! idempotent: a deletion that fails half-way is finished by the next
//! `DELETE`, or at the next start ([`resume`]).

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::{
    audit::{action, AuditRecord, OPERATOR_TRAIL},
    catalogue::Catalogue,
    delivery::worker::Shards,
    error::EngineError,
    store::{Store, TenantState},
    subscriptions::SubscriptionIndex,
};

/// Rows deleted per purge step.
const PURGE_BATCH: usize = 1000;

impl Engine {
    /// Deletes a tenant and everything it owns; `NotFound` if it never
    /// existed. Returns once nothing of it is left; deleting a deleted
    /// tenant changes nothing.
    pub async fn delete_tenant(&self, tenant_id: &str) -> Result<(), EngineError> {
        let state = self.store.tenant_state(tenant_id).await?;
        if state == Some(TenantState::Active) {
            // Written ahead, so there is no deletion without its record
            // (a deletion that then fails keeps it: it was requested).
            let record = AuditRecord::new(OPERATOR_TRAIL, action::TENANT_DELETED).target(tenant_id);
            self.store.append_audit(&record).await?;
        }
        let before = self
            .store
            .begin_tenant_deletion(tenant_id)
            .await?
            .ok_or(EngineError::NotFound("tenant"))?;
        self.gone.insert(tenant_id);
        self.keys.forget_all();
        if before == TenantState::Deleted {
            return Ok(());
        }
        purge(
            self.store.as_ref(),
            &self.subscriptions,
            &self.catalogue,
            self.shards.as_deref(),
            tenant_id,
        )
        .await?;
        self.quotas.forget(tenant_id);
        Ok(())
    }

    /// Where a tenant is in its life; `None` if it never existed.
    pub async fn tenant_state(&self, tenant_id: &str) -> Result<Option<TenantState>, EngineError> {
        Ok(self.store.tenant_state(tenant_id).await?)
    }
}

/// How long a deletion waits for the attempts this process had under way
/// when it started (an attempt's own timeout bounds them).
const DRAIN_FOR: Duration = Duration::from_secs(60);

/// Deletes the tenant's rows until none is left.
async fn purge_rows(
    store: &dyn Store,
    index: &SubscriptionIndex,
    tenant_id: &str,
) -> Result<(), EngineError> {
    loop {
        let deleted = store.purge_tenant(tenant_id, PURGE_BATCH).await?;
        // A reload from the store between two steps may have brought some back.
        index.remove_tenant(tenant_id);
        if deleted == 0 {
            return Ok(());
        }
    }
}

/// Purges a tenant marked `deleting`, then marks it `deleted`. Deliveries
/// this process's shards held when its subscriptions left the index may
/// still record an attempt (or, dropped as orphans, a dead record): the
/// purge waits for them to finish, then runs once more.
async fn purge(
    store: &dyn Store,
    index: &SubscriptionIndex,
    catalogue: &Catalogue,
    shards: Option<&Shards>,
    tenant_id: &str,
) -> Result<(), EngineError> {
    index.remove_tenant(tenant_id);
    let held = shards.map(Shards::held_ids).unwrap_or_default();
    purge_rows(store, index, tenant_id).await?;
    if let Some(shards) = shards {
        let deadline = tokio::time::Instant::now() + DRAIN_FOR;
        while shards.holds_any(&held) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        purge_rows(store, index, tenant_id).await?;
    }
    catalogue.forget_tenant(tenant_id);
    store.finish_tenant_deletion(tenant_id).await?;
    tracing::info!(tenant_id, "tenant deleted");
    Ok(())
}

/// At start: finishes the deletion of every tenant a previous run left
/// `deleting` (a crash, a failed purge).
pub(super) async fn resume(
    store: Arc<dyn Store>,
    index: Arc<SubscriptionIndex>,
    catalogue: Arc<Catalogue>,
    shards: Option<Arc<Shards>>,
    cancel: CancellationToken,
) {
    let tenants = match store.tenants_deleting().await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot list tenants left deleting; they finish on their next DELETE");
            return;
        }
    };
    for tenant in tenants {
        if cancel.is_cancelled() {
            return;
        }
        tracing::info!(tenant_id = %tenant, "finishing a tenant deletion left by a previous run");
        if let Err(e) = purge(
            store.as_ref(),
            &index,
            &catalogue,
            shards.as_deref(),
            &tenant,
        )
        .await
        {
            tracing::error!(tenant_id = %tenant, error = %e, "tenant deletion failed; it finishes on its next DELETE or start");
        }
    }
}
