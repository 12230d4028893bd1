//! The tenant's Ed25519 public keys as JWKS documents (RFC 7517, keys per
//! RFC 8037): one subscription's live keys, or every subscription's.

use axum::{
    extract::{Path, State},
    Json,
};
use herald_engine::model::WebhookSubscription;
use serde::Serialize;
use time::OffsetDateTime;

use super::MAX_LIMIT;
use crate::{error::ApiError, extract::Tenant, AppState};

/// A JSON Web Key Set.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Jwks {
    /// The live public keys (the current one first, per subscription).
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key as a JWK.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: &'static str,
    /// Always `Ed25519`.
    pub crv: &'static str,
    /// The raw public key, base64url without padding.
    pub x: String,
    /// The key's RFC 7638 JWK thumbprint.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// Always `EdDSA`.
    pub alg: &'static str,
    /// The same key in Standard Webhooks form (`whpk_…`).
    pub whpk: String,
    /// The subscription it signs for.
    pub subscription_id: String,
    /// Until when it signs (unix seconds); absent for a current key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

fn keys_of(sub: &WebhookSubscription, now: OffsetDateTime) -> impl Iterator<Item = Jwk> + '_ {
    sub.live_keys(now).map(|entry| {
        let public = entry.key.public_key();
        Jwk {
            kty: "OKP",
            crv: "Ed25519",
            x: public.jwk_x(),
            kid: public.thumbprint(),
            use_: "sig",
            alg: "EdDSA",
            whpk: public.to_whpk(),
            subscription_id: sub.id.clone(),
            exp: entry.expires_at.map(OffsetDateTime::unix_timestamp),
        }
    })
}

/// One subscription's live Ed25519 public keys (empty when it signs with HMAC only).
#[utoipa::path(get, path = "/api/v1/portal/webhooks/{id}/jwks", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["webhooks:read"])),
    responses((status = 200, description = "The subscription's live public keys", body = Jwks)))]
pub async fn subscription(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Jwks>, ApiError> {
    let sub = state.engine.subscription(&tenant, &id).await?;
    let now = OffsetDateTime::now_utc();
    Ok(Json(Jwks {
        keys: keys_of(&sub, now).collect(),
    }))
}

/// Every live Ed25519 public key of the tenant's subscriptions.
#[utoipa::path(get, path = "/api/v1/portal/jwks", tag = "subscriptions",
    security(("api_key" = ["webhooks:read"])),
    responses((status = 200, description = "The tenant's live public keys", body = Jwks)))]
pub async fn tenant(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
) -> Result<Json<Jwks>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = state
            .engine
            .list_subscriptions(&tenant, cursor, MAX_LIMIT)
            .await?;
        for sub in &page.data {
            keys.extend(keys_of(sub, now));
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(Json(Jwks { keys }))
}
