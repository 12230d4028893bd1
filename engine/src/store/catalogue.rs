//! The event-type catalogue: immutable schema versions per tenant and type.

use async_trait::async_trait;

use super::StoreError;
use crate::resources::EventTypeSchema;

/// Registered event-type schemas.
#[async_trait]
pub trait CatalogueStore: Send + Sync + 'static {
    /// Registers a schema version. `Ok(false)` when that version exists with
    /// the same schema (nothing changes), `Conflict` when it exists with another.
    async fn put_event_type(&self, schema: &EventTypeSchema) -> Result<bool, StoreError>;

    /// Every registered schema of every tenant (to build the validators).
    async fn all_event_types(&self) -> Result<Vec<EventTypeSchema>, StoreError>;
}
