//! The data artifacts every tenant owns: [`DomainEvent`],
//! [`WebhookSubscription`] and [`WebhookDeliveryLog`] (DESIGN §2), and the
//! envelope that goes on the wire (DESIGN §4).
//!
//! Field names here are the wire names; changing one is a breaking change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ed25519::SigningKey, payload::Payload, signing::SigningSecret};

/// Where an event entered Herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// Emitted through the REST API.
    Api,
    /// Relayed from a Debezium CDC topic.
    Cdc,
    /// Re-emitted by a replay.
    Replay,
    /// Emitted by Herald itself (operational events such as `herald.delivery.dead`).
    Herald,
}

/// A domain event, as stored in the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DomainEvent {
    /// Time-ordered id, `evt_…`; also the `webhook-id` of every delivery.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Dotted event type, e.g. `work_order.completed`.
    pub event_type: String,
    /// Version of the payload's schema.
    pub schema_version: u32,
    /// Idempotency key, unique per tenant within the dedupe window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
    /// When the event happened (given by the emitter, or the time of the emit).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// When Herald accepted it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The event body, a JSON object (its compact text).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Payload,
    /// Lineage: where it came from.
    pub source: EventSource,
    /// Lineage: aggregate type, when known (CDC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_type: Option<String>,
    /// Lineage: aggregate id, when known (CDC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    /// Lineage: trace id, when the emitter gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The body of every webhook request (DESIGN §4), borrowed from the event.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// Event id.
    pub id: &'a str,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// Payload schema version.
    pub schema_version: u32,
    /// Owning tenant.
    pub tenant_id: &'a str,
    /// Idempotency key, `null` when none.
    pub dedupe_key: Option<&'a str>,
    /// When the event happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The payload.
    pub data: &'a Payload,
}

impl DomainEvent {
    /// The wire envelope of this event.
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope {
            id: &self.id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            tenant_id: &self.tenant_id,
            dedupe_key: self.dedupe_key.as_deref(),
            occurred_at: self.occurred_at,
            data: &self.payload,
        }
    }

    /// The envelope serialised as the webhook request body.
    pub fn envelope_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.size() + 512);
        serde_json::to_writer(&mut out, &self.envelope()).expect("an envelope always serialises");
        out
    }

    /// The event as JSON, as the embedded log and store keep it, encoded
    /// into one allocation of about its size (growing a vector from
    /// nothing reallocated it four or five times per 1 KiB event).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.payload.size() + 512);
        serde_json::to_writer(&mut out, self).expect("an event always serialises");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// The request body a subscription with `form` receives: the whole
    /// envelope, or the thin one (no `data`).
    pub fn body(&self, form: PayloadForm) -> Vec<u8> {
        match form {
            PayloadForm::Full => self.envelope_bytes(),
            PayloadForm::Thin => serde_json::to_vec(&ThinEnvelope {
                id: &self.id,
                event_type: &self.event_type,
                schema_version: self.schema_version,
                tenant_id: &self.tenant_id,
                dedupe_key: self.dedupe_key.as_deref(),
                occurred_at: self.occurred_at,
                received_at: self.received_at,
            })
            .expect("an envelope always serialises"),
        }
    }
}

/// The body of a thin delivery: the envelope without `data`, so sensitive
/// data never travels in a webhook; the receiver fetches the event by id
/// (`GET /api/v1/integrations/events/{id}`).
#[derive(Debug, Serialize)]
struct ThinEnvelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    schema_version: u32,
    tenant_id: &'a str,
    dedupe_key: Option<&'a str>,
    #[serde(with = "time::serde::rfc3339")]
    occurred_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    received_at: OffsetDateTime,
}

/// What a delivery's body carries.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadForm {
    /// The whole envelope, `data` included.
    #[default]
    Full,
    /// Id, type, schema version, tenant, dedupe key and times only; the
    /// receiver fetches the event with its API key.
    Thin,
}

/// Lifecycle state of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionStatus {
    /// Receiving deliveries.
    Active,
    /// Paused by the tenant; deliveries wait.
    Paused,
    /// Disabled by Herald or the tenant, with a reason.
    Disabled,
}

/// How deliveries to a subscription are ordered.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Deliveries go out concurrently; a failing event holds nothing up.
    #[default]
    Unordered,
    /// One delivery at a time, in event-log order per tenant: a failing
    /// event holds the ones behind it until it succeeds or dies.
    Strict,
}

/// One signing secret of a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretEntry {
    /// The secret: sealed (`enc:v1:…`) in a stored body, which the store's
    /// codec writes and reads (see [`crate::sealing`]); `whsec_…` elsewhere.
    #[serde(with = "crate::sealing::secret")]
    pub secret: SigningSecret,
    /// When it stops signing; `None` for the current secret.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Which Standard Webhooks signatures a subscription's deliveries carry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureScheme {
    /// `v1`: HMAC-SHA256 with the shared `whsec_` secret.
    #[default]
    Hmac,
    /// `v1a`: Ed25519; receivers verify with the `whpk_` public key.
    Ed25519,
    /// Both a `v1` and a `v1a` signature on every delivery.
    Both,
}

impl SignatureScheme {
    /// Whether deliveries carry HMAC (`v1`) signatures.
    pub fn hmac(self) -> bool {
        matches!(self, Self::Hmac | Self::Both)
    }

    /// Whether deliveries carry Ed25519 (`v1a`) signatures.
    pub fn ed25519(self) -> bool {
        matches!(self, Self::Ed25519 | Self::Both)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hmac => "hmac",
            Self::Ed25519 => "ed25519",
            Self::Both => "both",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Hmac, Self::Ed25519, Self::Both]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One Ed25519 signing key of a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The private key: sealed (`enc:v1:…`) in a stored body, like a
    /// [`SecretEntry`]'s secret; `whsk_…` elsewhere.
    #[serde(with = "crate::sealing::signing_key")]
    pub key: SigningKey,
    /// When it stops signing; `None` for the current key.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A tenant's webhook subscription (an endpoint plus what it wants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSubscription {
    /// `sub_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Exact event types and `prefix.*` wildcards (`*` matches everything).
    pub event_types: Vec<String>,
    /// Free text for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// Lifecycle state.
    pub status: SubscriptionStatus,
    /// Why it is disabled, when it is.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Signing secrets: the current one first, then older ones until they expire.
    pub secrets: Vec<SecretEntry>,
    /// Which signatures deliveries carry (bodies from before Ed25519 read as `hmac`).
    #[serde(default)]
    pub signature: SignatureScheme,
    /// Ed25519 keys, when the scheme uses them: the current one first, then
    /// older ones until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<KeyEntry>,
    /// Extra request headers sent with every delivery.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second, when limited.
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// Delivery order: `unordered` (full concurrency) or `strict` (one at a
    /// time, in event-log order).
    #[serde(default)]
    pub ordering: Ordering,
    /// What each delivery's body carries (subscriptions stored before this
    /// read as `full`).
    #[serde(default)]
    pub payload: PayloadForm,
    /// Concurrent requests to this endpoint, when lower than the server's limit.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Total timeout of one attempt, in seconds, when not the server's default.
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// A CEL expression over the event (`crate::payload_filter`): only the
    /// events it matches are delivered; `None` delivers all.
    #[serde(default)]
    pub filter: Option<String>,
    /// Connection settings of a `kafka://` destination (password sealed at
    /// rest); `None` for HTTP and for a plaintext broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<crate::kafka_target::KafkaSettings>,
    /// The `Authorization` each HTTP delivery carries (secrets sealed at
    /// rest); `None`: the signature only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::endpoint_auth::EndpointAuth>,
    /// The TLS client certificate (mutual TLS) and the authorities trusted
    /// for an `https` endpoint (the key sealed at rest); `None`: the public
    /// roots, no client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::endpoint_auth::ClientTls>,
    /// Since when every attempt failed (stored once the failures lasted
    /// [`failing_grace`](crate::delivery::decide::failing_grace), cleared by
    /// a success); a subscription failing for longer than the configured
    /// period is disabled.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl WebhookSubscription {
    /// The secrets that sign at `now`: the current one and unexpired older ones.
    pub fn live_secrets(&self, now: OffsetDateTime) -> impl Iterator<Item = &SigningSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|t| t > now))
            .map(|s| &s.secret)
    }

    /// The Ed25519 keys that sign at `now` (none unless the scheme uses Ed25519).
    pub fn live_keys(&self, now: OffsetDateTime) -> impl Iterator<Item = &KeyEntry> {
        let on = self.signature.ed25519();
        self.signing_keys
            .iter()
            .filter(move |k| on && k.expires_at.is_none_or(|t| t > now))
    }

    /// The `webhook-signature` header of one delivery at `now`: one `v1`
    /// entry per live secret (when the scheme uses HMAC), then one `v1a`
    /// entry per live key (when it uses Ed25519), space separated.
    pub fn signature_header(
        &self,
        now: OffsetDateTime,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> String {
        let mut entries = Vec::with_capacity(2);
        if self.signature.hmac() {
            entries.extend(
                self.live_secrets(now)
                    .map(|s| s.sign(msg_id, timestamp, body)),
            );
        }
        entries.extend(
            self.live_keys(now)
                .map(|k| k.key.sign(msg_id, timestamp, body)),
        );
        entries.join(" ")
    }

    /// Whether this subscription wants events of `event_type`.
    pub fn matches(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|f| crate::filters::filter_matches(f, event_type))
    }
}

/// Why a delivery was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// First attempt after fan-out.
    Initial,
    /// A scheduled retry.
    Retry,
    /// A replay asked for by the tenant.
    Replay,
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// Failed; another attempt is scheduled (`next_attempt_at`).
    Failed,
    /// Failed and the retry schedule is exhausted; replayable.
    Dead,
}

impl Outcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delivered" => Some(Outcome::Delivered),
            "failed" => Some(Outcome::Failed),
            "dead" => Some(Outcome::Dead),
            _ => None,
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// No answer within the timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The TLS handshake failed (bad certificate, protocol).
    Tls,
    /// The endpoint answered with a non-2xx status.
    HttpStatus,
    /// The endpoint's circuit breaker is open; nothing was sent.
    CircuitOpen,
    /// The destination is not a public address.
    SsrfBlocked,
    /// Anything else on the wire (reset, protocol error).
    Transport,
    /// The endpoint's credentials could not be had: the OAuth2 token
    /// endpoint failed or refused them; nothing was sent to the endpoint.
    Auth,
}

/// One delivery attempt, as recorded in the delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryLog {
    /// `att_…`, unique per attempt.
    pub id: String,
    /// `dlv_…`, shared by all attempts of one delivery.
    pub delivery_id: String,
    /// The event delivered.
    pub event_id: String,
    /// The subscription delivered to.
    pub subscription_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// 1 for the first attempt of the delivery.
    pub attempt: u32,
    /// Why this attempt happened.
    pub trigger: Trigger,
    /// For replays: the delivery this one replays.
    #[serde(default)]
    pub replay_of: Option<String>,
    /// The URL the request went to.
    pub url: String,
    /// When the request started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// HTTP status, when the endpoint answered.
    pub status_code: Option<u16>,
    /// Milliseconds from request start to the end of the response.
    pub latency_ms: Option<u64>,
    /// The response body, truncated.
    #[serde(default)]
    pub response_body: Option<String>,
    /// The `Location` header of a redirect (redirects are not followed).
    #[serde(default)]
    pub location: Option<String>,
    /// Why it failed.
    pub error: Option<ErrorClass>,
    /// Human-readable error detail.
    #[serde(default)]
    pub error_message: Option<String>,
    /// What the attempt came to.
    pub outcome: Outcome,
    /// When the next attempt is due, for `failed`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// A delivery waiting in the durable schedule: one event for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledDelivery {
    /// `dlv_…`.
    pub delivery_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The event to deliver.
    pub event_id: String,
    /// The subscription to deliver to.
    pub subscription_id: String,
    /// The number of the next attempt (1 = first).
    pub attempt: u32,
    /// Whether this delivery is a replay, and of what.
    pub replay_of: Option<String>,
    /// Whether the first attempt of this delivery is a replay.
    pub is_replay: bool,
    /// When it is due, unix milliseconds.
    pub due_at_ms: i64,
    /// Position in the subscription's order (the event's log offset; ties
    /// broken by delivery id).
    pub seq: i64,
    /// Whether the subscription asked for strict ordering when this delivery
    /// was created: then it goes only once no earlier one is pending.
    pub ordered: bool,
}

impl ScheduledDelivery {
    /// The trigger of the next attempt.
    pub fn trigger(&self) -> Trigger {
        match (self.attempt, self.is_replay) {
            (1, false) => Trigger::Initial,
            (1, true) => Trigger::Replay,
            _ => Trigger::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ed25519, signing};

    #[test]
    fn the_header_carries_one_entry_per_live_secret_and_key_of_the_scheme() {
        let now = OffsetDateTime::now_utc();
        let (secret, key) = (SigningSecret::generate(), SigningKey::generate());
        let (old_key, dead_key) = (SigningKey::generate(), SigningKey::generate());
        let mut sub: WebhookSubscription = serde_json::from_value(serde_json::json!({
            "id": "sub_1", "tenant_id": "acme", "url": "https://example.com/h",
            "event_types": ["*"], "status": "active",
            "secrets": [{ "secret": secret.to_whsec(), "expires_at": null }],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap();
        assert_eq!(sub.signature, SignatureScheme::Hmac, "the default");
        sub.signing_keys = [(&key, None), (&old_key, Some(60)), (&dead_key, Some(-1))]
            .into_iter()
            .map(|(k, secs)| KeyEntry {
                key: k.clone(),
                expires_at: secs.map(|s| now + time::Duration::seconds(s)),
            })
            .collect();
        let header = |sub: &WebhookSubscription| sub.signature_header(now, "m", 7, b"b");
        let count = |h: &str, v: &str| h.split(' ').filter(|e| e.starts_with(v)).count();

        let h = header(&sub);
        assert_eq!((count(&h, "v1,"), count(&h, "v1a,")), (1, 0), "{h}");
        sub.signature = SignatureScheme::Ed25519;
        let h = header(&sub);
        assert_eq!((count(&h, "v1,"), count(&h, "v1a,")), (0, 2), "{h}");
        for (k, live) in [(&key, true), (&old_key, true), (&dead_key, false)] {
            assert_eq!(ed25519::verify(&k.public_key(), "m", 7, b"b", &h), live);
        }
        sub.signature = SignatureScheme::Both;
        let h = header(&sub);
        assert_eq!((count(&h, "v1,"), count(&h, "v1a,")), (1, 2), "{h}");
        assert!(signing::verify(&secret, "m", 7, b"b", &h));
    }
}
