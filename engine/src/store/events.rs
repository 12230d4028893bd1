//! The event index (events by tenant, for the API and replays) and the
//! dedupe window (one live event per tenant and dedupe key).

use async_trait::async_trait;

use super::StoreError;
use crate::{log::LogPosition, model::DomainEvent};

/// Filters of the event list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this event type (exact) or family (`prefix.*`).
    pub event_type: Option<String>,
    /// Only events with ids before this one (the page cursor; newest first).
    pub before: Option<String>,
}

/// The event index and the dedupe window.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Indexes an event just appended to the log and claims its dedupe key
    /// until `dedupe_until_ms` (if nobody holds it). Idempotent.
    async fn record_event(
        &self,
        event: &DomainEvent,
        position: LogPosition,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError>;

    /// [`record_event`](EventStore::record_event) for a batch just appended
    /// to the log, in one write where the store can; a failure leaves the
    /// batch to be indexed by fan-out.
    async fn record_events(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        let writes = events
            .iter()
            .map(|(event, position)| self.record_event(event, *position, dedupe_until_ms));
        futures::future::try_join_all(writes).await.map(|_| ())
    }

    /// The live event holding `(tenant, dedupe_key)`, if any.
    async fn event_by_dedupe_key(
        &self,
        tenant_id: &str,
        dedupe_key: &str,
        now_ms: i64,
    ) -> Result<Option<DomainEvent>, StoreError>;

    /// One event of a tenant (not one dropped as a duplicate).
    async fn get_event(&self, tenant_id: &str, id: &str)
        -> Result<Option<DomainEvent>, StoreError>;

    /// A tenant's events, newest first.
    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError>;

    /// Removes dedupe claims that expired before `now_ms`; returns how many
    /// (a store whose claims expire by themselves returns 0).
    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError>;
}
