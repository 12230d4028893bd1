//! Bulk recovery: re-deliver what a subscription had in a time range, as a
//! durable background job whose progress can be read.

use axum::{
    extract::{Path, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use herald_engine::resources::{RecoveryJob, RecoverySource};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::{
    error::ApiError,
    extract::{ApiJson, Tenant},
    AppState,
};

/// `POST /api/v1/portal/webhooks/{id}/recover` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Start of the range: events received at or after (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
    /// End of the range: events received before (RFC 3339; a future time means now).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: OffsetDateTime,
    /// Only events whose latest delivery there failed or is dead (default
    /// false; with the `deliveries` source only).
    #[serde(default)]
    pub only_failed: bool,
    /// `deliveries` (default): what the subscription was delivered or
    /// attempted in the range. `log`: every event of the tenant the event
    /// log holds for the range that the subscription matches, including
    /// events from before the subscription existed.
    #[serde(default)]
    pub source: RecoverySource,
}

/// Starts re-delivering (as replays) what the subscription had in the range.
#[utoipa::path(post, path = "/api/v1/portal/webhooks/{id}/recover", tag = "subscriptions",
    params(("id" = String, Path, description = "Subscription id")), security(("api_key" = ["events:replay"])),
    request_body = Recover,
    responses((status = 202, description = "The recovery job; follow it at `Location`", body = RecoveryJob,
        headers(("location" = String, description = "The job's URL")))))]
pub async fn recover(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Recover>,
) -> Result<Response, ApiError> {
    let job = state
        .engine
        .start_recovery(
            &tenant,
            &id,
            body.since,
            body.until,
            body.only_failed,
            body.source,
        )
        .await?;
    let location = format!("/api/v1/portal/recoveries/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// Reads a recovery job and its progress.
#[utoipa::path(get, path = "/api/v1/portal/recoveries/{job_id}", tag = "subscriptions",
    params(("job_id" = String, Path, description = "Recovery job id")), security(("api_key" = ["events:read"])),
    responses((status = 200, description = "The job", body = RecoveryJob)))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(job_id): Path<String>,
) -> Result<Json<RecoveryJob>, ApiError> {
    Ok(Json(state.engine.recovery(&tenant, &job_id).await?))
}
