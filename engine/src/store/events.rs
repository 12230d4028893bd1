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

/// Where a retention pass goes on: the last id of each table that
/// [`EventStore::prune_before`] examined (`None`: from the start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneCursor {
    /// The last event id examined.
    pub events: Option<String>,
    /// The last delivery-log id examined.
    pub delivery_logs: Option<String>,
}

/// What one [`EventStore::prune_before`] call deleted, and where the pass
/// goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events (with their index rows).
    pub events: usize,
    /// Delivery-log records (attempts).
    pub delivery_logs: usize,
    /// Where the next call goes on; `None` once both tables were examined
    /// up to the cutoff (the pass is over).
    pub next: Option<PruneCursor>,
}

/// The id of kind `prefix` that sorts before every id made at or after
/// `ms` and after every id made before it (ids are UUIDv7: their first 12
/// hex digits are the creation time in ms).
pub fn id_floor(prefix: &str, ms: i64) -> String {
    format!("{prefix}_{:012x}", ms.max(0))
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

    /// Whether a batch's index is written inside its log append
    /// ([`crate::log::EventLog::append_all_indexed`]): with
    /// [`index_events`](Self::index_events) before the records are
    /// readable, [`claim_dedupe_keys`](Self::claim_dedupe_keys) after,
    /// instead of [`record_events`](Self::record_events), and fan-out skips
    /// the index of the records so marked. The default: no.
    fn indexes_in_append(&self) -> bool {
        false
    }

    /// The index of events whose append is under way, without their dedupe
    /// claims (a store that [`indexes_in_append`](Self::indexes_in_append)).
    async fn index_events(&self, _events: &[DomainEvent]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes what [`index_events`](Self::index_events) wrote for an
    /// append that was aborted.
    async fn unindex_events(&self, _events: &[DomainEvent]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The dedupe claims of the events of a batch indexed in its append
    /// (those with a key), once appended.
    async fn claim_dedupe_keys(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.record_events(events, dedupe_until_ms).await
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

    /// Examines the next `limit` events and the next `limit` delivery-log
    /// records after `from` that are older than `before_ms` (by their
    /// time-ordered ids) and deletes those nothing waits for: kept are an
    /// event not yet fanned out, one with a delivery still pending
    /// (scheduled, retrying or held) or holding a live dedupe key, and a
    /// pending delivery's attempts. Each call's work is bounded by `limit`
    /// however many rows are kept. A store whose rows expire by TTL
    /// deletes nothing.
    async fn prune_before(
        &self,
        before_ms: i64,
        from: &PruneCursor,
        limit: usize,
    ) -> Result<Pruned, StoreError>;
}
