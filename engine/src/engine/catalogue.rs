//! The event-type catalogue's API: registering a schema and reading the
//! registered ones. The compiled catalogue itself, and how processes
//! sharing a store follow each other's registrations, are in
//! [`crate::catalogue`].

use crate::audit::{self, action, AuditRecord};
use crate::{
    catalogue::{Catalogue, PreparedSchema},
    error::EngineError,
    resources::EventTypeSchema,
};

use super::Engine;

/// A page of the catalogue: event types with all their versions.
#[derive(Debug, Clone)]
pub struct EventTypePage {
    /// Event types in name order, each with its versions (ascending).
    pub data: Vec<(String, Vec<EventTypeSchema>)>,
    /// Cursor of the next page (the last type name of this one).
    pub next_cursor: Option<String>,
}

impl Engine {
    /// Registers the JSON Schema of `event_type` at `schema_version`.
    /// Returns the stored version and whether it is new (`false`: the same
    /// schema was registered before). Another schema for a registered
    /// version is a `Conflict`.
    pub async fn register_event_type(
        &self,
        tenant_id: &str,
        event_type: &str,
        schema_version: u32,
        schema: serde_json::Value,
    ) -> Result<(EventTypeSchema, bool), EngineError> {
        let PreparedSchema { record, validator } =
            Catalogue::prepare(tenant_id, event_type, schema_version, schema)?;
        let audited = AuditRecord::new(tenant_id, action::EVENT_TYPE_REGISTERED)
            .target(event_type)
            .detail("schema_version", schema_version);
        let created = audit::recorded(audited, self.store.put_event_type(&record)).await?;
        if created {
            self.catalogue.insert(record.clone(), validator);
            tracing::info!(
                tenant_id,
                event_type,
                schema_version,
                "event type registered"
            );
            Ok((record, true))
        } else {
            let stored = self
                .catalogue
                .of_type(tenant_id, event_type)
                .into_iter()
                .find(|s| s.schema_version == schema_version)
                .unwrap_or(record);
            Ok((stored, false))
        }
    }

    /// Every registered version of one event type (`NotFound` if none).
    pub async fn event_type(
        &self,
        tenant_id: &str,
        event_type: &str,
    ) -> Result<Vec<EventTypeSchema>, EngineError> {
        let versions = self.catalogue.of_type(tenant_id, event_type);
        if versions.is_empty() {
            return Err(EngineError::NotFound("event type"));
        }
        Ok(versions)
    }

    /// The tenant's registered event types in name order, after `cursor`.
    pub async fn list_event_types(
        &self,
        tenant_id: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<EventTypePage, EngineError> {
        let names = self.catalogue.types_of(tenant_id);
        let mut data: Vec<(String, Vec<EventTypeSchema>)> = names
            .into_iter()
            .filter(|n| cursor.as_ref().is_none_or(|c| n > c))
            .take(limit + 1)
            .map(|n| {
                let versions = self.catalogue.of_type(tenant_id, &n);
                (n, versions)
            })
            .collect();
        let next_cursor = if data.len() > limit {
            data.truncate(limit);
            data.last().map(|(n, _)| n.clone())
        } else {
            None
        };
        Ok(EventTypePage { data, next_cursor })
    }

    pub(super) fn check_payload(
        &self,
        tenant_id: &str,
        event_type: &str,
        schema_version: u32,
        payload: &crate::payload::Payload,
    ) -> Result<(), EngineError> {
        self.catalogue
            .check(tenant_id, event_type, schema_version, payload)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        input::{build_event, MAX_PAYLOAD_BYTES},
        model::EventSource,
        NewEvent,
    };

    fn emit(event_type: &str, payload: serde_json::Value) -> NewEvent {
        NewEvent {
            event_type: event_type.into(),
            payload: payload.into(),
            ..Default::default()
        }
    }

    fn field(e: EngineError) -> &'static str {
        match e {
            EngineError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn build_event_refuses_each_bad_field() {
        let ok = build_event("acme", emit("order.created", json!({})), EventSource::Api).unwrap();
        assert_eq!(ok.schema_version, 1);
        for (new, expected) in [
            (emit("order created", json!({})), "event_type"),
            (emit("order.*", json!({})), "event_type"),
            (emit("*", json!({})), "event_type"),
            (emit("", json!({})), "event_type"),
            (emit("herald.delivery.dead", json!({})), "event_type"),
            (emit("a.b", json!([1])), "payload"),
            (emit("a.b", json!("text")), "payload"),
            (
                emit("a.b", json!({ "big": "x".repeat(MAX_PAYLOAD_BYTES) })),
                "payload",
            ),
            (
                NewEvent {
                    dedupe_key: Some(String::new()),
                    ..emit("a.b", json!({}))
                },
                "dedupe_key",
            ),
            (
                NewEvent {
                    dedupe_key: Some("k\n".into()),
                    ..emit("a.b", json!({}))
                },
                "dedupe_key",
            ),
            (
                NewEvent {
                    trace_id: Some("t".repeat(257)),
                    ..emit("a.b", json!({}))
                },
                "trace_id",
            ),
            (
                NewEvent {
                    trace_id: Some("t\u{0}".into()),
                    ..emit("a.b", json!({}))
                },
                "trace_id",
            ),
            (
                NewEvent {
                    schema_version: Some(0),
                    ..emit("a.b", json!({}))
                },
                "schema_version",
            ),
        ] {
            let label = format!("{:?}", new.event_type);
            let err = build_event("acme", new, EventSource::Api).unwrap_err();
            assert_eq!(field(err), expected, "{label}");
        }
        // Herald's own operational events may use the reserved prefix.
        build_event(
            "acme",
            emit("herald.delivery.dead", json!({})),
            EventSource::Herald,
        )
        .unwrap();
    }
}
