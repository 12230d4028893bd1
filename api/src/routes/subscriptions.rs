//! Subscriptions: subscribe, list, read, update, pause, resume, delete, and
//! rotate the signing secret.

use std::{collections::BTreeMap, fmt, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use herald_engine::{
    model::{Ordering, PayloadForm, SignatureScheme, SubscriptionStatus, WebhookSubscription},
    signing::redacted,
    NewSubscription, SubscriptionUpdate,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    endpoint_auth::{ClientTlsInput, ClientTlsView, EndpointAuthInput, EndpointAuthView},
    events::List,
    kafka_settings::{KafkaSettingsInput, KafkaSettingsView},
    non_empty, Page, PageQuery,
};
use crate::{
    error::ApiError,
    extract::{ApiJson, ApiQuery, Tenant},
    AppState,
};

/// `POST /api/v1/portal/webhooks/subscribe` body. `Debug` redacts the secret.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Endpoint URL.
    pub url: String,
    /// Event types and `prefix.*` patterns.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// A chosen `whsec_…` secret; generated when absent.
    pub secret: Option<String>,
    /// Signatures on every delivery: `hmac` (default; `v1`, HMAC-SHA256),
    /// `ed25519` (`v1a`; receivers verify with the `whpk_` public key) or
    /// `both`.
    #[schema(value_type = Option<SignatureScheme>)]
    pub signature: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second.
    #[schema(minimum = 1)]
    pub rate_limit: Option<u32>,
    /// `unordered` (default) or `strict`: one at a time, in event-log order.
    #[serde(default)]
    pub ordering: Ordering,
    /// `full` (default): each request carries the event; `thin`: only its
    /// id, type, tenant and times, and the receiver fetches the event with
    /// `GET /api/v1/integrations/events/{id}`.
    #[serde(default)]
    pub payload: PayloadForm,
    /// Concurrent requests to the endpoint (1–256).
    pub max_in_flight: Option<u32>,
    /// Timeout of one attempt in seconds (1–60).
    pub timeout_seconds: Option<u32>,
    /// CEL payload filter (at most 4 KiB); only matching events are delivered.
    pub filter: Option<String>,
    /// Connection settings of a `kafka://host:port/topic` url.
    pub kafka: Option<KafkaSettingsInput>,
    /// How deliveries authenticate to an `http(s)` endpoint besides the
    /// signature: a bearer token, basic auth or OAuth2 client credentials.
    pub auth: Option<EndpointAuthInput>,
    /// An `https` endpoint's client certificate (mutual TLS) and trusted
    /// authorities.
    pub tls: Option<ClientTlsInput>,
}

/// A subscription as the API shows it. `Debug` redacts the secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    /// `sub_…`.
    pub id: String,
    /// Endpoint URL.
    pub url: String,
    /// Filters.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// active | paused | disabled.
    pub status: SubscriptionStatus,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// The current secret; only in the answers that create or rotate it,
    /// and only when the subscription signs with HMAC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when an older secret (or Ed25519 key) still signs.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// hmac | ed25519 | both.
    pub signature: SignatureScheme,
    /// The current Ed25519 public key (`whpk_…`) receivers verify `v1a`
    /// signatures with; `null` for HMAC only. All live keys:
    /// `GET /api/v1/portal/webhooks/{id}/jwks`.
    pub public_key: Option<String>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second.
    pub rate_limit: Option<u32>,
    /// Delivery order.
    pub ordering: Ordering,
    /// full | thin.
    pub payload: PayloadForm,
    /// Concurrent requests to the endpoint.
    pub max_in_flight: Option<u32>,
    /// Timeout of one attempt in seconds.
    pub timeout_seconds: Option<u32>,
    /// CEL payload filter, `null` when none.
    pub filter: Option<String>,
    /// Connection settings of a Kafka destination (never the password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSettingsView>,
    /// The endpoint's authentication (never its secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<EndpointAuthView>,
    /// The endpoint's TLS settings (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsView>,
    /// Since when every attempt has failed (`null` when healthy).
    #[serde(with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl fmt::Debug for Subscribe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscribe")
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("description", &self.description)
            .field("secret", &redacted(&self.secret))
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

impl fmt::Debug for SubscriptionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionView")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("description", &self.description)
            .field("status", &self.status)
            .field("disabled_reason", &self.disabled_reason)
            .field("secret", &redacted(&self.secret))
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .field("signature", &self.signature)
            .field("public_key", &self.public_key)
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
            .field("failing_since", &self.failing_since)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

impl fmt::Debug for Rotate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotate")
            .field("grace_period_seconds", &self.grace_period_seconds)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

impl fmt::Debug for Rotated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotated")
            .field("secret", &redacted(&self.secret))
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .field("public_key", &self.public_key)
            .finish()
    }
}

impl SubscriptionView {
    pub(crate) fn new(sub: WebhookSubscription, with_secret: bool) -> Self {
        let now = OffsetDateTime::now_utc();
        let previous = sub
            .secrets
            .iter()
            .skip(1)
            .filter_map(|s| s.expires_at)
            .chain(sub.signing_keys.iter().skip(1).filter_map(|k| k.expires_at))
            .filter(|t| *t > now)
            .max();
        let public_key = sub
            .signing_keys
            .first()
            .filter(|_| sub.signature.ed25519())
            .map(|k| k.key.public_key().to_whpk());
        Self {
            secret: (with_secret && sub.signature.hmac()).then(|| sub.secrets[0].secret.to_whsec()),
            previous_secret_expires_at: previous,
            signature: sub.signature,
            public_key,
            id: sub.id,
            url: sub.url,
            event_types: sub.event_types,
            description: sub.description,
            status: sub.status,
            disabled_reason: sub.disabled_reason,
            headers: sub.headers,
            rate_limit: sub.rate_limit,
            ordering: sub.ordering,
            payload: sub.payload,
            max_in_flight: sub.max_in_flight,
            timeout_seconds: sub.timeout_seconds,
            filter: sub.filter,
            kafka: sub.kafka.map(KafkaSettingsView::from),
            auth: sub.auth.map(EndpointAuthView::from),
            tls: sub.tls.map(ClientTlsView::from),
            failing_since: sub.failing_since,
            created_at: sub.created_at,
            updated_at: sub.updated_at,
        }
    }
}

/// Creates a subscription; the answer carries its secret (HMAC) and its
/// public key (Ed25519).
#[utoipa::path(post, path = "/api/v1/portal/webhooks/subscribe", tag = "subscriptions",
    request_body = Subscribe, security(("api_key" = ["webhooks:write"])),
    responses((status = 201, description = "Created; `secret` is shown here and on rotation only; `public_key` is shown on every read", body = SubscriptionView),
        (status = 422, description = "Invalid input, e.g. an unknown `signature`", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn subscribe(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(body): ApiJson<Subscribe>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let signature = scheme(body.signature.as_deref())?.unwrap_or_default();
    let sub = state
        .engine
        .subscribe(
            &tenant,
            NewSubscription {
                url: body.url,
                event_types: body.event_types,
                description: body.description,
                secret: body.secret,
                signature,
                headers: body.headers,
                rate_limit: body.rate_limit,
                ordering: body.ordering,
                payload: body.payload,
                max_in_flight: body.max_in_flight,
                timeout_seconds: body.timeout_seconds,
                filter: body.filter,
                kafka: body.kafka.map(Into::into),
                auth: body.auth.map(Into::into),
                tls: body.tls.map(Into::into),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(SubscriptionView::new(sub, true))))
}

/// The signature scheme asked for, if any; an unknown one is a 422.
fn scheme(asked: Option<&str>) -> Result<Option<SignatureScheme>, ApiError> {
    asked
        .map(|s| {
            SignatureScheme::parse(s).ok_or_else(|| {
                ApiError::invalid(
                    "signature",
                    format!("signature: {s:?} is not one of \"hmac\", \"ed25519\", \"both\""),
                )
            })
        })
        .transpose()
}

/// Reads a subscription (without its secret).
#[utoipa::path(get, path = "/api/v1/portal/webhooks/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["webhooks:read"])),
    responses((status = 200, description = "The subscription", body = SubscriptionView)))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let sub = state.engine.subscription(&tenant, &id).await?;
    Ok(Json(SubscriptionView::new(sub, false)))
}

/// `POST /api/v1/portal/webhooks/{id}/rotate-secret` body. `Debug` redacts the secret.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the previous secret keeps signing (default 86400; 0 = stop now).
    pub grace_period_seconds: Option<u64>,
    /// A chosen new secret; generated when absent.
    pub secret: Option<String>,
}

/// The rotation's answer. `Debug` redacts the secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// The new current secret (absent when the subscription signs with Ed25519 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when the previous secret (and Ed25519 key) keeps signing
    /// (`null` when it stopped at once).
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// The new current Ed25519 public key (`whpk_…`), when the subscription
    /// signs with Ed25519: its previous key signs too until
    /// `previous_secret_expires_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Rotates the signing secret (and the Ed25519 key, for a subscription that
/// signs with one) with a grace window: one signature per live secret or key.
#[utoipa::path(post, path = "/api/v1/portal/webhooks/{id}/rotate-secret", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["webhooks:write"])),
    request_body(content = Option<Rotate>, description = "Optional; empty means defaults"),
    responses((status = 200, description = "Rotated", body = Rotated)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Rotated>, ApiError> {
    // The body is optional: empty means all defaults.
    let body: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let rotation = state
        .engine
        .rotate_secret(
            &tenant,
            &id,
            body.grace_period_seconds.map(Duration::from_secs),
            body.secret.as_deref(),
        )
        .await?;
    Ok(Json(Rotated {
        secret: rotation
            .signature
            .hmac()
            .then(|| rotation.secret.to_whsec()),
        previous_secret_expires_at: rotation.previous_secret_expires_at,
        public_key: rotation.public_key.map(|k| k.to_whpk()),
    }))
}

/// Lists the tenant's subscriptions, newest first.
#[utoipa::path(get, path = "/api/v1/portal/webhooks", tag = "subscriptions",
    params(PageQuery), security(("api_key" = ["webhooks:read"])),
    responses((status = 200, description = "A page of subscriptions", body = List<SubscriptionView>)))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<List<SubscriptionView>>, ApiError> {
    let page = Page {
        limit: q.limit,
        cursor: non_empty(q.cursor),
    };
    let result = state
        .engine
        .list_subscriptions(&tenant, page.cursor.clone(), page.limit()?)
        .await?;
    Ok(Json(List {
        data: result
            .data
            .into_iter()
            .map(|s| SubscriptionView::new(s, false))
            .collect(),
        next_cursor: result.next_cursor,
    }))
}

/// `PATCH /api/v1/portal/webhooks/{id}` body: the fields to change.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscription {
    /// New endpoint URL.
    pub url: Option<String>,
    /// New event types and `prefix.*` patterns.
    pub event_types: Option<Vec<String>>,
    /// New description; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// New custom headers (replace the old set).
    pub headers: Option<BTreeMap<String, String>>,
    /// New deliveries per second; `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub rate_limit: Option<Option<u32>>,
    /// New delivery order (for deliveries created from now on).
    pub ordering: Option<Ordering>,
    /// New payload form: `full` or `thin` (for attempts made from now on).
    pub payload: Option<PayloadForm>,
    /// New in-flight limit; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 256)]
    pub max_in_flight: Option<Option<u32>>,
    /// New attempt timeout in seconds; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 60)]
    pub timeout_seconds: Option<Option<u32>>,
    /// New CEL payload filter; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub filter: Option<Option<String>>,
    /// New signature scheme: `hmac`, `ed25519` or `both` (a key is made for
    /// a subscription that had none; its `public_key` is in the answer).
    #[schema(value_type = Option<SignatureScheme>)]
    pub signature: Option<String>,
    /// New Kafka destination settings (replace the old ones); `null` removes them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<KafkaSettingsInput>)]
    pub kafka: Option<Option<KafkaSettingsInput>>,
    /// New endpoint authentication (replaces the old, secret included); `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<EndpointAuthInput>)]
    pub auth: Option<Option<EndpointAuthInput>>,
    /// New TLS settings (replace the old ones, key included); `null` removes them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<ClientTlsInput>)]
    pub tls: Option<Option<ClientTlsInput>>,
}

/// A field that is present (even as `null`) becomes `Some`.
fn present<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// Changes a subscription.
#[utoipa::path(patch, path = "/api/v1/portal/webhooks/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["webhooks:write"])),
    request_body = UpdateSubscription,
    responses((status = 200, description = "The updated subscription", body = SubscriptionView)))]
pub async fn update(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSubscription>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let signature = scheme(body.signature.as_deref())?;
    let sub = state
        .engine
        .update_subscription(
            &tenant,
            &id,
            SubscriptionUpdate {
                url: body.url,
                event_types: body.event_types,
                description: body.description,
                headers: body.headers,
                rate_limit: body.rate_limit,
                ordering: body.ordering,
                payload: body.payload,
                max_in_flight: body.max_in_flight,
                timeout_seconds: body.timeout_seconds,
                filter: body.filter,
                signature,
                kafka: body.kafka.map(|k| k.map(Into::into)),
                auth: body.auth.map(|a| a.map(Into::into)),
                tls: body.tls.map(|t| t.map(Into::into)),
            },
        )
        .await?;
    Ok(Json(SubscriptionView::new(sub, false)))
}

/// Pauses deliveries; they wait in the schedule until resumed.
#[utoipa::path(post, path = "/api/v1/portal/webhooks/{id}/pause", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["webhooks:write"])),
    responses((status = 200, description = "Paused", body = SubscriptionView)))]
pub async fn pause(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let sub = state.engine.pause_subscription(&tenant, &id).await?;
    Ok(Json(SubscriptionView::new(sub, false)))
}

/// The answer to a resume: the subscription, and for one that was disabled,
/// the recovery it can ask for to get what it missed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resumed {
    /// The subscription, active again.
    #[serde(flatten)]
    pub subscription: SubscriptionView,
    /// Present when the subscription had been disabled: POST `body` to `href`
    /// to re-deliver what it missed.
    pub recover: Option<RecoverOffer>,
}

/// A ready-made recovery request for what a disabled subscription missed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecoverOffer {
    /// Where to POST it.
    pub href: String,
    /// The request body: the time range since deliveries started failing.
    pub body: serde_json::Value,
}

/// Resumes a paused or disabled subscription; a disabled one is offered the
/// recovery of what it missed.
#[utoipa::path(post, path = "/api/v1/portal/webhooks/{id}/resume", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["webhooks:write"])),
    responses((status = 200, description = "Active again", body = Resumed)))]
pub async fn resume(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Resumed>, ApiError> {
    let before = state.engine.subscription(&tenant, &id).await?;
    let sub = state.engine.resume_subscription(&tenant, &id).await?;
    let recover = (before.status == SubscriptionStatus::Disabled).then(|| {
        let since = before.failing_since.unwrap_or(before.updated_at);
        let fmt = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        RecoverOffer {
            href: format!("/api/v1/portal/webhooks/{id}/recover"),
            body: serde_json::json!({ "since": fmt(since), "until": fmt(OffsetDateTime::now_utc()), "only_failed": true }),
        }
    });
    Ok(Json(Resumed {
        subscription: SubscriptionView::new(sub, false),
        recover,
    }))
}

/// Deletes a subscription; its pending deliveries are dropped.
#[utoipa::path(delete, path = "/api/v1/portal/webhooks/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["webhooks:write"])),
    responses((status = 204, description = "Deleted")))]
pub async fn remove(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_subscription(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let subscribe: Subscribe = serde_json::from_value(serde_json::json!({
            "url": "https://example.com/hook",
            "event_types": ["a.b"],
            "secret": secret,
        }))
        .unwrap();
        let rotate: Rotate =
            serde_json::from_value(serde_json::json!({ "secret": secret })).unwrap();
        let rotated = Rotated {
            secret: Some(secret.into()),
            previous_secret_expires_at: None,
            public_key: None,
        };
        let new = NewSubscription {
            secret: Some(secret.into()),
            ..Default::default()
        };
        for debug in [
            format!("{subscribe:?}"),
            format!("{rotate:#?}"),
            format!("{rotated:?}"),
            format!("{new:?}"),
        ] {
            assert!(!debug.contains("MfKQ9r8G"), "{debug}");
            assert!(debug.contains("<redacted>"), "{debug}");
        }
        assert!(format!("{subscribe:?}").contains("example.com"));
    }
}
