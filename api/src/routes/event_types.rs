//! The event-type catalogue: register a JSON Schema per event type and
//! schema version, list and read them. Emits of registered types are
//! validated against them (422 `schema-violation` otherwise).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use herald_engine::resources::EventTypeSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{events::List, non_empty, Page, PageQuery};
use crate::{
    error::ApiError,
    extract::{ApiJson, ApiQuery, Tenant},
    AppState,
};

/// `PUT /api/v1/integrations/event-types/{event_type}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterEventType {
    /// The payload schema version this schema is for (1 or more).
    #[schema(minimum = 1)]
    pub schema_version: u32,
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise).
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// One registered version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SchemaVersion {
    /// The version.
    pub schema_version: u32,
    /// Its JSON Schema.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// An event type and its registered versions (ascending).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypeView {
    /// Dotted event type.
    pub event_type: String,
    /// Registered versions, oldest first.
    pub versions: Vec<SchemaVersion>,
}

fn view(event_type: String, versions: Vec<EventTypeSchema>) -> EventTypeView {
    EventTypeView {
        event_type,
        versions: versions
            .into_iter()
            .map(|v| SchemaVersion {
                schema_version: v.schema_version,
                schema: v.schema,
                created_at: v.created_at,
            })
            .collect(),
    }
}

/// Registers the schema of one version of an event type. Registered
/// versions are immutable: the same schema again answers 200, another 409.
#[utoipa::path(put, path = "/api/v1/integrations/event-types/{event_type}", tag = "event-types",
    params(("event_type" = String, Path, description = "Dotted event type")), security(("api_key" = ["events:write"])),
    request_body = RegisterEventType,
    responses(
        (status = 201, description = "Registered", body = EventTypeView),
        (status = 200, description = "This version was already registered with this schema", body = EventTypeView),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(event_type): Path<String>,
    ApiJson(body): ApiJson<RegisterEventType>,
) -> Result<(StatusCode, Json<EventTypeView>), ApiError> {
    let (_, created) = state
        .engine
        .register_event_type(&tenant, &event_type, body.schema_version, body.schema)
        .await?;
    let versions = state.engine.event_type(&tenant, &event_type).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(event_type, versions))))
}

/// Reads an event type with all its versions.
#[utoipa::path(get, path = "/api/v1/integrations/event-types/{event_type}", tag = "event-types",
    params(("event_type" = String, Path, description = "Dotted event type")), security(("api_key" = ["events:read"])),
    responses((status = 200, description = "The event type", body = EventTypeView)))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(event_type): Path<String>,
) -> Result<Json<EventTypeView>, ApiError> {
    let versions = state.engine.event_type(&tenant, &event_type).await?;
    Ok(Json(view(event_type, versions)))
}

/// Lists the registered event types by name.
#[utoipa::path(get, path = "/api/v1/integrations/event-types", tag = "event-types",
    params(PageQuery), security(("api_key" = ["events:read"])),
    responses((status = 200, description = "A page of event types", body = List<EventTypeView>)))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<List<EventTypeView>>, ApiError> {
    let page = Page {
        limit: q.limit,
        cursor: non_empty(q.cursor),
    };
    let result = state
        .engine
        .list_event_types(&tenant, page.cursor.clone(), page.limit()?)
        .await?;
    Ok(Json(List {
        data: result.data.into_iter().map(|(n, v)| view(n, v)).collect(),
        next_cursor: result.next_cursor,
    }))
}
