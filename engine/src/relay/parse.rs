//! Parsing one CDC record into an outbox row: a pure function over the
//! record's value and headers, with a typed result and a typed error (so it
//! can be fuzzed and every shape unit-tested).
//!
//! Accepted shapes:
//! - **Debezium's change envelope**, JSON with or without the converter's
//!   schema wrapper (`{"schema":…,"payload":{…}}`): `op` `c` (insert) and `r`
//!   (snapshot read) carry a row in `after`; `d` (delete) and `t` (truncate)
//!   are skipped; `u` (update) is an error — outbox rows are insert-only.
//! - **The Outbox Event Router's output**: the value is the row's `payload`
//!   (JSON text, or a JSON string holding it when a JsonConverter
//!   double-encoded it), the row id in header `id`, and the other columns in
//!   headers placed by `table.fields.additional.placement` (`tenant_id`,
//!   `type`, `schema_version`, `dedupe_key`, `occurred_at`, `aggregate_type`,
//!   `aggregate_id`). A record with an `id` header is read as router output.
//! - **Tombstones** (no value, or an empty one) are skipped.
//!
//! Only the shape is checked here; [`super::map`] checks the values
//! (tenant id syntax, event type, payload size…).

use serde_json::{Map, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// One outbox row, as it was written to `herald_outbox`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// `id`: the row's UUID.
    pub id: uuid::Uuid,
    /// `tenant_id`.
    pub tenant_id: String,
    /// `aggregatetype`, when the shape carries it.
    pub aggregate_type: Option<String>,
    /// `aggregateid`, when the shape carries it.
    pub aggregate_id: Option<String>,
    /// `type`: the event type.
    pub event_type: String,
    /// `schema_version` (1 when the shape does not carry it).
    pub schema_version: i64,
    /// `dedupe_key`.
    pub dedupe_key: Option<String>,
    /// `payload`: the jsonb column's value.
    pub payload: Value,
    /// `occurred_at`, when the shape carries it.
    pub occurred_at: Option<OffsetDateTime>,
    /// Whether this came from the connector's initial snapshot (`op=r`).
    pub snapshot: bool,
}

/// What a CDC record is.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A new outbox row to relay.
    Row(Box<OutboxRow>),
    /// A record the relay skips on purpose.
    Skip(Skip),
}

/// Why a record is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A tombstone (null value), which follows a delete for log compaction.
    Tombstone,
    /// The delete of an outbox row (applications may clean the table up).
    Delete,
    /// A table truncation.
    Truncate,
}

/// Why a CDC record could not be parsed. The `Display` text is the dead
/// letter's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The value is not JSON (or not UTF-8).
    #[error("the value is not JSON: {0}")]
    NotJson(String),
    /// The value is JSON but neither a change envelope nor router output.
    #[error(
        "not a Debezium change envelope (no `op`) nor Outbox Event Router output (no `id` header)"
    )]
    UnknownShape,
    /// An update of an outbox row: outbox rows are insert-only.
    #[error("an UPDATE of an outbox row (op=u); outbox rows are insert-only")]
    Update,
    /// An `op` Herald does not know.
    #[error("unknown Debezium op {0:?}")]
    UnknownOp(String),
    /// A required column is missing or null.
    #[error("missing column `{0}`")]
    Missing(&'static str),
    /// A column has the wrong type or an unreadable value.
    #[error("column `{column}`: {reason}")]
    Invalid {
        /// The column.
        column: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Parses one record of the CDC topic. `headers` are the record's headers
/// in order (a null header value is `None`).
pub fn parse(
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) -> Result<Parsed, ParseError> {
    let value = match value {
        None => return Ok(Parsed::Skip(Skip::Tombstone)),
        Some(v) if v.iter().all(u8::is_ascii_whitespace) => {
            return Ok(Parsed::Skip(Skip::Tombstone))
        }
        Some(v) => v,
    };
    if header(headers, "id").is_some() {
        return router_output(value, headers);
    }
    let json: Value =
        serde_json::from_slice(value).map_err(|e| ParseError::NotJson(e.to_string()))?;
    change_envelope(json)
}

/// The last header named `key` (Kafka allows repeats; the last one wins).
fn header<'a>(headers: &[(&str, Option<&'a [u8]>)], key: &str) -> Option<Option<&'a [u8]>> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
}

/// A header's text: `None` when absent or null.
fn header_text(
    headers: &[(&str, Option<&[u8]>)],
    key: &'static str,
) -> Result<Option<String>, ParseError> {
    match header(headers, key).flatten() {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .map(|s| Some(s.to_string()))
            .map_err(|_| ParseError::Invalid {
                column: key,
                reason: "header is not UTF-8".into(),
            }),
    }
}

fn router_output(value: &[u8], headers: &[(&str, Option<&[u8]>)]) -> Result<Parsed, ParseError> {
    let id = header_text(headers, "id")?.ok_or(ParseError::Missing("id"))?;
    let id = parse_uuid(&id)?;
    let tenant_id = header_text(headers, "tenant_id")?.ok_or(ParseError::Missing("tenant_id"))?;
    let event_type = header_text(headers, "type")?.ok_or(ParseError::Missing("type"))?;
    let schema_version = match header_text(headers, "schema_version")? {
        None => 1,
        Some(s) => s.trim().parse::<i64>().map_err(|_| ParseError::Invalid {
            column: "schema_version",
            reason: format!("{s:?} is not an integer"),
        })?,
    };
    let occurred_at = header_text(headers, "occurred_at")?
        .map(|s| parse_time(&Value::String(s)))
        .transpose()?;
    let payload: Value =
        serde_json::from_slice(value).map_err(|e| ParseError::NotJson(e.to_string()))?;
    Ok(Parsed::Row(Box::new(OutboxRow {
        id,
        tenant_id,
        aggregate_type: header_text(headers, "aggregate_type")?,
        aggregate_id: header_text(headers, "aggregate_id")?,
        event_type,
        schema_version,
        dedupe_key: header_text(headers, "dedupe_key")?,
        payload: unwrap_json_text(payload)?,
        occurred_at,
        snapshot: false,
    })))
}

fn change_envelope(json: Value) -> Result<Parsed, ParseError> {
    let Value::Object(mut obj) = json else {
        return Err(ParseError::UnknownShape);
    };
    // JsonConverter with schemas.enable=true wraps the envelope.
    if !obj.contains_key("op") && obj.contains_key("schema") {
        match obj.remove("payload") {
            Some(Value::Object(inner)) => obj = inner,
            Some(Value::Null) | None => return Ok(Parsed::Skip(Skip::Tombstone)),
            Some(_) => return Err(ParseError::UnknownShape),
        }
    }
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.clone(),
        _ => return Err(ParseError::UnknownShape),
    };
    let snapshot = match op.as_str() {
        "c" => false,
        "r" => true,
        "d" => return Ok(Parsed::Skip(Skip::Delete)),
        "t" => return Ok(Parsed::Skip(Skip::Truncate)),
        "u" => return Err(ParseError::Update),
        _ => return Err(ParseError::UnknownOp(op)),
    };
    let row = match obj.remove("after") {
        Some(Value::Object(row)) => row,
        Some(Value::Null) | None => return Err(ParseError::Missing("after")),
        Some(_) => {
            return Err(ParseError::Invalid {
                column: "after",
                reason: "is not an object".into(),
            })
        }
    };
    row_columns(row, snapshot).map(|r| Parsed::Row(Box::new(r)))
}

fn row_columns(mut row: Map<String, Value>, snapshot: bool) -> Result<OutboxRow, ParseError> {
    let id = parse_uuid(&required_text(&mut row, "id")?)?;
    let schema_version = match row.remove("schema_version") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| ParseError::Invalid {
            column: "schema_version",
            reason: format!("{n} is not an integer"),
        })?,
        Some(other) => {
            return Err(ParseError::Invalid {
                column: "schema_version",
                reason: format!("{other} is not an integer"),
            })
        }
    };
    let payload = row
        .remove("payload")
        .filter(|v| !v.is_null())
        .ok_or(ParseError::Missing("payload"))?;
    let occurred_at = match row.remove("occurred_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_time(&v)?),
    };
    Ok(OutboxRow {
        id,
        tenant_id: required_text(&mut row, "tenant_id")?,
        aggregate_type: optional_text(&mut row, "aggregatetype")?,
        aggregate_id: optional_text(&mut row, "aggregateid")?,
        event_type: required_text(&mut row, "type")?,
        schema_version,
        dedupe_key: optional_text(&mut row, "dedupe_key")?,
        payload: unwrap_json_text(payload)?,
        occurred_at,
        snapshot,
    })
}

fn optional_text(
    row: &mut Map<String, Value>,
    column: &'static str,
) -> Result<Option<String>, ParseError> {
    match row.remove(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ParseError::Invalid {
            column,
            reason: format!("expected text, found {}", kind(&other)),
        }),
    }
}

fn required_text(row: &mut Map<String, Value>, column: &'static str) -> Result<String, ParseError> {
    optional_text(row, column)?.ok_or(ParseError::Missing(column))
}

fn parse_uuid(s: &str) -> Result<uuid::Uuid, ParseError> {
    uuid::Uuid::parse_str(s.trim()).map_err(|e| ParseError::Invalid {
        column: "id",
        reason: format!("{s:?} is not a UUID: {e}"),
    })
}

/// A `timestamptz` as Debezium renders it: an ISO-8601 string
/// (`io.debezium.time.ZonedTimestamp`, the default), or microseconds /
/// milliseconds since the epoch when `time.precision.mode` changes it.
fn parse_time(v: &Value) -> Result<OffsetDateTime, ParseError> {
    let bad = |reason: String| ParseError::Invalid {
        column: "occurred_at",
        reason,
    };
    match v {
        Value::String(s) => OffsetDateTime::parse(s.trim(), &Rfc3339)
            .map_err(|e| bad(format!("{s:?} is not an RFC 3339 timestamp: {e}"))),
        Value::Number(n) => {
            let n = n
                .as_i64()
                .ok_or_else(|| bad(format!("{n} is not an integer")))?;
            // Microseconds unless it is too small to be a date after 2001 in µs.
            let nanos = if n.unsigned_abs() >= 1_000_000_000_000_000 {
                i128::from(n) * 1_000
            } else {
                i128::from(n) * 1_000_000
            };
            OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| bad(e.to_string()))
        }
        other => Err(bad(format!("expected a timestamp, found {}", kind(other)))),
    }
}

/// Debezium renders `jsonb` as its JSON text (a string); the router with a
/// JsonConverter may double-encode it. Either way, the JSON inside.
fn unwrap_json_text(v: Value) -> Result<Value, ParseError> {
    match v {
        Value::String(text) => serde_json::from_str(&text).map_err(|e| ParseError::Invalid {
            column: "payload",
            reason: format!("is not JSON text: {e}"),
        }),
        other => Ok(other),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ID: &str = "0192f0c4-a1b2-7c3d-8e9f-0a1b2c3d4e5f";

    fn after() -> Value {
        json!({
            "id": ID,
            "tenant_id": "acme",
            "aggregatetype": "work_order",
            "aggregateid": "wo-1",
            "type": "work_order.completed",
            "schema_version": 2,
            "dedupe_key": "wo-1-done",
            "payload": "{\"wo\": 1, \"by\": \"ana\"}",
            "occurred_at": "2026-01-02T03:04:05.123456Z"
        })
    }

    fn envelope(op: &str, after: Value) -> Value {
        json!({
            "before": null,
            "after": after,
            "source": {"connector": "postgresql", "db": "app", "table": "herald_outbox", "lsn": 123},
            "op": op,
            "ts_ms": 1_767_323_045_000i64
        })
    }

    fn row(p: Result<Parsed, ParseError>) -> OutboxRow {
        match p {
            Ok(Parsed::Row(r)) => *r,
            other => panic!("expected a row, got {other:?}"),
        }
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[test]
    fn plain_envelope_without_schema() {
        let r = row(parse(Some(&bytes(&envelope("c", after()))), &[]));
        assert_eq!(r.id.to_string(), ID);
        assert_eq!(r.tenant_id, "acme");
        assert_eq!(r.event_type, "work_order.completed");
        assert_eq!(r.schema_version, 2);
        assert_eq!(r.dedupe_key.as_deref(), Some("wo-1-done"));
        assert_eq!(r.aggregate_type.as_deref(), Some("work_order"));
        assert_eq!(r.aggregate_id.as_deref(), Some("wo-1"));
        assert_eq!(r.payload, json!({"wo": 1, "by": "ana"}));
        assert_eq!(
            r.occurred_at,
            Some(time::macros::datetime!(2026-01-02 03:04:05.123456 UTC))
        );
        assert!(!r.snapshot);
    }

    #[test]
    fn envelope_with_schema_and_snapshot_read() {
        let v =
            json!({"schema": {"type": "struct", "fields": []}, "payload": envelope("r", after())});
        let r = row(parse(Some(&bytes(&v)), &[]));
        assert!(r.snapshot);
        assert_eq!(r.tenant_id, "acme");
        // A schema envelope whose payload is null is a tombstone.
        let v = json!({"schema": null, "payload": null});
        assert_eq!(
            parse(Some(&bytes(&v)), &[]),
            Ok(Parsed::Skip(Skip::Tombstone))
        );
    }

    #[test]
    fn payload_as_object_and_defaults() {
        let mut a = after();
        a["payload"] = json!({"x": [1, 2]});
        a.as_object_mut().unwrap().remove("schema_version");
        a["dedupe_key"] = Value::Null;
        a["occurred_at"] = json!(1_767_323_045_123_456i64);
        let r = row(parse(Some(&bytes(&envelope("c", a))), &[]));
        assert_eq!(r.payload, json!({"x": [1, 2]}));
        assert_eq!(r.schema_version, 1);
        assert_eq!(r.dedupe_key, None);
        assert_eq!(r.occurred_at.unwrap().unix_timestamp(), 1_767_323_045);
    }

    #[test]
    fn router_output_with_headers() {
        let id = ID.as_bytes();
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("id", Some(id)),
            ("tenant_id", Some(b"acme")),
            ("type", Some(b"work_order.completed")),
            ("schema_version", Some(b"3")),
            ("dedupe_key", None),
            ("occurred_at", Some(b"2026-01-02T03:04:05Z")),
            ("aggregate_type", Some(b"work_order")),
            ("aggregate_id", Some(b"wo-1")),
        ];
        let r = row(parse(Some(br#"{"wo": 1}"#), &headers));
        assert_eq!(r.id.to_string(), ID);
        assert_eq!(r.schema_version, 3);
        assert_eq!(r.dedupe_key, None);
        assert_eq!(r.payload, json!({"wo": 1}));
        assert_eq!(r.aggregate_id.as_deref(), Some("wo-1"));
        // Double-encoded by a JsonConverter: the string holds the JSON.
        let r = row(parse(Some(br#""{\"wo\": 2}""#), &headers));
        assert_eq!(r.payload, json!({"wo": 2}));
        // Without a tenant header it cannot be relayed.
        let no_tenant: Vec<_> = headers
            .iter()
            .filter(|(k, _)| *k != "tenant_id")
            .cloned()
            .collect();
        assert_eq!(
            parse(Some(b"{}"), &no_tenant),
            Err(ParseError::Missing("tenant_id"))
        );
        let bad_version: Vec<_> = headers
            .iter()
            .map(|(k, v)| {
                if *k == "schema_version" {
                    (*k, Some(&b"two"[..]))
                } else {
                    (*k, *v)
                }
            })
            .collect();
        assert!(matches!(
            parse(Some(b"{}"), &bad_version),
            Err(ParseError::Invalid {
                column: "schema_version",
                ..
            })
        ));
        assert!(matches!(
            parse(Some(b"{not json"), &headers),
            Err(ParseError::NotJson(_))
        ));
    }

    #[test]
    fn tombstones_deletes_and_truncates_are_skipped() {
        assert_eq!(parse(None, &[]), Ok(Parsed::Skip(Skip::Tombstone)));
        assert_eq!(parse(Some(b""), &[]), Ok(Parsed::Skip(Skip::Tombstone)));
        let mut d = envelope("d", Value::Null);
        d["before"] = after();
        assert_eq!(parse(Some(&bytes(&d)), &[]), Ok(Parsed::Skip(Skip::Delete)));
        assert_eq!(
            parse(Some(&bytes(&envelope("t", Value::Null))), &[]),
            Ok(Parsed::Skip(Skip::Truncate))
        );
    }

    #[test]
    fn updates_and_unknown_ops_are_errors() {
        assert_eq!(
            parse(Some(&bytes(&envelope("u", after()))), &[]),
            Err(ParseError::Update)
        );
        assert_eq!(
            parse(Some(&bytes(&envelope("x", after()))), &[]),
            Err(ParseError::UnknownOp("x".into()))
        );
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        assert!(matches!(
            parse(Some(b"{\"op\":"), &[]),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse(Some(&[0xff, 0xfe]), &[]),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(parse(Some(b"[1,2]"), &[]), Err(ParseError::UnknownShape));
        assert_eq!(
            parse(Some(b"{\"a\":1}"), &[]),
            Err(ParseError::UnknownShape)
        );
        assert_eq!(
            parse(Some(&bytes(&envelope("c", Value::Null))), &[]),
            Err(ParseError::Missing("after"))
        );
        let mut a = after();
        a.as_object_mut().unwrap().remove("tenant_id");
        assert_eq!(
            parse(Some(&bytes(&envelope("c", a))), &[]),
            Err(ParseError::Missing("tenant_id"))
        );
        let mut a = after();
        a["schema_version"] = json!("2");
        assert!(matches!(
            parse(Some(&bytes(&envelope("c", a))), &[]),
            Err(ParseError::Invalid {
                column: "schema_version",
                ..
            })
        ));
        let mut a = after();
        a["id"] = json!("not-a-uuid");
        assert!(matches!(
            parse(Some(&bytes(&envelope("c", a))), &[]),
            Err(ParseError::Invalid { column: "id", .. })
        ));
        let mut a = after();
        a["payload"] = json!("{broken");
        assert!(matches!(
            parse(Some(&bytes(&envelope("c", a))), &[]),
            Err(ParseError::Invalid {
                column: "payload",
                ..
            })
        ));
        let mut a = after();
        a["occurred_at"] = json!("yesterday");
        assert!(matches!(
            parse(Some(&bytes(&envelope("c", a))), &[]),
            Err(ParseError::Invalid {
                column: "occurred_at",
                ..
            })
        ));
        let mut a = after();
        a["tenant_id"] = json!(7);
        let e = parse(Some(&bytes(&envelope("c", a))), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "column `tenant_id`: expected text, found a number"
        );
    }
}
