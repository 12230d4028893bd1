//! `/metrics` in the Prometheus text format, and the middleware that counts
//! API requests by matched route template (never the raw path, which would
//! carry ids) and status class.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use herald_engine::metrics::CONTENT_TYPE;

use crate::AppState;

/// The route label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub async fn export(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.engine.metrics().render(),
    )
}

/// Counts and times every request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state.engine.metrics().http_request(
        &route,
        method_label(&method),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Known methods as themselves; anything else as `OTHER` (bounded labels).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
