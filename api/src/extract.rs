//! Authentication and authorization: the guard every route runs first (its
//! declared [`Access`]: public, the admin token, or an API key with a
//! scope), the extractors of the authenticated tenant and the admin token,
//! and JSON bodies and query strings whose rejections become problem+json
//! errors.

use axum::{
    extract::{FromRef, FromRequest, FromRequestParts, Request, State},
    http::{header, request::Parts},
    middleware::Next,
    response::Response,
};
use herald_engine::{
    audit::{self, Actor},
    resources::Scope,
};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::{error::ApiError, AppState};

/// The tenant of the bearer API key, authenticated (and its scope checked)
/// by the route's guard ([`guard`]) before any extractor runs.
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

/// What a route needs of its caller; every route of
/// [`crate::route_table::api_routes`] declares one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, readiness, metrics, the OpenAPI document).
    Public,
    /// The admin token.
    AdminToken,
    /// A live, unexpired tenant API key with this scope (or `admin`).
    Key(Scope),
}

/// A route's guard: its [`Access`], and whether (the WebSocket stream) a
/// browser may send the key as a subprotocol.
#[derive(Clone)]
pub struct Guard {
    /// The app.
    pub state: AppState,
    /// What the route needs.
    pub access: Access,
    /// The key may come as the subprotocol `herald.bearer.<key>`.
    pub subprotocol: bool,
}

/// The authenticated key, left in the request's extensions by [`guard`].
#[derive(Clone)]
struct Authenticated {
    tenant: String,
    key: String,
    via_subprotocol: bool,
}

/// Runs before a route's handler (and its extractors): checks the admin
/// token, or authenticates the API key (401 unknown, revoked or expired),
/// applies the tenant's rate limit (429) and checks the route's scope
/// (403 naming it). The handler runs as the caller's audit [`Actor`]: the
/// admin, or the key (by id), so every change it makes is recorded as theirs.
pub async fn guard(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let actor = match guard.access {
        Access::Public => Actor::Herald,
        Access::AdminToken => {
            let given = bearer(&parts)?;
            if !bool::from(given.as_bytes().ct_eq(guard.state.admin_token.as_bytes())) {
                return Err(ApiError::unauthorized("this call needs the admin token"));
            }
            Actor::Admin
        }
        Access::Key(needed) => {
            let (key, via_subprotocol) =
                if parts.headers.contains_key(header::AUTHORIZATION) || !guard.subprotocol {
                    (bearer(&parts)?, false)
                } else if let Some(key) = subprotocol_key(&parts) {
                    (key, true)
                } else {
                    return Err(ApiError::unauthorized(
                        "send the API key as Authorization: Bearer <key>, or (browsers) as the \
                     WebSocket subprotocol herald.bearer.<key> next to herald.v1",
                    ));
                };
            let key = key.to_string();
            let (tenant, key_id) = authorize(&guard.state, &key, needed).await?;
            parts.extensions.insert(Authenticated {
                tenant,
                key,
                via_subprotocol,
            });
            Actor::ApiKey { id: key_id }
        }
    };
    let request = Request::from_parts(parts, body);
    Ok(audit::as_actor(actor, next.run(request)).await)
}

/// Authenticates `key`, applies the tenant's rate limit and checks
/// `needed`; the key's tenant and id.
async fn authorize(
    state: &AppState,
    key: &str,
    needed: Scope,
) -> Result<(String, String), ApiError> {
    let grant = match state.engine.authenticate(key).await? {
        Some(grant) => grant,
        None => return Err(ApiError::unauthorized("unknown or revoked API key")),
    };
    if grant.expired_at(herald_engine::clock::now_ms()) {
        return Err(ApiError::unauthorized(format!(
            "this API key ({}) has expired; create a new one",
            grant.key_id
        )));
    }
    if let Some(limiter) = &state.limiter {
        if let Err(not_until) = limiter.check_key(&grant.tenant_id) {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::too_many_requests(wait.as_secs().max(1)));
        }
    }
    if !needed.granted_by(&grant.scopes) {
        return Err(ApiError::insufficient_scope(needed, &grant.scopes));
    }
    Ok((grant.tenant_id, grant.key_id))
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .map(|a| Tenant(a.tenant.clone()))
            .ok_or_else(ApiError::undeclared_scope)
    }
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

impl<S: Send + Sync> FromRequestParts<S> for StreamTenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let a = parts
            .extensions
            .get::<Authenticated>()
            .ok_or_else(ApiError::undeclared_scope)?;
        Ok(StreamTenant {
            tenant: a.tenant.clone(),
            key: a.key.clone(),
            via_subprotocol: a.via_subprotocol,
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
