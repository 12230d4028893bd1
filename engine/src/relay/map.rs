//! Mapping an outbox row to a [`DomainEvent`], with the same checks a REST
//! emit gets (tenant id, event type, payload object and size, dedupe key,
//! schema version, then [`check_schema`]: the payload against the registered
//! schema of its type and version), so both paths refuse the same input.
//!
//! The event id is derived from the outbox row's id (`evt_` + its 32 hex
//! digits): the connector re-reading a row (a snapshot after a lost offset,
//! a relay replay) yields the same event id, which fan-out deduplicates.
//! With UUIDv7 row ids the event ids stay time-ordered.

use time::OffsetDateTime;

use super::parse::OutboxRow;
use crate::{
    catalogue::Catalogue,
    error::EngineError,
    ids,
    model::{DomainEvent, EventSource},
    payload::Payload,
    subscriptions::validate_filter,
};

/// Why a well-formed outbox row cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}`: {reason}")]
pub struct MapError {
    /// The offending column.
    pub column: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(column: &'static str, reason: impl Into<String>) -> MapError {
    MapError {
        column,
        reason: reason.into(),
    }
}

/// The event id of an outbox row: `evt_` and the row UUID's hex digits.
pub fn event_id(row_id: uuid::Uuid) -> String {
    format!("{}_{}", ids::EVENT, row_id.simple())
}

/// The DomainEvent for `row`, received at `now`.
pub fn to_event(row: OutboxRow, now: OffsetDateTime) -> Result<DomainEvent, MapError> {
    crate::input::validate_tenant_id(&row.tenant_id)
        .map_err(|_| bad("tenant_id", format!("{:?}: 1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit", row.tenant_id)))?;
    if validate_filter(&row.event_type).is_err() || row.event_type.contains('*') {
        return Err(bad(
            "type",
            format!(
                "{:?} is not an event type; use dotted names like work_order.completed",
                row.event_type
            ),
        ));
    }
    if !row.payload.is_object() {
        return Err(bad("payload", "must be a JSON object"));
    }
    let payload = Payload::from_value(&row.payload);
    let size = payload.size();
    if size > crate::input::MAX_PAYLOAD_BYTES {
        return Err(bad(
            "payload",
            format!(
                "is {size} bytes; the limit is {}",
                crate::input::MAX_PAYLOAD_BYTES
            ),
        ));
    }
    if let Some(key) = &row.dedupe_key {
        if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
            return Err(bad("dedupe_key", "1 to 256 printable characters"));
        }
    }
    let schema_version = u32::try_from(row.schema_version)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            bad(
                "schema_version",
                format!("{} is not a version (1 or more)", row.schema_version),
            )
        })?;
    for (column, v) in [
        ("aggregatetype", &row.aggregate_type),
        ("aggregateid", &row.aggregate_id),
    ] {
        if v.as_ref().is_some_and(|s| s.len() > 256) {
            return Err(bad(column, "longer than 256 bytes"));
        }
    }
    Ok(DomainEvent {
        id: event_id(row.id),
        tenant_id: row.tenant_id,
        event_type: row.event_type,
        schema_version,
        dedupe_key: row.dedupe_key,
        occurred_at: row.occurred_at.unwrap_or(now),
        received_at: now,
        payload,
        source: EventSource::Cdc,
        aggregate_type: row.aggregate_type,
        aggregate_id: row.aggregate_id,
        trace_id: None,
    })
}

/// Checks `event` against the catalogue as a REST emit is checked
/// ([`Catalogue::check`]): an unregistered version of a registered type is
/// refused on `schema_version`, a payload that violates the schema on
/// `payload` (listing the violations).
pub fn check_schema(event: &DomainEvent, catalogue: &Catalogue) -> Result<(), MapError> {
    let checked = catalogue.check(
        &event.tenant_id,
        &event.event_type,
        event.schema_version,
        &event.payload,
    );
    match checked {
        Ok(()) => Ok(()),
        Err(EngineError::Invalid { message, .. }) => Err(bad("schema_version", message)),
        Err(EngineError::SchemaViolation {
            event_type,
            schema_version,
            errors,
        }) => {
            let issues: Vec<String> = errors
                .iter()
                .map(|i| format!("{:?}: {}", i.instance_path, i.message))
                .collect();
            Err(bad(
                "payload",
                format!(
                    "does not match the schema of {event_type} v{schema_version}: {}",
                    issues.join("; ")
                ),
            ))
        }
        Err(other) => Err(bad("payload", other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn row() -> OutboxRow {
        OutboxRow {
            id: uuid::Uuid::parse_str("0192f0c4-a1b2-7c3d-8e9f-0a1b2c3d4e5f").unwrap(),
            tenant_id: "acme".into(),
            aggregate_type: Some("work_order".into()),
            aggregate_id: Some("wo-1".into()),
            event_type: "work_order.completed".into(),
            schema_version: 2,
            dedupe_key: Some("k".into()),
            payload: json!({"wo": 1}),
            occurred_at: Some(datetime!(2026-01-02 03:04:05 UTC)),
            snapshot: false,
        }
    }

    #[test]
    fn maps_every_column_and_derives_the_id() {
        let now = datetime!(2026-01-02 03:04:06 UTC);
        let e = to_event(row(), now).unwrap();
        assert_eq!(e.id, "evt_0192f0c4a1b27c3d8e9f0a1b2c3d4e5f");
        assert!(ids::is_valid(ids::EVENT, &e.id));
        assert_eq!(e.source, EventSource::Cdc);
        assert_eq!(e.schema_version, 2);
        assert_eq!(e.occurred_at, datetime!(2026-01-02 03:04:05 UTC));
        assert_eq!(e.received_at, now);
        assert_eq!(e.aggregate_type.as_deref(), Some("work_order"));
        assert_eq!(e.aggregate_id.as_deref(), Some("wo-1"));
        // The same row gives the same event id, whenever it is relayed.
        assert_eq!(
            to_event(row(), datetime!(2027-01-01 0:00 UTC)).unwrap().id,
            e.id
        );
        let mut r = row();
        r.occurred_at = None;
        assert_eq!(to_event(r, now).unwrap().occurred_at, now);
    }

    #[test]
    fn refuses_what_a_rest_emit_refuses() {
        let now = OffsetDateTime::now_utc();
        type Change = Box<dyn Fn(&mut OutboxRow)>;
        let cases: Vec<(&str, Change)> = vec![
            ("tenant_id", Box::new(|r| r.tenant_id = "Acme Corp".into())),
            ("tenant_id", Box::new(|r| r.tenant_id = String::new())),
            ("type", Box::new(|r| r.event_type = "work_order.*".into())),
            ("type", Box::new(|r| r.event_type = "has space".into())),
            ("payload", Box::new(|r| r.payload = json!([1]))),
            ("payload", Box::new(|r| r.payload = json!("text"))),
            (
                "payload",
                Box::new(|r| r.payload = json!({"x": "y".repeat(300 * 1024)})),
            ),
            (
                "dedupe_key",
                Box::new(|r| r.dedupe_key = Some(String::new())),
            ),
            ("schema_version", Box::new(|r| r.schema_version = 0)),
            ("schema_version", Box::new(|r| r.schema_version = -3)),
            (
                "schema_version",
                Box::new(|r| r.schema_version = i64::from(u32::MAX) + 1),
            ),
            (
                "aggregateid",
                Box::new(|r| r.aggregate_id = Some("x".repeat(300))),
            ),
        ];
        for (column, change) in cases {
            let mut r = row();
            change(&mut r);
            let err = to_event(r, now).unwrap_err();
            assert_eq!(err.column, column, "{err}");
        }
    }

    #[test]
    fn refuses_what_the_catalogue_refuses() {
        let catalogue = Catalogue::default();
        catalogue.add(
            Catalogue::prepare(
                "acme",
                "work_order.completed",
                2,
                json!({"type": "object", "required": ["wo"]}),
            )
            .unwrap(),
        );
        let now = OffsetDateTime::now_utc();
        let ok = to_event(row(), now).unwrap();
        assert!(check_schema(&ok, &catalogue).is_ok());
        let mut r = row();
        r.payload = json!({"other": 1});
        let err = check_schema(&to_event(r, now).unwrap(), &catalogue).unwrap_err();
        assert_eq!(err.column, "payload", "{err}");
        assert!(err.reason.contains("wo"), "{err}");
        let mut r = row();
        r.schema_version = 3;
        let err = check_schema(&to_event(r, now).unwrap(), &catalogue).unwrap_err();
        assert_eq!(err.column, "schema_version", "{err}");
        let mut r = row();
        r.tenant_id = "globex".into();
        r.payload = json!({});
        assert!(
            check_schema(&to_event(r, now).unwrap(), &catalogue).is_ok(),
            "schemas are per tenant"
        );
    }
}
