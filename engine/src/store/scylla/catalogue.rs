//! The event-type catalogue on CQL: one row per schema version, written
//! with `IF NOT EXISTS` so a version is registered once. A new
//! registration then moves the `event_types` version in `meta` (like the
//! subscriptions' version: microseconds since the epoch of the writer).

use ::scylla::value::CqlValue;
use async_trait::async_trait;

use super::{decode, encode, ScyllaStore};
use crate::{
    resources::EventTypeSchema,
    store::{CatalogueStore, StoreError},
};

impl ScyllaStore {
    /// Marks that the catalogue changed.
    async fn bump_catalogue_version(&self) -> Result<(), StoreError> {
        let now_us = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64;
        self.exec("UPDATE meta SET v = ? WHERE k = 'event_types'", (now_us,))
            .await
    }
}

#[async_trait]
impl CatalogueStore for ScyllaStore {
    /// Registers a schema version: `Ok(false)` when it exists with the same
    /// schema, `Conflict` when it exists with another.
    async fn put_event_type(&self, schema: &EventTypeSchema) -> Result<bool, StoreError> {
        let put = self.put_event_type_unaudited(schema);
        self.audited(crate::audit::take_pending(), put, |created| *created)
            .await
    }

    /// Every registered schema of every tenant.
    async fn all_event_types(&self) -> Result<Vec<EventTypeSchema>, StoreError> {
        let mut out = Vec::new();
        self.scan("SELECT body FROM event_types", (), |(b,): (String,)| {
            out.push(decode(&b)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    async fn catalogue_version(&self) -> Result<u64, StoreError> {
        let row: Option<(Option<i64>,)> = self
            .row("SELECT v FROM meta WHERE k = 'event_types'", ())
            .await?;
        Ok(row.and_then(|(v,)| v).unwrap_or(0) as u64)
    }
}

impl ScyllaStore {
    /// Registers a schema version (see [`CatalogueStore::put_event_type`]).
    async fn put_event_type_unaudited(&self, schema: &EventTypeSchema) -> Result<bool, StoreError> {
        let (applied, current) = self
            .lwt(
                "INSERT INTO event_types (tenant_id, event_type, schema_version, body) VALUES (?, ?, ?, ?) IF NOT EXISTS",
                (
                    &schema.tenant_id,
                    &schema.event_type,
                    schema.schema_version as i32,
                    encode(schema)?,
                ),
            )
            .await?;
        if applied {
            self.bump_catalogue_version().await?;
            return Ok(true);
        }
        let existing: EventTypeSchema = match current.get("body") {
            Some(CqlValue::Text(b)) => decode(b)?,
            _ => return Err(super::corrupt("event type without a body")),
        };
        if existing.schema == schema.schema {
            // A retry after a registration whose version bump failed: bump
            // now, so other processes do not miss it.
            self.bump_catalogue_version().await?;
            Ok(false)
        } else {
            Err(StoreError::Conflict(format!(
                "{} version {} is registered with another schema; register a new version",
                schema.event_type, schema.schema_version
            )))
        }
    }
}
