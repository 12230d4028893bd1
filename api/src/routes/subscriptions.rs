//! Subscriptions: subscribe, read, rotate the signing secret.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use herald_engine::{
    model::{Ordering, SubscriptionStatus, WebhookSubscription},
    NewSubscription,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    error::ApiError,
    extract::{ApiJson, Tenant},
    AppState,
};

/// `POST /api/v1/portal/webhooks/subscribe` body.
#[derive(Debug, Deserialize)]
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
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second.
    pub rate_limit: Option<u32>,
    /// `unordered` (default) or `strict`: one at a time, in event-log order.
    #[serde(default)]
    pub ordering: Ordering,
    /// Concurrent requests to the endpoint (1–256).
    pub max_in_flight: Option<u32>,
    /// Timeout of one attempt in seconds (1–60).
    pub timeout_seconds: Option<u32>,
}

/// A subscription as the API shows it.
#[derive(Debug, Serialize)]
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
    /// The current secret; only in the answers that create or rotate it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Until when an older secret still signs.
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second.
    pub rate_limit: Option<u32>,
    /// Delivery order.
    pub ordering: Ordering,
    /// Concurrent requests to the endpoint.
    pub max_in_flight: Option<u32>,
    /// Timeout of one attempt in seconds.
    pub timeout_seconds: Option<u32>,
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

impl SubscriptionView {
    fn new(sub: WebhookSubscription, with_secret: bool) -> Self {
        let now = OffsetDateTime::now_utc();
        let previous = sub
            .secrets
            .iter()
            .skip(1)
            .filter_map(|s| s.expires_at)
            .filter(|t| *t > now)
            .max();
        Self {
            secret: with_secret.then(|| sub.secrets[0].secret.to_whsec()),
            previous_secret_expires_at: previous,
            id: sub.id,
            url: sub.url,
            event_types: sub.event_types,
            description: sub.description,
            status: sub.status,
            disabled_reason: sub.disabled_reason,
            headers: sub.headers,
            rate_limit: sub.rate_limit,
            ordering: sub.ordering,
            max_in_flight: sub.max_in_flight,
            timeout_seconds: sub.timeout_seconds,
            failing_since: sub.failing_since,
            created_at: sub.created_at,
            updated_at: sub.updated_at,
        }
    }
}

/// Creates a subscription; the answer carries its secret.
pub async fn subscribe(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiJson(body): ApiJson<Subscribe>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let sub = state
        .engine
        .subscribe(
            &tenant,
            NewSubscription {
                url: body.url,
                event_types: body.event_types,
                description: body.description,
                secret: body.secret,
                headers: body.headers,
                rate_limit: body.rate_limit,
                ordering: body.ordering,
                max_in_flight: body.max_in_flight,
                timeout_seconds: body.timeout_seconds,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(SubscriptionView::new(sub, true))))
}

/// Reads a subscription (without its secret).
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let sub = state.engine.subscription(&tenant, &id).await?;
    Ok(Json(SubscriptionView::new(sub, false)))
}

/// `POST /api/v1/portal/webhooks/{id}/rotate-secret` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the previous secret keeps signing (default 86400; 0 = stop now).
    pub grace_period_seconds: Option<u64>,
    /// A chosen new secret; generated when absent.
    pub secret: Option<String>,
}

/// The rotation's answer.
#[derive(Debug, Serialize)]
pub struct Rotated {
    /// The new current secret.
    pub secret: String,
    /// Until when the previous secret keeps signing (`null` when it stopped at once).
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

/// Rotates the signing secret with a grace window (dual signing).
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
        secret: rotation.secret.to_whsec(),
        previous_secret_expires_at: rotation.previous_secret_expires_at,
    }))
}
