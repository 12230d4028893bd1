//! The audit trail in CQL, a partition per tenant and day, newest first,
//! each row with a TTL of the audit retention.
//!
//! A lightweight transaction cannot span two tables, so a change's record
//! is written **ahead** of the change ([`ScyllaStore::audited`]) and
//! withdrawn (deleted) if the change is then refused (its condition failed,
//! nothing to change). A crash between the two can leave a record of a
//! change that did not happen, never a change without its record; a change
//! whose outcome is unknown (a timeout) keeps its record.

use async_trait::async_trait;

use super::{day_of_ms, ScyllaStore};
use crate::{
    audit::{AuditFilter, AuditRecord},
    store::{AuditStore, StoreError},
};

impl ScyllaStore {
    /// Writes `record` (write-ahead: before the change it describes).
    pub(super) async fn audit_ahead(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO audit_log (tenant_id, day, id, action, subscription_id, body) \
             VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
            (
                &record.tenant_id,
                day_of_ms(record.at_ms()),
                &record.id,
                &record.action,
                &record.subscription_id,
                super::encode(record)?,
                self.audit_ttl,
            ),
        )
        .await
    }

    /// Deletes a record written ahead of a change that was refused.
    pub(super) async fn audit_withdraw(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM audit_log WHERE tenant_id = ? AND day = ? AND id = ?",
            (&record.tenant_id, day_of_ms(record.at_ms()), &record.id),
        )
        .await
    }

    /// Runs `change` with `record` (if any) written ahead of it; withdraws
    /// the record if the change is refused: it returned a value `made`
    /// rejects, or `NotFound` or `Conflict`.
    pub(super) async fn audited<T>(
        &self,
        record: Option<AuditRecord>,
        change: impl std::future::Future<Output = Result<T, StoreError>>,
        made: impl FnOnce(&T) -> bool,
    ) -> Result<T, StoreError> {
        let Some(record) = record else {
            return change.await;
        };
        self.audit_ahead(&record).await?;
        let out = change.await;
        let refused = match &out {
            Ok(v) => !made(v),
            Err(StoreError::NotFound(_) | StoreError::Conflict(_)) => true,
            Err(_) => false,
        };
        if refused {
            self.audit_withdraw(&record).await?;
        }
        out
    }
}

#[async_trait]
impl AuditStore for ScyllaStore {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.audit_ahead(record).await
    }

    async fn list_audit(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let now = crate::clock::now_ms();
        let newest = day_of_ms(filter.until_ms.unwrap_or(now).min(now));
        let horizon = day_of_ms(now) - self.audit_ttl / 86_400 - 1;
        let oldest = filter
            .since_ms
            .map_or(horizon, |s| day_of_ms(s).max(horizon));
        let in_time = |id: &str| {
            let Some(ms) = super::id_ms(id) else {
                return false;
            };
            filter.since_ms.is_none_or(|s| ms >= s) && filter.until_ms.is_none_or(|u| ms < u)
        };
        let rows = self
            .walk_days_between(
                "SELECT id, action, subscription_id, body FROM audit_log \
                 WHERE tenant_id = ? AND day = ? AND id < ? LIMIT ?",
                &[tenant_id],
                before,
                limit,
                (newest, oldest),
                |id, action, sub| {
                    in_time(id)
                        && filter.action.as_deref().is_none_or(|a| a == action)
                        && filter.subscription_id.as_deref().is_none_or(|s| s == sub)
                },
            )
            .await?;
        rows.iter()
            .filter_map(|(_, body)| body.as_deref())
            .map(super::decode)
            .collect()
    }

    async fn prune_audit(&self, _before_ms: i64, _limit: usize) -> Result<usize, StoreError> {
        // Rows expire by their TTL.
        Ok(0)
    }
}
