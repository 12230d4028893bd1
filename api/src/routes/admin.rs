//! Admin calls (admin token): tenants, their deletion and their quotas.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use herald_engine::resources::TenantQuotas;
use serde::{Deserialize, Serialize};

use crate::{
    error::ApiError,
    extract::{Admin, ApiJson},
    AppState,
};

/// `POST /api/v1/admin/tenants` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Tenant id.
    pub id: String,
}

/// A new tenant and its API key (shown once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantCreated {
    /// Tenant id.
    pub id: String,
    /// The tenant's API key; Herald keeps only its hash.
    pub api_key: String,
}

/// Creates a tenant and its first API key.
#[utoipa::path(post, path = "/api/v1/admin/tenants", tag = "admin",
    request_body = CreateTenant, security(("admin_token" = [])),
    responses((status = 201, description = "Created; `api_key` is shown only here", body = TenantCreated)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantCreated>), ApiError> {
    let api_key = state.engine.create_tenant(&body.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(TenantCreated {
            id: body.id,
            api_key,
        }),
    ))
}

/// A tenant's quotas (admin); a limit that is `null` is none.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant}/quotas", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id")), security(("admin_token" = [])),
    responses((status = 200, description = "The tenant's quotas", body = TenantQuotas)))]
pub async fn get_quotas(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<String>,
) -> Result<Json<TenantQuotas>, ApiError> {
    Ok(Json(state.engine.tenant_quotas(&tenant).await?))
}

/// Replaces a tenant's quotas (admin): a limit left out or `null` is lifted.
/// Applies at once in this process and within a second in the others.
#[utoipa::path(put, path = "/api/v1/admin/tenants/{tenant}/quotas", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id")),
    request_body = TenantQuotas, security(("admin_token" = [])),
    responses((status = 200, description = "The quotas now in force", body = TenantQuotas)))]
pub async fn put_quotas(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<TenantQuotas>,
) -> Result<Json<TenantQuotas>, ApiError> {
    Ok(Json(state.engine.set_tenant_quotas(&tenant, body).await?))
}

/// Deletes a tenant (admin): its keys stop authenticating at once, its
/// subscriptions stop receiving, and every row it owns is purged (events,
/// delivery logs, subscriptions, event types, keys, quotas, audit). Answers
/// once nothing of it is left; deleting a deleted tenant answers the same
/// and does nothing more. A deletion cut short (503, a crash) finishes on
/// the next `DELETE` or at the next start.
#[utoipa::path(delete, path = "/api/v1/admin/tenants/{tenant}", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id")), security(("admin_token" = [])),
    responses((status = 204, description = "Deleted (or already deleted)")))]
pub async fn delete_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.engine.delete_tenant(&tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}
