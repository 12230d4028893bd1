//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the request/response types, served at `/api/v1/openapi.json`.
//!
//! The error answers every operation can give (problem+json) are added to
//! each operation here, in one place, so the document lists them all.

use axum::Json;
use utoipa::{
    openapi::{
        path::Operation,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        Content, RefOr, Response, ResponseBuilder,
    },
    Modify, OpenApi,
};

use crate::{error::Problem, routes};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Webhook and domain-event delivery: emit events, subscribe endpoints, follow every delivery, replay and recover, stream events over WebSocket. Every call but /healthz, /readyz, /metrics and this document needs `Authorization: Bearer <key>` (a tenant API key, or the admin token for /api/v1/admin). Each tenant operation lists the one API-key scope it needs under `security` (`events:write`, `events:read`, `events:replay`, `webhooks:read`, `webhooks:write`, `admin`; `admin` grants every scope); a key without it gets 403 `insufficient-scope`, an expired key 401. Errors are application/problem+json with a stable `type`.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::healthz,
        crate::readyz,
        document,
        routes::metrics::export,
        routes::admin::create_tenant,
        routes::admin::delete_tenant,
        routes::export::export,
        routes::admin::get_quotas,
        routes::admin::put_quotas,
        routes::api_keys::admin_create,
        routes::api_keys::admin_list,
        routes::api_keys::admin_revoke,
        routes::api_keys::create,
        routes::api_keys::list,
        routes::api_keys::revoke,
        routes::audit::list,
        routes::audit::list_operator,
        routes::subscriptions::subscribe,
        routes::subscriptions::list,
        routes::subscriptions::get,
        routes::subscriptions::update,
        routes::subscriptions::remove,
        routes::subscriptions::pause,
        routes::subscriptions::resume,
        routes::subscriptions::rotate_secret,
        routes::payload_filters::test,
        routes::jwks::subscription,
        routes::jwks::tenant,
        routes::recoveries::recover,
        routes::recoveries::get,
        routes::events::emit,
        routes::events::emit_batch,
        routes::events::list,
        routes::events::get,
        routes::events::replay,
        routes::deliveries::list,
        routes::event_types::list,
        routes::event_types::register,
        routes::event_types::get,
        routes::stream::stream,
    ),
    components(schemas(Problem, herald_engine::error::SchemaIssue)),
    modifiers(&Security, &StandardErrors),
    tags(
        (name = "admin", description = "Tenants, their API keys and quotas, their export and deletion (admin token)"),
        (name = "api-keys", description = "The caller's own API keys"),
        (name = "audit", description = "The audit trail: who changed the tenant's configuration, and when"),
        (name = "subscriptions", description = "Webhook subscriptions, secret rotation, bulk recovery"),
        (name = "events", description = "Emit, list, read and replay domain events"),
        (name = "deliveries", description = "The delivery log: every attempt"),
        (name = "event-types", description = "The event-type catalogue (JSON Schema per version)"),
        (name = "stream", description = "The WebSocket event stream"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["api_key", "admin_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

struct StandardErrors;

fn problem(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                )))),
            )
            .build(),
    )
}

/// Whether the operation takes a tenant API key (and so names its scope).
fn takes_api_key(op: &Operation) -> bool {
    serde_json::to_value(&op.security)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|req| req.get("api_key").is_some())
}

fn add_errors(op: &mut Operation, authenticated: bool, has_body: bool) {
    let mut errors = vec![
        ("400", "Malformed request (bad JSON, bad query string)"),
        ("404", "No such resource for this tenant, or no such route"),
        ("405", "Method not allowed on this path"),
        (
            "422",
            "A field's value is not acceptable (`field` names it), or a tenant quota refuses it (`quota-exceeded`)",
        ),
        ("500", "Unexpected error (logged)"),
        (
            "503",
            "The log or the store cannot take the change now; retry after `Retry-After`",
        ),
    ];
    if authenticated {
        errors.push(("401", "Missing, unknown, revoked or expired credentials"));
        errors.push((
            "429",
            "The tenant's request rate limit or events-per-second quota is exhausted; retry after `Retry-After`",
        ));
        errors.push(("409", "Conflict with an existing resource"));
    }
    if takes_api_key(op) {
        errors.push((
            "403",
            "The API key lacks the scope listed under `security` (`required_scope` names it; `admin` grants every scope)",
        ));
    }
    if has_body {
        errors.push(("413", "The body is larger than 1 MiB"));
        errors.push(("415", "The body is not JSON (content-type)"));
    }
    for (code, description) in errors {
        op.responses
            .responses
            .entry(code.to_string())
            .or_insert_with(|| problem(description));
    }
}

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let authenticated = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
            let ops = [
                (&mut item.get, false),
                (&mut item.delete, false),
                (&mut item.post, true),
                (&mut item.put, true),
                (&mut item.patch, true),
            ];
            for (op, has_body) in ops {
                if let Some(op) = op.as_mut() {
                    add_errors(op, authenticated, has_body);
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
