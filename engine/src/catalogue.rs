//! The event-type catalogue in memory: a JSON Schema per (tenant, event
//! type, schema version), compiled. Emits of a registered type, through the
//! API or the CDC relay, are validated against the schema of their version
//! before they reach the log; unregistered types pass as they are.
//! Registered versions are immutable, so a payload valid today stays valid
//! for its consumers tomorrow.
//!
//! The compiled validators are loaded at start and updated by every
//! registration through this process, so validation costs no store read.
//! Processes sharing a store (distributed mode) also [`refresh`] theirs
//! from the store every half second, when the store's catalogue version
//! moved: a schema registered through one API replica is enforced by every
//! other replica, worker and relay within about a second.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use parking_lot::{Mutex, RwLock};
use time::OffsetDateTime;

use crate::{
    error::{EngineError, SchemaIssue},
    filters::validate_filter,
    payload::Payload,
    resources::EventTypeSchema,
    store::CatalogueStore,
};

/// Reloads `catalogue` from the store if the store's catalogue version is
/// not the one it last reloaded at. A store error leaves it as it was (and
/// is logged). Registered versions never change, so a reload only adds:
/// two callers racing cannot lose a schema, at worst one reloads again.
pub async fn refresh(store: &dyn CatalogueStore, catalogue: &Catalogue) {
    let version = match store.catalogue_version().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the catalogue's version");
            return;
        }
    };
    if catalogue.version() == Some(version) {
        return;
    }
    // Read after the version: the snapshot holds at least that version.
    match store.all_event_types().await {
        Ok(schemas) => {
            let added = catalogue.merge(schemas);
            if added > 0 {
                tracing::info!(added, "event-type schemas reloaded from the store");
            }
            *catalogue.version.lock() = Some(version);
        }
        Err(e) => tracing::warn!(error = %e, "could not reload the catalogue"),
    }
}

/// Largest accepted schema, in bytes of JSON.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most violations reported for one payload.
const MAX_ISSUES: usize = 20;

struct Entry {
    schema: EventTypeSchema,
    validator: Arc<jsonschema::Validator>,
}

/// Registered schemas by (tenant, event type), then version, compiled:
/// what every emit's payload and every CDC row is checked against
/// ([`Catalogue::check`]).
#[derive(Default)]
pub struct Catalogue {
    types: RwLock<HashMap<(String, String), BTreeMap<u32, Entry>>>,
    /// The store's catalogue version of the last [`refresh`].
    version: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Catalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogue")
            .field("types", &self.types.read().len())
            .field("version", &self.version())
            .finish()
    }
}

/// A schema checked and compiled for registration ([`Catalogue::prepare`]).
pub struct PreparedSchema {
    pub(crate) record: EventTypeSchema,
    pub(crate) validator: jsonschema::Validator,
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
        catalogue.merge(schemas);
        catalogue
    }

    /// Adds every schema of `schemas` it does not hold yet (registered
    /// versions are immutable: a held one is never replaced); returns how
    /// many it added. A schema that no longer compiles is logged and left out.
    pub fn merge(&self, schemas: Vec<EventTypeSchema>) -> usize {
        let fresh: Vec<EventTypeSchema> = {
            let types = self.types.read();
            schemas
                .into_iter()
                .filter(|s| {
                    types
                        .get(&(s.tenant_id.clone(), s.event_type.clone()))
                        .is_none_or(|v| !v.contains_key(&s.schema_version))
                })
                .collect()
        };
        let mut added = 0;
        for s in fresh {
            match compile(&s.schema) {
                Ok(v) => {
                    self.insert(s, v);
                    added += 1;
                }
                Err(e) => {
                    tracing::error!(event_type = %s.event_type, error = %e, "a stored schema no longer compiles")
                }
            }
        }
        added
    }

    /// The store's catalogue version this catalogue last reloaded at
    /// ([`refresh`]); `None` before the first reload.
    pub fn version(&self) -> Option<u64> {
        *self.version.lock()
    }

    pub(crate) fn insert(&self, schema: EventTypeSchema, validator: jsonschema::Validator) {
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
        payload: &Payload,
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
        // Parsed into a tree only when a schema applies.
        let payload = payload
            .to_value()
            .map_err(|e| EngineError::invalid("payload", e.to_string()))?;
        let errors: Vec<SchemaIssue> = validator
            .iter_errors(&payload)
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

    /// Every registered version of one type of a tenant, ascending.
    pub fn of_type(&self, tenant: &str, event_type: &str) -> Vec<EventTypeSchema> {
        self.types
            .read()
            .get(&(tenant.to_string(), event_type.to_string()))
            .map(|v| v.values().map(|e| e.schema.clone()).collect())
            .unwrap_or_default()
    }

    /// Drops every schema of `tenant` (a deleted tenant).
    pub fn forget_tenant(&self, tenant: &str) {
        self.types.write().retain(|(t, _), _| t != tenant);
    }

    /// The tenant's registered event types, in name order.
    pub fn types_of(&self, tenant: &str) -> Vec<String> {
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

/// Refuses what is not a dotted event type (no wildcard).
pub fn validate_event_type_name(event_type: &str) -> Result<(), EngineError> {
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

    fn field(e: EngineError) -> &'static str {
        match e {
            EngineError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
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
        assert!(catalogue
            .check("acme", "a.b", 1, &json!({"n": 1}).into())
            .is_ok());
        assert!(catalogue
            .check("globex", "a.b", 1, &json!({"n": "x"}).into())
            .is_ok());
        assert!(catalogue
            .check("acme", "c.d", 1, &json!({"n": "x"}).into())
            .is_ok());
        assert_eq!(
            field(
                catalogue
                    .check("acme", "a.b", 2, &json!({}).into())
                    .unwrap_err()
            ),
            "schema_version"
        );
        let many: serde_json::Map<String, serde_json::Value> =
            (0..100).map(|i| (format!("k{i}"), json!("x"))).collect();
        match catalogue.check("acme", "a.b", 1, &serde_json::Value::Object(many).into()) {
            Err(EngineError::SchemaViolation { errors, .. }) => {
                assert_eq!(errors.len(), MAX_ISSUES)
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn merge_adds_what_it_lacks_and_keeps_what_it_holds() {
        let catalogue = Catalogue::default();
        let v1 = Catalogue::prepare("acme", "a.b", 1, json!({"type": "object"})).unwrap();
        catalogue.add(v1);
        let stored = |version: u32, schema: serde_json::Value| EventTypeSchema {
            tenant_id: "acme".into(),
            event_type: "a.b".into(),
            schema_version: version,
            schema,
            created_at: OffsetDateTime::now_utc(),
        };
        let added = catalogue.merge(vec![
            stored(1, json!({"type": "array"})),
            stored(2, json!({"required": ["n"]})),
            stored(3, json!({"type": 12})),
        ]);
        assert_eq!(added, 1, "version 1 is held, version 3 does not compile");
        assert!(catalogue.check("acme", "a.b", 1, &json!({}).into()).is_ok());
        assert!(catalogue
            .check("acme", "a.b", 2, &json!({}).into())
            .is_err());
        assert!(catalogue
            .check("acme", "a.b", 2, &json!({"n": 1}).into())
            .is_ok());
        assert_eq!(catalogue.of_type("acme", "a.b").len(), 2);
    }

    #[tokio::test]
    async fn refresh_follows_another_process_registrations() {
        use crate::{encryption::SecretCipher, store::embedded::EmbeddedStore};
        let dir = tempfile::tempdir().unwrap();
        let cipher = SecretCipher::random();
        let ours = EmbeddedStore::open(dir.path(), cipher.clone()).unwrap();
        let theirs = EmbeddedStore::open(dir.path(), cipher).unwrap();
        let catalogue = Catalogue::load(ours.all_event_types().await.unwrap());
        refresh(&ours, &catalogue).await;
        assert_eq!(catalogue.version(), Some(0));
        let prepared = Catalogue::prepare("acme", "a.b", 1, json!({"required": ["n"]})).unwrap();
        assert!(theirs.put_event_type(prepared.record()).await.unwrap());
        assert!(
            catalogue.check("acme", "a.b", 1, &json!({}).into()).is_ok(),
            "not yet"
        );
        refresh(&ours, &catalogue).await;
        assert!(catalogue
            .check("acme", "a.b", 1, &json!({}).into())
            .is_err());
        assert_eq!(catalogue.version(), Some(1));
    }
}
