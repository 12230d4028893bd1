//! The audit trail: append-only records of configuration changes.
//!
//! Records of changes are written by the store methods that make them (the
//! pending record of [`crate::audit`]); [`append_audit`](AuditStore::append_audit)
//! writes one on its own.

use async_trait::async_trait;

use super::StoreError;
use crate::audit::{AuditFilter, AuditRecord};

/// Audit records.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends one record.
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;

    /// Up to `limit` of a tenant's records that pass `filter`, newest
    /// first, with ids before `before`.
    async fn list_audit(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Deletes up to `limit` records older than `before_ms`; how many it
    /// deleted (a store whose records expire by themselves deletes none).
    async fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError>;
}
