//! The event-type catalogue: a JSON Schema per (tenant, event type, schema
//! version). Emits of a registered type are validated against the schema of
//! their version before they reach the log; unregistered types pass as they
//! are. Registered versions are immutable, so a payload valid today stays
//! valid for its consumers tomorrow.
//!
//! Compiled validators live in memory (loaded at start, updated by every
//! registration through this engine), so validation costs no store read.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::RwLock;
use time::OffsetDateTime;

use super::Engine;
use crate::{
    error::{EngineError, SchemaIssue},
    resources::EventTypeSchema,
    subscriptions::validate_filter,
};

/// Largest accepted schema, in bytes of JSON.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most violations reported for one payload.
const MAX_ISSUES: usize = 20;

struct Entry {
    schema: EventTypeSchema,
    validator: Arc<jsonschema::Validator>,
}

/// Registered schemas by (tenant, event type), then version, compiled:
/// what every emit's payload is checked against ([`Catalogue::check`]).
#[derive(Default)]
pub struct Catalogue {
    types: RwLock<HashMap<(String, String), BTreeMap<u32, Entry>>>,
}

/// A schema checked and compiled for registration ([`Catalogue::prepare`]).
pub struct PreparedSchema {
    record: EventTypeSchema,
    validator: jsonschema::Validator,
}

impl PreparedSchema {
    /// The schema as it will be stored.
    pub fn record(&self) -> &EventTypeSchema {
        &self.record
    }
}

fn compile(schema: &serde_json::Value) -> Result<jsonschema::Validator, EngineError> {
    jsonschema::validator_for(schema)
        .map_err(|e| EngineError::invalid("schema", format!("not a valid JSON Schema: {e}")))
}

impl Catalogue {
    /// Checks a schema a tenant registers — a dotted event type, a version
    /// from 1, a JSON object of at most 64 KiB that compiles as a JSON
    /// Schema — and compiles it.
    pub fn prepare(
        tenant_id: &str,
        event_type: &str,
        schema_version: u32,
        schema: serde_json::Value,
    ) -> Result<PreparedSchema, EngineError> {
        validate_event_type_name(event_type)?;
        if schema_version == 0 {
            return Err(EngineError::invalid("schema_version", "must be at least 1"));
        }
        if !schema.is_object() {
            return Err(EngineError::invalid(
                "schema",
                "must be a JSON Schema object, e.g. {\"type\": \"object\"}",
            ));
        }
        if serde_json::to_vec(&schema).map_or(usize::MAX, |v| v.len()) > MAX_SCHEMA_BYTES {
            return Err(EngineError::invalid(
                "schema",
                format!("at most {MAX_SCHEMA_BYTES} bytes of JSON"),
            ));
        }
        let validator = compile(&schema)?;
        Ok(PreparedSchema {
            record: EventTypeSchema {
                tenant_id: tenant_id.to_string(),
                event_type: event_type.to_string(),
                schema_version,
                schema,
                created_at: OffsetDateTime::now_utc(),
            },
            validator,
        })
    }

    /// Adds a prepared schema (replacing that version, if any).
    pub fn add(&self, prepared: PreparedSchema) {
        self.insert(prepared.record, prepared.validator);
    }

    /// The catalogue of stored schemas; one that no longer compiles is
    /// logged and left out.
    pub fn load(schemas: Vec<EventTypeSchema>) -> Self {
        let catalogue = Self::default();
        for s in schemas {
            match compile(&s.schema) {
                Ok(v) => catalogue.insert(s, v),
                Err(e) => {
                    tracing::error!(event_type = %s.event_type, error = %e, "a stored schema no longer compiles")
                }
            }
        }
        catalogue
    }

    fn insert(&self, schema: EventTypeSchema, validator: jsonschema::Validator) {
        self.types
            .write()
            .entry((schema.tenant_id.clone(), schema.event_type.clone()))
            .or_default()
            .insert(
                schema.schema_version,
                Entry {
                    schema,
                    validator: Arc::new(validator),
                },
            );
    }

    /// Checks a payload against the schema of its tenant, type and
    /// version: `Ok` for unregistered types, `Invalid` on `schema_version`
    /// for an unregistered version of a registered type, `SchemaViolation`
    /// listing (at most 20) violations otherwise.
    pub fn check(
        &self,
        tenant: &str,
        event_type: &str,
        version: u32,
        payload: &serde_json::Value,
    ) -> Result<(), EngineError> {
        let validator = {
            let types = self.types.read();
            let Some(versions) = types.get(&(tenant.to_string(), event_type.to_string())) else {
                return Ok(());
            };
            match versions.get(&version) {
                Some(e) => e.validator.clone(),
                None => {
                    let known: Vec<String> = versions.keys().map(u32::to_string).collect();
                    return Err(EngineError::invalid(
                        "schema_version",
                        format!(
                            "{event_type} has no registered schema_version {version}; registered: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
        };
        let errors: Vec<SchemaIssue> = validator
            .iter_errors(payload)
            .take(MAX_ISSUES)
            .map(|e| SchemaIssue {
                instance_path: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(EngineError::SchemaViolation {
                event_type: event_type.to_string(),
                schema_version: version,
                errors,
            })
        }
    }

    fn of_type(&self, tenant: &str, event_type: &str) -> Vec<EventTypeSchema> {
        self.types
            .read()
            .get(&(tenant.to_string(), event_type.to_string()))
            .map(|v| v.values().map(|e| e.schema.clone()).collect())
            .unwrap_or_default()
    }

    fn types_of(&self, tenant: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .types
            .read()
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, ty)| ty.clone())
            .collect();
        out.sort();
        out
    }
}

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
        let created = self.store.put_event_type(&record).await?;
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
        payload: &serde_json::Value,
    ) -> Result<(), EngineError> {
        self.catalogue
            .check(tenant_id, event_type, schema_version, payload)
    }
}

fn validate_event_type_name(event_type: &str) -> Result<(), EngineError> {
    validate_filter(event_type)
        .ok()
        .filter(|()| !event_type.contains('*'))
        .ok_or_else(|| {
            EngineError::invalid(
                "event_type",
                format!(
                    "{event_type:?} is not an event type; use dotted names like work_order.completed"
                ),
            )
        })
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
            payload,
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

    #[test]
    fn prepare_refuses_bad_registrations() {
        for (event_type, version, schema, expected) in [
            ("a.*", 1, json!({}), "event_type"),
            ("a.b", 0, json!({}), "schema_version"),
            ("a.b", 1, json!("text"), "schema"),
            ("a.b", 1, json!({"type": 12}), "schema"),
            ("a.b", 1, json!({"pattern": "("}), "schema"),
            (
                "a.b",
                1,
                json!({ "description": "x".repeat(MAX_SCHEMA_BYTES) }),
                "schema",
            ),
        ] {
            let err = Catalogue::prepare("acme", event_type, version, schema)
                .err()
                .expect("refused");
            assert_eq!(field(err), expected);
        }
    }

    #[test]
    fn check_validates_per_tenant_type_and_version_and_caps_the_issues() {
        let catalogue = Catalogue::default();
        let schema = json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "additionalProperties": {"type": "integer"}
        });
        catalogue.add(Catalogue::prepare("acme", "a.b", 1, schema).unwrap());
        assert!(catalogue.check("acme", "a.b", 1, &json!({"n": 1})).is_ok());
        assert!(catalogue
            .check("globex", "a.b", 1, &json!({"n": "x"}))
            .is_ok());
        assert!(catalogue
            .check("acme", "c.d", 1, &json!({"n": "x"}))
            .is_ok());
        assert_eq!(
            field(catalogue.check("acme", "a.b", 2, &json!({})).unwrap_err()),
            "schema_version"
        );
        let many: serde_json::Map<String, serde_json::Value> =
            (0..100).map(|i| (format!("k{i}"), json!("x"))).collect();
        match catalogue.check("acme", "a.b", 1, &serde_json::Value::Object(many)) {
            Err(EngineError::SchemaViolation { errors, .. }) => {
                assert_eq!(errors.len(), MAX_ISSUES)
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }
}
