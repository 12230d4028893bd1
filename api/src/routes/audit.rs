//! The tenant's audit trail: every change to its configuration, who made it
//! (an API key id, the admin token, or Herald itself) and when, newest first.

use axum::{extract::State, Json};
use herald_engine::audit::{AuditFilter, AuditRecord, OPERATOR_TRAIL};
use serde::Deserialize;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{events::List, non_empty, Page};
use crate::{
    error::ApiError,
    extract::{Admin, ApiQuery, Tenant},
    AppState,
};

/// `?limit=&cursor=&action=&subscription_id=&since=&until=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAudit {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only this action, e.g. `subscription.created` (docs/api.md lists them).
    pub action: Option<String>,
    /// Only records about this subscription (`sub_…`).
    pub subscription_id: Option<String>,
    /// Only records at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
}

fn time_ms(field: &'static str, value: Option<String>) -> Result<Option<i64>, ApiError> {
    non_empty(value)
        .map(|t| {
            OffsetDateTime::parse(&t, &Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    ApiError::invalid(field, format!("{field}: {t:?} is not an RFC 3339 time"))
                })
        })
        .transpose()
}

/// Lists the tenant's audit records, newest first.
#[utoipa::path(get, path = "/api/v1/portal/audit", tag = "audit",
    params(ListAudit), security(("api_key" = ["admin"])),
    responses((status = 200, description = "A page of audit records, newest first", body = List<AuditRecord>)))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<ListAudit>,
) -> Result<Json<List<AuditRecord>>, ApiError> {
    page_of(&state, &tenant, q).await
}

/// Lists the operator's audit records (admin): operations on tenants
/// themselves, such as `tenant.deleted` (its `target` names the tenant),
/// which outlive the tenant. Newest first, with the same filters.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin",
    params(ListAudit), security(("admin_token" = [])),
    responses((status = 200, description = "A page of the operator's audit records, newest first", body = List<AuditRecord>)))]
pub async fn list_operator(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<ListAudit>,
) -> Result<Json<List<AuditRecord>>, ApiError> {
    page_of(&state, OPERATOR_TRAIL, q).await
}

async fn page_of(
    state: &AppState,
    tenant: &str,
    q: ListAudit,
) -> Result<Json<List<AuditRecord>>, ApiError> {
    let page = Page {
        limit: q.limit,
        cursor: non_empty(q.cursor),
    };
    let filter = AuditFilter {
        action: non_empty(q.action),
        subscription_id: non_empty(q.subscription_id),
        since_ms: time_ms("since", q.since)?,
        until_ms: time_ms("until", q.until)?,
    };
    let found = state
        .engine
        .audit_trail(tenant, filter, page.cursor.clone(), page.limit()?)
        .await?;
    Ok(Json(List {
        data: found.data,
        next_cursor: found.next_cursor,
    }))
}
