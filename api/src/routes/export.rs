//! `GET /api/v1/admin/tenants/{tenant}/export`: everything a tenant owns as
//! NDJSON, one JSON object per line, each with a `kind`: `tenant`,
//! `api_key` (never the key or its hash), `event_type`, `subscription`
//! (never a secret, signing key or Kafka password), `event`,
//! `delivery_log`, `audit`, and a last `end` line with the count of lines
//! before it (a response cut short by an error has no `end` line). Streamed
//! a page at a time through the listings' cursors, never loaded whole.

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
};
use herald_engine::{
    audit::AuditFilter, error::EngineError, store::LogFilter, store::TenantState, Engine,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

use crate::{error::ApiError, extract::Admin, routes::subscriptions::SubscriptionView, AppState};

/// Items read per page.
const PAGE: usize = 200;

/// What the export reads next.
enum Step {
    Tenant,
    Keys(Option<String>),
    EventTypes(Option<String>),
    Subscriptions(Option<String>),
    Events(Option<String>),
    Logs(Option<String>),
    Audit(Option<String>),
    End,
    Done,
}

fn line(out: &mut Vec<u8>, kind: &str, item: impl Serialize) -> Result<(), EngineError> {
    let mut value = serde_json::to_value(item).map_err(|e| EngineError::Internal(Box::new(e)))?;
    if let Value::Object(map) = &mut value {
        map.insert("kind".into(), Value::String(kind.into()));
    }
    serde_json::to_writer(&mut *out, &value).map_err(|e| EngineError::Internal(Box::new(e)))?;
    out.push(b'\n');
    Ok(())
}

/// The step after one that read a page ending at `next`.
fn then(next: Option<String>, same: fn(Option<String>) -> Step, after: Step) -> Step {
    match next {
        Some(c) => same(Some(c)),
        None => after,
    }
}

/// One page of lines, and the step after it.
async fn page(
    engine: &Engine,
    tenant: &str,
    step: Step,
    lines: &mut usize,
) -> Result<(Vec<u8>, Step), EngineError> {
    let mut out = Vec::new();
    let next = match step {
        Step::Tenant => {
            let quotas = engine.tenant_quotas(tenant).await?;
            line(
                &mut out,
                "tenant",
                json!({"id": tenant, "quotas": quotas, "exported_at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()}),
            )?;
            Step::Keys(None)
        }
        Step::Keys(cursor) => {
            let (keys, next) = engine.list_api_keys(tenant, cursor, PAGE).await?;
            for k in keys {
                line(&mut out, "api_key", k)?;
            }
            then(next, Step::Keys, Step::EventTypes(None))
        }
        Step::EventTypes(cursor) => {
            let p = engine.list_event_types(tenant, cursor, PAGE).await?;
            for (_, versions) in p.data {
                for v in versions {
                    line(&mut out, "event_type", v)?;
                }
            }
            then(p.next_cursor, Step::EventTypes, Step::Subscriptions(None))
        }
        Step::Subscriptions(cursor) => {
            let p = engine.list_subscriptions(tenant, cursor, PAGE).await?;
            for s in p.data {
                line(&mut out, "subscription", SubscriptionView::new(s, false))?;
            }
            then(p.next_cursor, Step::Subscriptions, Step::Events(None))
        }
        Step::Events(cursor) => {
            let p = engine.list_events(tenant, None, cursor, PAGE).await?;
            for e in p.data {
                line(&mut out, "event", e)?;
            }
            then(p.next_cursor, Step::Events, Step::Logs(None))
        }
        Step::Logs(cursor) => {
            let filter = LogFilter {
                before: cursor,
                ..Default::default()
            };
            let p = engine.list_delivery_logs(tenant, filter, PAGE).await?;
            for l in p.data {
                line(&mut out, "delivery_log", l)?;
            }
            then(p.next_cursor, Step::Logs, Step::Audit(None))
        }
        Step::Audit(cursor) => {
            let p = engine
                .audit_trail(tenant, AuditFilter::default(), cursor, PAGE)
                .await?;
            for r in p.data {
                line(&mut out, "audit", r)?;
            }
            then(p.next_cursor, Step::Audit, Step::End)
        }
        Step::End => {
            line(&mut out, "end", json!({ "lines": *lines }))?;
            Step::Done
        }
        Step::Done => return Ok((out, Step::Done)),
    };
    *lines += out.iter().filter(|b| **b == b'\n').count();
    Ok((out, next))
}

/// Exports a tenant's data as NDJSON (admin): its subscriptions without
/// secrets, event types, events, delivery logs, API keys without the keys,
/// and audit records.
#[utoipa::path(get, path = "/api/v1/admin/tenants/{tenant}/export", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant id")), security(("admin_token" = [])),
    responses((status = 200, description = "One JSON object per line, each with a `kind`: `tenant`, `api_key`, `event_type`, `subscription`, `event`, `delivery_log`, `audit`, then `end` with the count of lines before it", content_type = "application/x-ndjson", body = String)))]
pub async fn export(
    State(state): State<AppState>,
    _admin: Admin,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    if state.engine.tenant_state(&tenant).await? != Some(TenantState::Active) {
        return Err(EngineError::NotFound("tenant").into());
    }
    let engine: Arc<Engine> = state.engine.clone();
    let stream = futures_util::stream::unfold(
        (engine, tenant, Step::Tenant, 0usize),
        |(engine, tenant, step, mut lines)| async move {
            if matches!(step, Step::Done) {
                return None;
            }
            match page(&engine, &tenant, step, &mut lines).await {
                Ok((bytes, next)) => Some((Ok(Bytes::from(bytes)), (engine, tenant, next, lines))),
                Err(e) => {
                    tracing::error!(tenant_id = %tenant, error = %e, "tenant export failed; the response is cut short");
                    Some((Err(e), (engine, tenant, Step::Done, lines)))
                }
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
