//! The record format of the `herald.events` topic, version 1 — a public
//! contract: other teams' consumers read the topic directly, and
//! `schemas/herald.events.v1.json` publishes it as a JSON Schema.
//!
//! - key: the tenant id (UTF-8), so one tenant's events share a partition;
//! - value: the webhook envelope (`id`, `type`, `schema_version`,
//!   `tenant_id`, `dedupe_key`, `occurred_at`, `data`) plus the lineage
//!   fields (`received_at`, `source`, and `aggregate_type`, `aggregate_id`,
//!   `trace_id` when known), as one JSON object;
//! - headers: `id`, `type`, `schema_version` (decimal) and, when the event
//!   has one, `dedupe_key` — so a consumer can route or filter without
//!   parsing the value.
//!
//! Adding an optional field is compatible; renaming or removing one is a
//! new topic version.

use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    model::{DomainEvent, EventSource},
    payload::Payload,
};

/// Version of the record format, also the suffix of the schema file.
pub const RECORD_VERSION: u32 = 1;

/// The value of a `herald.events` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    /// Event id, `evt_…` (the `webhook-id` of its deliveries).
    pub id: String,
    /// Dotted event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Version of the payload's schema.
    pub schema_version: u32,
    /// Owning tenant (also the record key).
    pub tenant_id: String,
    /// Idempotency key, `null` when none.
    pub dedupe_key: Option<String>,
    /// When the event happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The payload, a JSON object.
    pub data: Payload,
    /// Lineage: when Herald accepted the event.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Lineage: how it entered Herald.
    pub source: EventSource,
    /// Lineage: aggregate type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_type: Option<String>,
    /// Lineage: aggregate id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    /// Lineage: trace id, when the emitter gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl From<&DomainEvent> for EventRecord {
    fn from(e: &DomainEvent) -> Self {
        Self {
            id: e.id.clone(),
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            tenant_id: e.tenant_id.clone(),
            dedupe_key: e.dedupe_key.clone(),
            occurred_at: e.occurred_at,
            data: e.payload.clone(),
            received_at: e.received_at,
            source: e.source,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            trace_id: e.trace_id.clone(),
        }
    }
}

impl From<EventRecord> for DomainEvent {
    fn from(r: EventRecord) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            event_type: r.event_type,
            schema_version: r.schema_version,
            dedupe_key: r.dedupe_key,
            occurred_at: r.occurred_at,
            received_at: r.received_at,
            payload: r.data,
            source: r.source,
            aggregate_type: r.aggregate_type,
            aggregate_id: r.aggregate_id,
            trace_id: r.trace_id,
        }
    }
}

/// The value bytes of an event's record.
pub fn encode(event: &DomainEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.payload.size() + 512);
    serde_json::to_writer(&mut out, &EventRecord::from(event))
        .expect("an event record always serialises");
    out
}

/// The event in a record's value.
pub fn decode(value: &[u8]) -> Result<DomainEvent, String> {
    serde_json::from_slice::<EventRecord>(value)
        .map(DomainEvent::from)
        .map_err(|e| e.to_string())
}

/// The header that marks a record whose appender indexed its event in the
/// store before the record became readable (`"1"`; absent otherwise).
pub const INDEXED_HEADER: &str = "herald.indexed";

/// Whether a record carries [`INDEXED_HEADER`].
pub fn indexed(m: &impl rdkafka::Message) -> bool {
    use rdkafka::message::Headers;
    m.headers().is_some_and(|h| {
        h.iter()
            .any(|h| h.key == INDEXED_HEADER && h.value == Some(b"1".as_slice()))
    })
}

/// The headers of an event's record; `indexed` adds [`INDEXED_HEADER`].
pub fn headers(event: &DomainEvent, indexed: bool) -> OwnedHeaders {
    let version = event.schema_version.to_string();
    let mut h = OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: "id",
            value: Some(event.id.as_bytes()),
        })
        .insert(Header {
            key: "type",
            value: Some(event.event_type.as_bytes()),
        })
        .insert(Header {
            key: "schema_version",
            value: Some(version.as_bytes()),
        });
    if let Some(key) = &event.dedupe_key {
        h = h.insert(Header {
            key: "dedupe_key",
            value: Some(key.as_bytes()),
        });
    }
    if indexed {
        h = h.insert(Header {
            key: INDEXED_HEADER,
            value: Some("1"),
        });
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn event() -> DomainEvent {
        DomainEvent {
            id: "evt_0192f0c4a1b27c3d8e9f0a1b2c3d4e5f".into(),
            tenant_id: "acme".into(),
            event_type: "work_order.completed".into(),
            schema_version: 2,
            dedupe_key: Some("wo-1".into()),
            occurred_at: time::macros::datetime!(2026-01-02 03:04:05 UTC),
            received_at: time::macros::datetime!(2026-01-02 03:04:06.5 UTC),
            payload: serde_json::json!({"wo": 1}).into(),
            source: EventSource::Api,
            aggregate_type: None,
            aggregate_id: None,
            trace_id: Some("trace-1".into()),
        }
    }

    #[test]
    fn round_trips_and_is_the_envelope_plus_lineage() {
        let e = event();
        let bytes = encode(&e);
        assert_eq!(decode(&bytes).unwrap(), e);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let envelope: serde_json::Value = serde_json::from_slice(&e.envelope_bytes()).unwrap();
        for (k, val) in envelope.as_object().unwrap() {
            assert_eq!(&v[k], val, "envelope field {k}");
        }
        assert_eq!(v["source"], "api");
        assert_eq!(v["received_at"], "2026-01-02T03:04:06.5Z");
        assert!(v.get("aggregate_id").is_none());
        assert!(decode(b"{\"id\":1}").is_err());
    }

    /// The published schema names exactly the fields this code writes, and
    /// requires exactly those always written.
    #[test]
    fn published_schema_matches_the_record() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../../schemas/herald.events.v1.json"))
                .unwrap();
        let mut full = event();
        full.aggregate_type = Some("work_order".into());
        full.aggregate_id = Some("wo-1".into());
        let written: serde_json::Value = serde_json::from_slice(&encode(&full)).unwrap();
        let mut written: Vec<&String> = written.as_object().unwrap().keys().collect();
        let mut declared: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        written.sort();
        declared.sort();
        assert_eq!(written, declared);
        let mut minimal = event();
        minimal.dedupe_key = None;
        minimal.trace_id = None;
        let always: serde_json::Value = serde_json::from_slice(&encode(&minimal)).unwrap();
        let mut always: Vec<&str> = always
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        always.sort();
        required.sort();
        assert_eq!(always, required);
        assert_eq!(schema["additionalProperties"], false);
    }

    #[test]
    fn headers_carry_id_type_version_and_dedupe_key() {
        let mut e = event();
        let h = headers(&e, false);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("id".into(), e.id.clone()),
                ("type".into(), "work_order.completed".into()),
                ("schema_version".into(), "2".into()),
                ("dedupe_key".into(), "wo-1".into()),
            ]
        );
        e.dedupe_key = None;
        assert_eq!(headers(&e, false).count(), 3);
        let marked = headers(&e, true);
        let last = marked.get(3);
        assert_eq!(
            (last.key, last.value),
            (INDEXED_HEADER, Some(b"1".as_slice()))
        );
    }
}
