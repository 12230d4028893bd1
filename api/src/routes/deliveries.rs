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
#[derive(Debug, Deserialize)]
pub struct ListLogs {
    /// Only this subscription.
    pub subscription_id: Option<String>,
    /// Only this event.
    pub event_id: Option<String>,
    /// Only this outcome: delivered | failed | dead.
    pub status: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Lists delivery attempts, newest first.
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
