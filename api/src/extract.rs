//! Extractors: the authenticated tenant, the admin token, and JSON bodies
//! and query strings whose rejections become problem+json errors.

use axum::{
    extract::{FromRef, FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::{error::ApiError, AppState};

/// The tenant of the bearer API key.
pub struct Tenant(pub String);

/// The bearer token of a request.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send the API key as Authorization: Bearer <key>"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <key>'"))
}

impl<S> FromRequestParts<S> for Tenant
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let key = bearer(parts)?;
        Ok(Tenant(tenant_of(&state, key).await?))
    }
}

/// Authenticates `key` and applies the tenant's rate limit.
async fn tenant_of(state: &AppState, key: &str) -> Result<String, ApiError> {
    let tenant = match state.engine.authenticate(key).await? {
        Some(tenant) => tenant,
        None => return Err(ApiError::unauthorized("unknown or revoked API key")),
    };
    if let Some(limiter) = &state.limiter {
        if let Err(not_until) = limiter.check_key(&tenant) {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::too_many_requests(wait.as_secs().max(1)));
        }
    }
    Ok(tenant)
}

/// WebSocket subprotocol that names Herald's stream; a browser offers it
/// next to [`BEARER_SUBPROTOCOL_PREFIX`]`<key>` and the server selects it.
pub const STREAM_SUBPROTOCOL: &str = "herald.v1";
/// Prefix of the subprotocol that carries the API key of a browser client,
/// which cannot set an `Authorization` header on a WebSocket.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "herald.bearer.";

/// The tenant of a WebSocket request: the key from `Authorization: Bearer`,
/// or else from a `Sec-WebSocket-Protocol` entry `herald.bearer.<key>`
/// (browsers). Keys in the query string are never accepted.
pub struct StreamTenant {
    /// The authenticated tenant.
    pub tenant: String,
    /// The key it authenticated with (checked again while the stream is open).
    pub key: String,
    /// The key came as a subprotocol: the upgrade must select
    /// [`STREAM_SUBPROTOCOL`] (never echo the key back).
    pub via_subprotocol: bool,
}

fn subprotocol_key(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
        .filter(|k| !k.is_empty())
}

impl<S> FromRequestParts<S> for StreamTenant
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let (key, via_subprotocol) = if parts.headers.contains_key(header::AUTHORIZATION) {
            (bearer(parts)?, false)
        } else if let Some(key) = subprotocol_key(parts) {
            (key, true)
        } else {
            return Err(ApiError::unauthorized(
                "send the API key as Authorization: Bearer <key>, or (browsers) as the \
                 WebSocket subprotocol herald.bearer.<key> next to herald.v1",
            ));
        };
        Ok(StreamTenant {
            tenant: tenant_of(&state, key).await?,
            key: key.to_string(),
            via_subprotocol,
        })
    }
}

/// Proof that the request carries the admin token.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let given = bearer(parts)?;
        if bool::from(given.as_bytes().ct_eq(state.admin_token.as_bytes())) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("this call needs the admin token"))
        }
    }
}

/// A JSON body; malformed or mistyped bodies become problem+json errors.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// A query string; bad values become problem+json errors.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
