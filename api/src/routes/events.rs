//! Events: emit, list, read one with its deliveries, replay.

use axum::{
    extract::{Path, State},
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use herald_engine::{model::DomainEvent, model::WebhookDeliveryLog, payload::Payload, NewEvent};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{non_empty, Page};
use crate::{
    admission::Admitted,
    error::ApiError,
    extract::{ApiJson, ApiQuery, Tenant},
    AppState,
};

/// `POST /api/v1/integrations/events` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// Dotted event type.
    pub event_type: String,
    /// JSON object.
    #[schema(value_type = Object)]
    #[serde(deserialize_with = "Payload::compact")]
    pub payload: Payload,
    /// Idempotency key.
    pub dedupe_key: Option<String>,
    /// Payload schema version (default 1).
    pub schema_version: Option<u32>,
    /// When it happened (default: now).
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub occurred_at: Option<OffsetDateTime>,
    /// Trace id for lineage.
    pub trace_id: Option<String>,
}

impl From<Emit> for NewEvent {
    fn from(e: Emit) -> Self {
        NewEvent {
            event_type: e.event_type,
            payload: e.payload,
            dedupe_key: e.dedupe_key,
            schema_version: e.schema_version,
            occurred_at: e.occurred_at,
            trace_id: e.trace_id,
        }
    }
}

/// Emits an event: 202 once it is durable. A repeated `dedupe_key` answers
/// the original event, with `herald-deduplicated: true`.
#[utoipa::path(post, path = "/api/v1/integrations/events", tag = "events",
    request_body = Emit, security(("api_key" = ["events:write"])),
    responses((status = 202, description = "Durable in the event log (or the original event of this dedupe_key)", body = DomainEvent,
        headers(("herald-deduplicated" = String, description = "`true` when the dedupe_key was seen before")))))]
pub async fn emit(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    _admitted: Admitted,
    ApiJson(body): ApiJson<Emit>,
) -> Result<Response, ApiError> {
    let (event, created) = state.engine.emit(&tenant, body.into()).await?;
    let mut response = (StatusCode::ACCEPTED, Json(event)).into_response();
    if !created {
        response.headers_mut().insert(
            HeaderName::from_static("herald-deduplicated"),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// `GET /api/v1/integrations/events` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListEvents {
    /// Exact type or `prefix.*`.
    pub event_type: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// A page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    /// Items, newest first.
    pub data: Vec<T>,
    /// Cursor of the next page, `null` at the end.
    pub next_cursor: Option<String>,
}

/// Lists the tenant's events, newest first.
#[utoipa::path(get, path = "/api/v1/integrations/events", tag = "events",
    params(ListEvents), security(("api_key" = ["events:read"])),
    responses((status = 200, description = "A page of events", body = List<DomainEvent>)))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<ListEvents>,
) -> Result<Json<List<DomainEvent>>, ApiError> {
    let page = Page {
        limit: q.limit,
        cursor: non_empty(q.cursor),
    };
    let result = state
        .engine
        .list_events(
            &tenant,
            non_empty(q.event_type),
            page.cursor.clone(),
            page.limit()?,
        )
        .await?;
    Ok(Json(List {
        data: result.data,
        next_cursor: result.next_cursor,
    }))
}

/// One event and its delivery attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventWithDeliveries {
    /// The event.
    #[serde(flatten)]
    pub event: DomainEvent,
    /// Its delivery attempts, newest first.
    pub deliveries: Vec<WebhookDeliveryLog>,
}

/// Reads one event with its deliveries.
#[utoipa::path(get, path = "/api/v1/integrations/events/{id}", tag = "events",
    params(("id" = String, Path, description = "Event id")), security(("api_key" = ["events:read"])),
    responses((status = 200, description = "The event and its delivery attempts", body = EventWithDeliveries)))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<EventWithDeliveries>, ApiError> {
    let (event, deliveries) = state.engine.event(&tenant, &id).await?;
    Ok(Json(EventWithDeliveries { event, deliveries }))
}

/// `POST /api/v1/integrations/events/{id}/replay` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Only this subscription (default: every matching active subscription).
    pub subscription_id: Option<String>,
}

/// One delivery created by a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// `dlv_…`.
    pub delivery_id: String,
    /// Where it goes.
    pub subscription_id: String,
    /// The delivery it replays.
    pub replay_of: Option<String>,
}

/// Replays one event; 202 with the new deliveries.
#[utoipa::path(post, path = "/api/v1/integrations/events/{id}/replay", tag = "events",
    params(("id" = String, Path, description = "Event id")), security(("api_key" = ["events:replay"])),
    request_body(content = Option<Replay>, description = "Optional; empty replays to every matching subscription"),
    responses((status = 202, description = "The new deliveries", body = List<Replayed>)))]
pub async fn replay(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<List<Replayed>>), ApiError> {
    let body: Replay = if body.iter().all(u8::is_ascii_whitespace) {
        Replay::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let replayed = state
        .engine
        .replay(&tenant, &id, body.subscription_id.as_deref())
        .await?;
    let data = replayed
        .into_iter()
        .map(|r| Replayed {
            delivery_id: r.delivery_id,
            subscription_id: r.subscription_id,
            replay_of: r.replay_of,
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(List {
            data,
            next_cursor: None,
        }),
    ))
}

/// `POST /api/v1/integrations/events/batch` body: up to
/// [`herald_engine::MAX_BATCH_EVENTS`] items shaped like a single emit, in
/// at most [`crate::MAX_BODY_BYTES`] of JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitBatch {
    /// The events, each as in a single emit (1 to 1,000).
    #[schema(value_type = Vec<Emit>, min_items = 1, max_items = 1000)]
    pub events: Vec<Box<serde_json::value::RawValue>>,
}

/// One item of a batch answer: the stored event and whether this item was
/// answered by an earlier event with the same `dedupe_key`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchItem {
    /// The stored event (the original one for a repeated `dedupe_key`).
    #[serde(flatten)]
    pub event: DomainEvent,
    /// `true` when nothing new was created for this item.
    pub deduplicated: bool,
}

/// Emits a batch atomically: 202 with one item per event, in order, once
/// all are durable; any invalid item → 422 naming its index, nothing stored.
#[utoipa::path(post, path = "/api/v1/integrations/events/batch", tag = "events",
    request_body = EmitBatch, security(("api_key" = ["events:write"])),
    responses((status = 202, description = "Every event durable, one item per event in the order given", body = List<BatchItem>)))]
pub async fn emit_batch(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    _admitted: Admitted,
    ApiJson(body): ApiJson<EmitBatch>,
) -> Result<(StatusCode, Json<List<BatchItem>>), ApiError> {
    let max = herald_engine::MAX_BATCH_EVENTS;
    if body.events.is_empty() || body.events.len() > max {
        return Err(ApiError::invalid(
            "events",
            format!("give 1 to {max} events (got {})", body.events.len()),
        ));
    }
    let mut items = Vec::with_capacity(body.events.len());
    for (i, raw) in body.events.into_iter().enumerate() {
        let e: Emit = serde_json::from_str(raw.get())
            .map_err(|err| ApiError::invalid("events", format!("events[{i}]: {err}")))?;
        items.push(e.into());
    }
    let data = state
        .engine
        .emit_batch(&tenant, items)
        .await?
        .into_iter()
        .map(|(event, created)| BatchItem {
            event,
            deduplicated: !created,
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(List {
            data,
            next_cursor: None,
        }),
    ))
}
