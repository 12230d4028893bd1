//! What callers hand the engine — new events and subscriptions — and the
//! rules they must meet. Every front end (REST, CLI, CDC relay) refuses the
//! same bad input because every one of them checks it here.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    error::EngineError,
    filters::{validate_filter, OPERATIONAL_PREFIX},
    ids,
    model::{DomainEvent, EventSource, Ordering, SignatureScheme},
    payload::Payload,
};

/// Largest accepted payload, in bytes of JSON.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Headers a subscription may not override.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
];

/// A new subscription, as asked for. `Debug` redacts the secret.
#[derive(Clone, Default)]
pub struct NewSubscription {
    /// Endpoint URL.
    pub url: String,
    /// Event type filters.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// A chosen secret (`whsec_…`); generated when absent.
    pub secret: Option<String>,
    /// Which signatures deliveries carry; an Ed25519 key is generated when
    /// the scheme uses one.
    pub signature: SignatureScheme,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second.
    pub rate_limit: Option<u32>,
    /// Delivery order.
    pub ordering: Ordering,
    /// What each delivery's body carries.
    pub payload: crate::model::PayloadForm,
    /// Concurrent requests, 1 to [`MAX_IN_FLIGHT_LIMIT`].
    pub max_in_flight: Option<u32>,
    /// Attempt timeout in seconds, 1 to [`MAX_TIMEOUT_SECONDS`].
    pub timeout_seconds: Option<u32>,
    /// A CEL payload filter ([`crate::payload_filter`]).
    pub filter: Option<String>,
    /// Connection settings of a `kafka://` destination.
    pub kafka: Option<crate::kafka_target::KafkaSettings>,
    /// How deliveries authenticate to an HTTP endpoint.
    pub auth: Option<crate::endpoint_auth::EndpointAuth>,
    /// The client certificate and trusted authorities of an `https` endpoint.
    pub tls: Option<crate::endpoint_auth::ClientTls>,
}

impl std::fmt::Debug for NewSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSubscription")
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("description", &self.description)
            .field("secret", &crate::signing::redacted(&self.secret))
            .field("signature", &self.signature)
            .field("headers", &self.headers)
            .field("rate_limit", &self.rate_limit)
            .field("ordering", &self.ordering)
            .field("payload", &self.payload)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("filter", &self.filter)
            .field("kafka", &self.kafka)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Largest per-subscription in-flight limit.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 256;
/// Largest per-subscription attempt timeout, in seconds.
pub const MAX_TIMEOUT_SECONDS: u32 = 60;
/// Largest per-subscription rate limit, deliveries per second.
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// A new event, as emitted.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// Dotted event type.
    pub event_type: String,
    /// JSON object.
    pub payload: Payload,
    /// Idempotency key.
    pub dedupe_key: Option<String>,
    /// Payload schema version (default 1).
    pub schema_version: Option<u32>,
    /// When it happened (default: now).
    pub occurred_at: Option<OffsetDateTime>,
    /// Trace id for lineage.
    pub trace_id: Option<String>,
}

/// SHA-256 of an API key, the only form in which keys are stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Checks a tenant id: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn validate_tenant_id(id: &str) -> Result<(), EngineError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(
            "id",
            "1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
        ))
    }
}

/// Checks that a payload filter compiles within its limits.
pub fn validate_payload_filter(filter: Option<&str>) -> Result<(), EngineError> {
    match filter {
        Some(f) => crate::payload_filter::PayloadFilter::compile(f)
            .map(|_| ())
            .map_err(|e| EngineError::invalid("filter", e.to_string())),
        None => Ok(()),
    }
}

/// Checks the per-subscription limits against their bounds.
pub fn validate_limits(
    rate_limit: Option<u32>,
    max_in_flight: Option<u32>,
    timeout_seconds: Option<u32>,
) -> Result<(), EngineError> {
    let bounds = [
        (
            "rate_limit",
            rate_limit,
            MAX_RATE_LIMIT,
            "deliveries per second",
        ),
        (
            "max_in_flight",
            max_in_flight,
            MAX_IN_FLIGHT_LIMIT,
            "concurrent requests",
        ),
        (
            "timeout_seconds",
            timeout_seconds,
            MAX_TIMEOUT_SECONDS,
            "seconds",
        ),
    ];
    for (field, value, max, unit) in bounds {
        if let Some(v) = value {
            if v == 0 || v > max {
                return Err(EngineError::invalid(
                    field,
                    format!("must be between 1 and {max} {unit}"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks an event as emitted — a dotted type (not `herald.*` from the API),
/// a JSON object payload of at most [`MAX_PAYLOAD_BYTES`], a printable
/// `dedupe_key` of 1 to 256 characters, a `schema_version` from 1 — and
/// builds the [`DomainEvent`] (a new id, received now). Schema validation
/// against the catalogue is `Catalogue::check`'s, afterwards.
pub fn build_event(
    tenant_id: &str,
    new: NewEvent,
    source: EventSource,
) -> Result<DomainEvent, EngineError> {
    validate_filter(&new.event_type)
        .ok()
        .filter(|()| !new.event_type.contains('*'))
        .ok_or_else(|| {
            EngineError::invalid(
                "event_type",
                format!(
                    "{:?} is not an event type; use dotted names like work_order.completed",
                    new.event_type
                ),
            )
        })?;
    if source == EventSource::Api && new.event_type.starts_with(OPERATIONAL_PREFIX) {
        return Err(EngineError::invalid(
            "event_type",
            format!("types starting with {OPERATIONAL_PREFIX:?} are reserved for Herald's operational events"),
        ));
    }
    if !new.payload.is_object() {
        return Err(EngineError::invalid("payload", "must be a JSON object"));
    }
    let size = new.payload.size();
    if size > MAX_PAYLOAD_BYTES {
        return Err(EngineError::invalid(
            "payload",
            format!("is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}"),
        ));
    }
    if let Some(key) = &new.dedupe_key {
        if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
            return Err(EngineError::invalid(
                "dedupe_key",
                "1 to 256 printable characters",
            ));
        }
    }
    if let Some(trace) = &new.trace_id {
        if trace.is_empty() || trace.len() > 256 || trace.chars().any(char::is_control) {
            return Err(EngineError::invalid(
                "trace_id",
                "1 to 256 printable characters",
            ));
        }
    }
    let schema_version = new.schema_version.unwrap_or(1);
    if schema_version == 0 {
        return Err(EngineError::invalid("schema_version", "starts at 1"));
    }
    let now = OffsetDateTime::now_utc();
    Ok(DomainEvent {
        id: ids::new_id(ids::EVENT),
        tenant_id: tenant_id.to_string(),
        event_type: new.event_type,
        schema_version,
        dedupe_key: new.dedupe_key,
        occurred_at: new.occurred_at.unwrap_or(now),
        received_at: now,
        payload: new.payload,
        source,
        aggregate_type: None,
        aggregate_id: None,
        trace_id: new.trace_id,
    })
}

/// Checks a subscription's event-type filters (1 to 100, each valid).
pub fn validate_event_types(types: &[String]) -> Result<(), EngineError> {
    if types.is_empty() || types.len() > 100 {
        return Err(EngineError::invalid(
            "event_types",
            "give 1 to 100 event types or patterns",
        ));
    }
    types
        .iter()
        .try_for_each(|t| validate_filter(t).map_err(|m| EngineError::invalid("event_types", m)))
}

/// Checks a subscription's custom headers: at most 20, valid, none Herald sets.
pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), EngineError> {
    if headers.len() > 20 {
        return Err(EngineError::invalid("headers", "at most 20 custom headers"));
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::try_from(name.as_str()).is_err()
            || http::HeaderValue::try_from(value.as_str()).is_err()
        {
            return Err(EngineError::invalid(
                "headers",
                format!("{name:?} is not a valid header"),
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("herald-")
        {
            return Err(EngineError::invalid(
                "headers",
                format!("{name:?} is set by Herald and cannot be overridden"),
            ));
        }
    }
    Ok(())
}
