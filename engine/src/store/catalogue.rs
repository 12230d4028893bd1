//! The event-type catalogue: immutable schema versions per tenant and type.
//! Every new registration moves
//! [`catalogue_version`](CatalogueStore::catalogue_version), so processes
//! sharing the store know when to reload their validators.

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

    /// A number that changes whenever any process registers a new schema
    /// version (0 before the first), so processes sharing the store know
    /// when to reload their catalogue. (A registration that changes nothing,
    /// `put_event_type` returning `Ok(false)`, may move it too.)
    async fn catalogue_version(&self) -> Result<u64, StoreError>;
}
