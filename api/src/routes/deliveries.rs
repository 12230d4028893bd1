//! The delivery log: every attempt, filterable and paged.

use axum::{extract::State, Json};
use herald_engine::{model::WebhookDeliveryLog, store::LogFilter};
use serde::Deserialize;

use super::{events::List, non_empty, Page};
use crate::{
    error::ApiError,
    extract::{ApiQuery, Tenant},
    AppState,
};

/// `GET /api/v1/integrations/webhooks` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListLogs {
    /// Only this subscription.
    pub subscription_id: Option<String>,
    /// Only this event.
    pub event_id: Option<String>,
    /// Only this outcome: delivered | failed | dead.
    #[param(pattern = "^(delivered|failed|dead)?$")]
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Lists delivery attempts, newest first.
#[utoipa::path(get, path = "/api/v1/integrations/webhooks", tag = "deliveries",
    params(ListLogs), security(("api_key" = ["webhooks:read"])),
    responses((status = 200, description = "A page of delivery attempts", body = List<WebhookDeliveryLog>)))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<ListLogs>,
) -> Result<Json<List<WebhookDeliveryLog>>, ApiError> {
    let page = Page {
        limit: q.limit,
        cursor: non_empty(q.cursor),
    };
    let filter = LogFilter {
        subscription_id: non_empty(q.subscription_id),
        event_id: non_empty(q.event_id),
        outcome: non_empty(q.status),
        before: page.cursor.clone(),
    };
    let result = state
        .engine
        .list_delivery_logs(&tenant, filter, page.limit()?)
        .await?;
    Ok(Json(List {
        data: result.data,
        next_cursor: result.next_cursor,
    }))
}
