//! The event-type catalogue in SQLite. A new registration bumps the
//! `event_types` version in the same transaction.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{db_err, decode, json_err, query_bodies, EmbeddedStore};
use crate::{
    resources::EventTypeSchema,
    store::{CatalogueStore, StoreError},
};

#[async_trait]
impl CatalogueStore for EmbeddedStore {
    async fn put_event_type(&self, schema: &EventTypeSchema) -> Result<bool, StoreError> {
        let body = serde_json::to_string(schema).map_err(json_err)?;
        let schema = schema.clone();
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let existing: Option<String> = conn
                .query_row(
                    "SELECT body FROM event_types WHERE tenant_id = ?1 AND event_type = ?2 AND schema_version = ?3",
                    params![schema.tenant_id, schema.event_type, schema.schema_version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if let Some(existing) = existing {
                let existing: EventTypeSchema = decode(&existing)?;
                return if existing.schema == schema.schema {
                    Ok(false)
                } else {
                    Err(StoreError::Conflict(format!(
                        "schema_version {} of {} is registered with another schema; versions are immutable, register a new schema_version",
                        schema.schema_version, schema.event_type
                    )))
                };
            }
            conn.execute(
                "INSERT INTO event_types (tenant_id, event_type, schema_version, body) VALUES (?1, ?2, ?3, ?4)",
                params![schema.tenant_id, schema.event_type, schema.schema_version, body],
            )
            .map_err(db_err)?;
            super::audit::insert_pending(conn, &audit)?;
            conn.prepare_cached(
                "INSERT INTO versions (name, value) VALUES ('event_types', 1)
                 ON CONFLICT(name) DO UPDATE SET value = value + 1",
            )
            .and_then(|mut st| st.execute([]))
            .map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn all_event_types(&self) -> Result<Vec<EventTypeSchema>, StoreError> {
        self.read(|conn| {
            query_bodies(
                conn,
                "SELECT body FROM event_types ORDER BY tenant_id, event_type, schema_version",
                Vec::new(),
            )
        })
        .await
    }

    async fn catalogue_version(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT value FROM versions WHERE name = 'event_types'")
                .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)).optional())
                .map(|v| v.unwrap_or(0) as u64)
                .map_err(db_err)
        })
        .await
    }
}
