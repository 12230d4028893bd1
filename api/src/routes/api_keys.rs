//! API keys: the admin manages any tenant's keys under
//! `/api/v1/admin/tenants/{tenant}/api-keys`; a tenant manages its own under
//! `/api/v1/portal/api-keys` (with any of its live keys). A key is shown once,
//! when created; Herald keeps only its SHA-256 hash. A revoked key stops
//! authenticating with the next request.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use herald_engine::{
    resources::{ApiKey, Scope},
    NewApiKey,
};
use serde::{Deserialize, Serialize};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{events::List, non_empty, Page, PageQuery};
use crate::{
    error::ApiError,
    extract::{Admin, ApiQuery, Tenant},
    AppState,
};

async fn list_for(
    state: &AppState,
    tenant: &str,
    q: PageQuery,
) -> Result<Json<List<ApiKey>>, ApiError> {
    let page = Page {
        limit: q.limit,
        cursor: non_empty(q.cursor),
    };
    let (data, next_cursor) = state
        .engine
        .list_api_keys(tenant, page.cursor.clone(), page.limit()?)
        .await?;
    Ok(Json(List { data, next_cursor }))
}

/// `POST …/api-keys` body (optional: no body makes an unnamed key with
/// full access that never expires).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A name for humans (1 to 200 printable characters).
    pub name: Option<String>,
    /// What the key may do: one or more of `events:write`, `events:read`,
    /// `events:replay`, `webhooks:read`, `webhooks:write`, `admin` (which
    /// grants all). Omitted: `["admin"]`, full access. An unknown scope or
    /// an empty list is 422 and creates nothing.
    #[schema(value_type = Option<Vec<Scope>>)]
    pub scopes: Option<Vec<String>>,
    /// When the key stops authenticating (RFC 3339; 401 from then on).
    /// Omitted: never. A time not in the future is 422 and creates nothing.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
}

/// A new key: its listing record plus the key itself (shown only here).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyCreated {
    /// The key's record.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The API key; use it as `Authorization: Bearer <api_key>`.
    pub api_key: String,
}

fn optional_body(body: &[u8]) -> Result<CreateKey, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CreateKey::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn create_for(
    state: &AppState,
    tenant: &str,
    body: &[u8],
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let body = optional_body(body)?;
    let expires_at = body
        .expires_at
        .map(|t| {
            OffsetDateTime::parse(&t, &Rfc3339).map_err(|_| {
                ApiError::invalid(
                    "expires_at",
                    format!("expires_at: {t:?} is not an RFC 3339 time"),
                )
            })
        })
        .transpose()?;
    let request = NewApiKey {
        name: body.name,
        scopes: body.scopes,
        expires_at,
    };
    let (key, api_key) = state.engine.create_api_key(tenant, request).await?;
    Ok((StatusCode::CREATED, Json(KeyCreated { key, api_key })))
}

/// Creates an API key for a tenant (admin).
#[utoipa::path(post, path = "/api/v1/admin/tenants/{tenant}/api-keys", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id")), security(("admin_token" = [])),
    request_body(content = Option<CreateKey>, description = "Optional"),
    responses((status = 201, description = "Created; `api_key` is shown only here", body = KeyCreated)))]
pub async fn admin_create(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    create_for(&state, &tenant, &body).await
}

/// Lists a tenant's API keys (admin), oldest first.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant}/api-keys", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id"), PageQuery), security(("admin_token" = [])),
    responses((status = 200, description = "The keys, without the keys themselves", body = List<ApiKey>)))]
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<List<ApiKey>>, ApiError> {
    list_for(&state, &tenant, q).await
}

/// Revokes one of a tenant's API keys (admin).
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant}/api-keys/{key_id}", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id"), ("key_id" = String, Path, description = "Key id")),
    security(("admin_token" = [])),
    responses((status = 200, description = "Revoked", body = ApiKey)))]
pub async fn admin_revoke(
    State(state): State<AppState>,
    _admin: Admin,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(state.engine.revoke_api_key(&tenant, &key_id).await?))
}

/// Creates another API key for the caller's tenant.
#[utoipa::path(post, path = "/api/v1/portal/api-keys", tag = "api-keys",
    security(("api_key" = ["admin"])),
    request_body(content = Option<CreateKey>, description = "Optional"),
    responses((status = 201, description = "Created; `api_key` is shown only here", body = KeyCreated)))]
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    create_for(&state, &tenant, &body).await
}

/// Lists the caller's tenant's API keys, oldest first.
#[utoipa::path(get, path = "/api/v1/portal/api-keys", tag = "api-keys",
    params(PageQuery), security(("api_key" = ["admin"])),
    responses((status = 200, description = "The keys, without the keys themselves", body = List<ApiKey>)))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<List<ApiKey>>, ApiError> {
    list_for(&state, &tenant, q).await
}

/// Revokes one of the caller's tenant's API keys (possibly the one in use).
#[utoipa::path(delete, path = "/api/v1/portal/api-keys/{key_id}", tag = "api-keys",
    params(("key_id" = String, Path, description = "Key id")), security(("api_key" = ["admin"])),
    responses((status = 200, description = "Revoked", body = ApiKey)))]
pub async fn revoke(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(key_id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(state.engine.revoke_api_key(&tenant, &key_id).await?))
}
