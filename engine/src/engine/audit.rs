//! The audit trail's listing, and the pruning of records past the retention.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{
    query::{page_cursor, validate_cursor},
    Engine,
};
use crate::{
    audit::{action, AuditFilter, AuditRecord, PREFIX},
    clock::now_ms,
    error::EngineError,
    store::Store,
};

/// Records deleted per pruning transaction (small, so delivery's writes
/// never wait long behind one).
const PRUNE_BATCH: usize = 500;

/// How often the pruner looks for records past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A page of audit records.
#[derive(Debug, Clone)]
pub struct AuditPage {
    /// Newest first.
    pub data: Vec<AuditRecord>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

impl Engine {
    /// A tenant's audit records that pass `filter`, newest first, after
    /// `cursor`. An unknown action, a bad subscription id or cursor, or a
    /// time range that ends before it starts is `Invalid`.
    pub async fn audit_trail(
        &self,
        tenant_id: &str,
        filter: AuditFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<AuditPage, EngineError> {
        let cursor = validate_cursor(cursor, PREFIX)?;
        if let Some(a) = &filter.action {
            if !action::ALL.contains(&a.as_str()) {
                return Err(EngineError::invalid(
                    "action",
                    format!("unknown action; one of {}", action::ALL.join(", ")),
                ));
            }
        }
        if let Some(s) = &filter.subscription_id {
            if !crate::ids::is_valid(crate::ids::SUBSCRIPTION, s) {
                return Err(EngineError::invalid(
                    "subscription_id",
                    "not a subscription id (sub_…)",
                ));
            }
        }
        if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms) {
            if until < since {
                return Err(EngineError::invalid("until", "must not be before since"));
            }
        }
        let mut data = self
            .store
            .list_audit(tenant_id, &filter, cursor.as_deref(), limit + 1)
            .await?;
        let next_cursor = page_cursor(&mut data, limit, |r| r.id.clone());
        Ok(AuditPage { data, next_cursor })
    }
}

/// Deletes, every [`PRUNE_EVERY`], audit records older than `retention`,
/// [`PRUNE_BATCH`] at a time (a store whose records expire by TTL deletes none).
pub(super) async fn run_pruner(
    store: Arc<dyn Store>,
    retention: Duration,
    cancel: CancellationToken,
) {
    loop {
        let horizon = now_ms() - retention.as_millis() as i64;
        let mut pruned = 0;
        loop {
            match store.prune_audit(horizon, PRUNE_BATCH).await {
                Ok(n) => {
                    pruned += n;
                    if n < PRUNE_BATCH || cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune the audit trail");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        if pruned > 0 {
            tracing::info!(pruned, "audit records past the retention pruned");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
