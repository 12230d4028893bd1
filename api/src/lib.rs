//! Herald's REST and WebSocket server: the routes of DESIGN §5/§8 over the
//! engine, the OpenAPI document generated from them, and the `herald`
//! command line.
//!
//! Every call but `/healthz`, `/readyz` and the OpenAPI document is
//! authenticated: the admin token for `/api/v1/admin/*`, a tenant API key
//! for everything else, and every tenant call is scoped to the key's tenant
//! (another tenant's resources answer 404). Every error is
//! `application/problem+json` with a stable `type`, including the router's
//! own 404, 405 and 413 answers.
#![warn(missing_docs)]

pub mod admission;
pub mod cli;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod portal;
pub mod route_table;
pub mod routes;
pub mod server;

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use axum::{extract::DefaultBodyLimit, middleware, routing::get, Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use herald_engine::Engine;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default per-tenant request rate (requests per second).
pub const DEFAULT_TENANT_RATE_LIMIT: u32 = 1000;

/// Settings of the WebSocket event stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Frames buffered per connection before the consumer counts as too slow.
    pub buffer_frames: usize,
    /// How long the buffer may stay full before the consumer counts as too
    /// slow and is closed (code 4008).
    pub slow_consumer_after: Duration,
    /// Interval between pings; a connection with no pong for two intervals is closed.
    pub ping_interval: Duration,
    /// How long a close frame may take to reach a slow consumer before the
    /// connection is dropped.
    pub close_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            buffer_frames: 256,
            slow_consumer_after: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            close_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The admin token (compared in constant time).
    pub admin_token: Arc<str>,
    /// Per-tenant request rate limit; `None` disables it.
    pub limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    /// WebSocket stream settings.
    pub stream: StreamConfig,
    /// The bytes of emit bodies served at once; `None` leaves them unbounded.
    pub emit_budget: Option<Arc<admission::EmitBudget>>,
}

impl AppState {
    /// State with the default rate limit and stream settings.
    pub fn new(engine: Arc<Engine>, admin_token: impl Into<Arc<str>>) -> Self {
        Self {
            engine,
            admin_token: admin_token.into(),
            limiter: None,
            stream: StreamConfig::default(),
            emit_budget: None,
        }
        .with_rate_limit(DEFAULT_TENANT_RATE_LIMIT)
        .with_emit_budget(admission::DEFAULT_EMIT_BUDGET_BYTES)
    }

    /// Bounds the bytes of emit bodies served at once (beyond them an emit
    /// is answered 503 with `Retry-After`); 0 leaves them unbounded.
    pub fn with_emit_budget(mut self, bytes: usize) -> Self {
        self.emit_budget = (bytes > 0).then(|| Arc::new(admission::EmitBudget::new(bytes)));
        self
    }

    /// Limits each tenant to `per_second` requests per second, with bursts
    /// of as many; 0 turns the limit off.
    pub fn with_rate_limit(mut self, per_second: u32) -> Self {
        self.limiter = NonZeroU32::new(per_second)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_second(n).allow_burst(n))));
        self
    }
}

/// The router, ready to serve: the API of [`route_table::api_routes`] (every
/// API route goes through that table, which the OpenAPI test compares with
/// the document) and the portal's static files.
pub fn app(state: AppState) -> Router {
    route_table::api_routes()
        .into_router(&state)
        .merge(portal::routes())
        .fallback(|| async { error::ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed() })
        .layer(axum::middleware::map_response(
            error::problem_for_bare_errors,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The router of a `--role worker` or `--role relay` process: health and
/// the process's own metrics ([`routes::metrics::export`]: the delivery,
/// breaker, backlog and lag series of a worker, the relay's counters), no API.
pub fn worker_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(routes::metrics::export))
        .fallback(|| async { error::ApiError::not_found("route") })
        .with_state(state)
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> Json<Health> {
    Json(health(&state))
}

/// Readiness: the event log and the store answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "The log or the store cannot be used", body = error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<Health>, error::ApiError> {
    state.engine.ready().await?;
    Ok(Json(health(&state)))
}

fn health(state: &AppState) -> Health {
    let role = match state.engine.config().role {
        herald_engine::config::Role::All => "all",
        herald_engine::config::Role::Api => "api",
        herald_engine::config::Role::Worker => "worker",
        herald_engine::config::Role::Relay => "relay",
    };
    let relay = state.engine.relay_stats().map(|r| {
        use std::sync::atomic::Ordering::Relaxed;
        serde_json::json!({
            "relayed": r.relayed.load(Relaxed),
            "skipped": r.skipped.load(Relaxed),
            "dead_lettered": r.dead_lettered.load(Relaxed),
            "transactions": r.transactions.load(Relaxed),
            "aborted": r.aborted.load(Relaxed),
            "in_transaction": r.in_transaction.load(Relaxed),
            "uncommitted": r.uncommitted.load(Relaxed),
        })
    });
    Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        role: role.into(),
        in_flight: state.engine.in_flight(),
        relay,
    }
}

/// `/healthz` and `/readyz` answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Herald's version.
    pub version: String,
    /// The process's role: all, api, worker or relay.
    pub role: String,
    /// Deliveries being attempted by this process.
    pub in_flight: usize,
    /// CDC relay counters, when this process relays.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub relay: Option<serde_json::Value>,
}
