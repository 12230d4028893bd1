//! A store that fails, stalls or loses acknowledgements on chosen calls of
//! its write paths (`fan_out`, `record_attempt`, `record_event`,
//! `claim_due`, `release_held`); every other call goes straight through.

use std::sync::Arc;

use async_trait::async_trait;
use herald_engine::{
    audit::{AuditFilter, AuditRecord},
    log::LogPosition,
    model::{DomainEvent, ScheduledDelivery, WebhookDeliveryLog, WebhookSubscription},
    resources::{ApiKey, EventTypeSchema, RecoveryCandidate, RecoveryJob, TenantQuotas},
    store::{
        AuditStore, CatalogueStore, DeliveryLogStore, EventFilter, EventStore, FanOut,
        FanOutResult, LogFilter, RecoveryScope, RecoveryStore, ScheduleStore, Store, StoreError,
        SubscriptionChange, SubscriptionStore, TenantPurgeStore, TenantState, TenantStore,
    },
};

use super::plan::{Effect, Plan};

/// Wraps a store; `plan` says which write calls misbehave.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    plan: Arc<Plan>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>, plan: Arc<Plan>) -> Self {
        Self { inner, plan }
    }

    /// Runs `write` as `op`'s plan says.
    async fn write<T>(
        &self,
        op: &'static str,
        write: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.plan.next(op).await {
            Effect::Pass => write.await,
            Effect::Fail => Err(StoreError::Unavailable(format!("injected fault in {op}"))),
            Effect::FailAfter => {
                write.await?;
                Err(StoreError::Unavailable(format!(
                    "injected fault in {op} (after writing)"
                )))
            }
        }
    }
}

#[async_trait]
impl ScheduleStore for FaultyStore {
    async fn fan_out(
        &self,
        batch: Vec<FanOut>,
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<FanOutResult>, StoreError> {
        self.write(
            "fan_out",
            self.inner.fan_out(batch, dedupe_until_ms, now_ms),
        )
        .await
    }
    async fn schedule(&self, deliveries: Vec<ScheduledDelivery>) -> Result<(), StoreError> {
        self.inner.schedule(deliveries).await
    }
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(ScheduledDelivery, DomainEvent)>, StoreError> {
        self.write(
            "claim_due",
            self.inner.claim_due(now_ms, lease_until_ms, limit),
        )
        .await
    }
    async fn release_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.inner.release_leases(now_ms).await
    }
    async fn hold(
        &self,
        delivery: &ScheduledDelivery,
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.hold(delivery, recheck_at_ms).await
    }
    async fn hold_all(
        &self,
        deliveries: &[ScheduledDelivery],
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.hold_all(deliveries, recheck_at_ms).await
    }
    async fn release_held(
        &self,
        subscription_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.write(
            "release_held",
            self.inner.release_held(subscription_id, now_ms, limit),
        )
        .await
    }
    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.inner.next_due().await
    }
    async fn schedule_backlog(&self) -> Result<u64, StoreError> {
        self.inner.schedule_backlog().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[async_trait]
impl DeliveryLogStore for FaultyStore {
    async fn record_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError> {
        self.write("record_attempt", self.inner.record_attempt(attempt, next))
            .await
    }
    async fn log_attempt(&self, attempt: WebhookDeliveryLog) -> Result<(), StoreError> {
        self.write("log_attempt", self.inner.log_attempt(attempt))
            .await
    }
    async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryLog>, StoreError> {
        self.inner
            .list_delivery_logs(tenant_id, filter, limit)
            .await
    }
}

#[async_trait]
impl EventStore for FaultyStore {
    async fn record_event(
        &self,
        event: &DomainEvent,
        position: LogPosition,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(
            "record_event",
            self.inner.record_event(event, position, dedupe_until_ms),
        )
        .await
    }
    async fn record_events(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(
            "record_event",
            self.inner.record_events(events, dedupe_until_ms),
        )
        .await
    }
    async fn event_by_dedupe_key(
        &self,
        tenant_id: &str,
        dedupe_key: &str,
        now_ms: i64,
    ) -> Result<Option<DomainEvent>, StoreError> {
        self.inner
            .event_by_dedupe_key(tenant_id, dedupe_key, now_ms)
            .await
    }
    async fn get_event(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<DomainEvent>, StoreError> {
        self.inner.get_event(tenant_id, id).await
    }
    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        self.inner.list_events(tenant_id, filter, limit).await
    }
    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.inner.purge_expired(now_ms).await
    }

    async fn prune_before(
        &self,
        before_ms: i64,
        from: &herald_engine::store::PruneCursor,
        limit: usize,
    ) -> Result<herald_engine::store::Pruned, StoreError> {
        self.inner.prune_before(before_ms, from, limit).await
    }
}

#[async_trait]
impl TenantStore for FaultyStore {
    async fn create_tenant(
        &self,
        tenant_id: &str,
        first_key: &ApiKey,
        key_hash: [u8; 32],
    ) -> Result<(), StoreError> {
        self.inner
            .create_tenant(tenant_id, first_key, key_hash)
            .await
    }
    async fn tenant_exists(&self, tenant_id: &str) -> Result<bool, StoreError> {
        self.inner.tenant_exists(tenant_id).await
    }
    async fn grant_for_key(
        &self,
        key_hash: [u8; 32],
    ) -> Result<Option<herald_engine::resources::KeyGrant>, StoreError> {
        self.inner.grant_for_key(key_hash).await
    }
    async fn create_api_key(&self, key: &ApiKey, key_hash: [u8; 32]) -> Result<(), StoreError> {
        self.inner.create_api_key(key, key_hash).await
    }
    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        self.inner.list_api_keys(tenant_id).await
    }
    async fn revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.inner.revoke_api_key(tenant_id, key_id, at_ms).await
    }
    async fn tenant_quotas(&self, tenant_id: &str) -> Result<Option<TenantQuotas>, StoreError> {
        self.inner.tenant_quotas(tenant_id).await
    }
    async fn set_tenant_quotas(
        &self,
        tenant_id: &str,
        quotas: &TenantQuotas,
    ) -> Result<(), StoreError> {
        self.inner.set_tenant_quotas(tenant_id, quotas).await
    }
}

#[async_trait]
impl SubscriptionStore for FaultyStore {
    async fn create_subscription(&self, sub: &WebhookSubscription) -> Result<(), StoreError> {
        self.inner.create_subscription(sub).await
    }
    async fn modify_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        change: SubscriptionChange,
    ) -> Result<Option<(WebhookSubscription, bool)>, StoreError> {
        self.inner.modify_subscription(tenant_id, id, change).await
    }
    async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_subscription(tenant_id, id).await
    }
    async fn get_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError> {
        self.inner.get_subscription(tenant_id, id).await
    }
    async fn list_subscriptions(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError> {
        self.inner
            .list_subscriptions(tenant_id, before, limit)
            .await
    }
    async fn all_subscriptions(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        self.inner.all_subscriptions().await
    }
    async fn subscriptions_version(&self) -> Result<u64, StoreError> {
        self.inner.subscriptions_version().await
    }
}

#[async_trait]
impl CatalogueStore for FaultyStore {
    async fn put_event_type(&self, schema: &EventTypeSchema) -> Result<bool, StoreError> {
        self.inner.put_event_type(schema).await
    }
    async fn all_event_types(&self) -> Result<Vec<EventTypeSchema>, StoreError> {
        self.inner.all_event_types().await
    }
    async fn catalogue_version(&self) -> Result<u64, StoreError> {
        self.inner.catalogue_version().await
    }
}

#[async_trait]
impl RecoveryStore for FaultyStore {
    async fn create_recovery(&self, job: &RecoveryJob) -> Result<(), StoreError> {
        self.inner.create_recovery(job).await
    }
    async fn get_recovery(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<RecoveryJob>, StoreError> {
        self.inner.get_recovery(tenant_id, id).await
    }
    async fn unfinished_recoveries(
        &self,
    ) -> Result<Vec<(RecoveryJob, Option<String>)>, StoreError> {
        self.inner.unfinished_recoveries().await
    }
    async fn lease_recovery(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.inner.lease_recovery(id, owner, now_ms, until_ms).await
    }
    async fn count_recovery_candidates(&self, scope: &RecoveryScope) -> Result<u64, StoreError> {
        self.inner.count_recovery_candidates(scope).await
    }
    async fn recovery_candidates(
        &self,
        scope: &RecoveryScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecoveryCandidate>, StoreError> {
        self.inner.recovery_candidates(scope, after, limit).await
    }
    async fn advance_recovery(
        &self,
        job: &RecoveryJob,
        deliveries: Vec<ScheduledDelivery>,
        cursor: Option<String>,
        finished: bool,
    ) -> Result<(), StoreError> {
        self.inner
            .advance_recovery(job, deliveries, cursor, finished)
            .await
    }
}

#[async_trait]
impl AuditStore for FaultyStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.inner.append_audit(record).await
    }
    async fn list_audit(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner
            .list_audit(tenant_id, filter, before, limit)
            .await
    }
    async fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        self.inner.prune_audit(before_ms, limit).await
    }
}

#[async_trait]
impl TenantPurgeStore for FaultyStore {
    async fn tenant_state(&self, tenant_id: &str) -> Result<Option<TenantState>, StoreError> {
        self.inner.tenant_state(tenant_id).await
    }
    async fn begin_tenant_deletion(
        &self,
        tenant_id: &str,
    ) -> Result<Option<TenantState>, StoreError> {
        self.inner.begin_tenant_deletion(tenant_id).await
    }
    async fn purge_tenant(&self, tenant_id: &str, limit: usize) -> Result<usize, StoreError> {
        self.inner.purge_tenant(tenant_id, limit).await
    }
    async fn finish_tenant_deletion(&self, tenant_id: &str) -> Result<(), StoreError> {
        self.inner.finish_tenant_deletion(tenant_id).await
    }
    async fn tenants_deleting(&self) -> Result<Vec<String>, StoreError> {
        self.inner.tenants_deleting().await
    }

    async fn tenants_gone(&self) -> Result<Vec<String>, StoreError> {
        self.inner.tenants_gone().await
    }
}
