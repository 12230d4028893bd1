//! Herald's REST server: the routes of DESIGN §5/§8 over the engine, and
//! the `herald` command line.
#![warn(missing_docs)]

pub mod cli;
pub mod error;
pub mod extract;
pub mod routes;

use std::sync::Arc;

use axum::{
    extract::DefaultBodyLimit,
    routing::{get, post},
    Json, Router,
};
use herald_engine::Engine;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The admin token (compared in constant time).
    pub admin_token: Arc<str>,
}

/// The router, ready to serve.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/admin/tenants", post(routes::admin::create_tenant))
        .route(
            "/portal/webhooks/subscribe",
            post(routes::subscriptions::subscribe),
        )
        .route("/portal/webhooks/{id}", get(routes::subscriptions::get))
        .route(
            "/portal/webhooks/{id}/rotate-secret",
            post(routes::subscriptions::rotate_secret),
        )
        .route(
            "/integrations/events",
            post(routes::events::emit).get(routes::events::list),
        )
        .route("/integrations/events/{id}", get(routes::events::get))
        .route(
            "/integrations/events/{id}/replay",
            post(routes::events::replay),
        )
        .route("/integrations/webhooks", get(routes::deliveries::list));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .fallback(|| async { error::ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The router of a `--role worker` process: health only, no API.
pub fn worker_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(|| async { error::ApiError::not_found("route") })
        .with_state(state)
}

async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Json<serde_json::Value> {
    let role = match state.engine.config().role {
        herald_engine::config::Role::All => "all",
        herald_engine::config::Role::Api => "api",
        herald_engine::config::Role::Worker => "worker",
        herald_engine::config::Role::Relay => "relay",
    };
    let mut body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "role": role,
        "in_flight": state.engine.in_flight(),
    });
    if let Some(r) = state.engine.relay_stats() {
        use std::sync::atomic::Ordering::Relaxed;
        body["relay"] = serde_json::json!({
            "relayed": r.relayed.load(Relaxed),
            "skipped": r.skipped.load(Relaxed),
            "dead_lettered": r.dead_lettered.load(Relaxed),
            "transactions": r.transactions.load(Relaxed),
            "aborted": r.aborted.load(Relaxed),
            "in_transaction": r.in_transaction.load(Relaxed),
        });
    }
    Json(body)
}
