//! Event validation over hostile input, as an emit goes through it: the
//! request body parsed the way the API parses it (a single emit, or a
//! batch and its items), the event checked and built, its payload
//! validated against the catalogue's JSON Schemas. Nothing panics; every
//! input is either an event or a reason.
//!
//! Input layout: `[schema JSON] 0xFF <emit or batch body>`. Without a 0xFF
//! the whole input is the body, checked against a fixed catalogue (types
//! `order.created` v1/v2, `note.*`-style free types unregistered). With
//! one, the part before it is also registered as a tenant's schema for the
//! emitted type and version (hostile schemas are input too).
#![no_main]

use std::sync::OnceLock;

use herald_api::routes::events::{Emit, EmitBatch};
use herald_engine::{build_event, model::EventSource, Catalogue, NewEvent};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const TENANT: &str = "acme";

fn fixed() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let catalogue = Catalogue::default();
        let schemas = [
            (
                "order.created",
                1,
                json!({
                    "type": "object",
                    "required": ["order_id", "lines"],
                    "properties": {
                        "order_id": {"type": "string", "pattern": "^ord_[0-9a-f]{4,32}$"},
                        "email": {"type": "string", "format": "email"},
                        "placed_at": {"type": "string", "format": "date-time"},
                        "lines": {
                            "type": "array", "minItems": 1, "maxItems": 50,
                            "items": {"$ref": "#/$defs/line"}
                        },
                        "total": {"type": "number", "multipleOf": 0.01, "minimum": 0}
                    },
                    "additionalProperties": false,
                    "$defs": {"line": {
                        "type": "object",
                        "required": ["sku", "qty"],
                        "properties": {
                            "sku": {"type": "string", "minLength": 1, "maxLength": 64},
                            "qty": {"type": "integer", "minimum": 1}
                        }
                    }}
                }),
            ),
            (
                "order.created",
                2,
                json!({
                    "type": "object",
                    "oneOf": [
                        {"required": ["order_id"]},
                        {"required": ["external_ref"]}
                    ],
                    "properties": {
                        "status": {"enum": ["new", "paid", "shipped"]},
                        "tags": {"type": "array", "uniqueItems": true,
                                 "items": {"type": "string"}},
                        "meta": {"type": "object",
                                 "patternProperties": {"^x-": {"type": "string"}},
                                 "propertyNames": {"maxLength": 32}}
                    },
                    "if": {"properties": {"status": {"const": "shipped"}}},
                    "then": {"required": ["tracking"]}
                }),
            ),
        ];
        for (event_type, version, schema) in schemas {
            let prepared = Catalogue::prepare(TENANT, event_type, version, schema)
                .expect("the fixed schemas compile");
            catalogue.add(prepared);
        }
        catalogue
    })
}

/// One emit as the engine sees it: built and checked, then validated
/// against the fixed catalogue and, when given, the fuzzed schema.
fn validate(new: NewEvent, schema: Option<&Value>) {
    let Ok(event) = build_event(TENANT, new, EventSource::Api) else {
        return;
    };
    let _ = fixed().check(
        TENANT,
        &event.event_type,
        event.schema_version,
        &event.payload,
    );
    if let Some(schema) = schema {
        if let Ok(prepared) = Catalogue::prepare(
            TENANT,
            &event.event_type,
            event.schema_version,
            schema.clone(),
        ) {
            let own = Catalogue::default();
            own.add(prepared);
            if let Err(e) = own.check(
                TENANT,
                &event.event_type,
                event.schema_version,
                &event.payload,
            ) {
                // Rendering the problem must not panic either.
                let _ = e.to_string();
                let _ = format!("{e:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (schema, body) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (
            serde_json::from_slice::<Value>(&data[..i]).ok(),
            &data[i + 1..],
        ),
        None => (None, data),
    };
    if let Ok(emit) = serde_json::from_slice::<Emit>(body) {
        validate(emit.into(), schema.as_ref());
    }
    if let Ok(batch) = serde_json::from_slice::<EmitBatch>(body) {
        for raw in batch.events.into_iter().take(64) {
            if let Ok(emit) = serde_json::from_str::<Emit>(raw.get()) {
                validate(emit.into(), schema.as_ref());
            }
        }
    }
});
