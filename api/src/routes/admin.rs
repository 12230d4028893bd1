//! Admin calls (admin token): tenants.

use axum::{extract::State, http::StatusCode, Json};
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
