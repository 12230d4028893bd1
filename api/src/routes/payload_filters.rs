//! Trying a payload filter (a CEL expression, issue #22) on a sample event.

use axum::{extract::State, Json};
use herald_engine::payload_filter::{FilterVars, PayloadFilter};
use serde::{Deserialize, Serialize};

use crate::{
    error::ApiError,
    extract::{ApiJson, Tenant},
    AppState,
};

/// `POST /api/v1/portal/filters/test` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterTest {
    /// The CEL expression.
    pub filter: String,
    /// A sample event envelope: `type` (a string), `data` and optionally
    /// `id`, `tenant_id`, `source`, `occurred_at`, `received_at`.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// Whether the sample event matches.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FilterTestResult {
    /// `false` also when evaluating fails (a missing field, a type mismatch).
    pub matches: bool,
}

/// Tests a payload filter on a sample event.
#[utoipa::path(post, path = "/api/v1/portal/filters/test", tag = "subscriptions",
    security(("api_key" = ["webhooks:read"])),
    request_body = FilterTest,
    responses((status = 200, description = "Whether the event matches", body = FilterTestResult)))]
pub async fn test(
    State(_state): State<AppState>,
    Tenant(_tenant): Tenant,
    ApiJson(body): ApiJson<FilterTest>,
) -> Result<Json<FilterTestResult>, ApiError> {
    let filter = PayloadFilter::compile(&body.filter)
        .map_err(|e| ApiError::invalid("filter", e.to_string()))?;
    if !body.event.get("type").is_some_and(|t| t.is_string()) {
        return Err(ApiError::invalid("event", "an object with a string `type`"));
    }
    let vars = FilterVars::of_envelope(&body.event);
    Ok(Json(FilterTestResult {
        matches: filter.matches(&vars),
    }))
}
