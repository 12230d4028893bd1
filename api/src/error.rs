//! One error type for every handler, rendered as `application/problem+json`
//! (RFC 9457) with a stable `type`. Internal details go to the log, never to
//! the client.

use axum::{
    extract::rejection::{JsonRejection, QueryRejection},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use herald_engine::{resources::Scope, EngineError};
use serde_json::json;

/// Base of every problem `type`.
pub const PROBLEM_BASE: &str = "https://herald.dev/problems/";

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    field: Option<&'static str>,
    errors: Option<Box<serde_json::Value>>,
    retry_after: Option<u64>,
    required_scope: Option<&'static str>,
    /// Answered before the request's body was read: the connection is
    /// closed after the answer, and says so (`Connection: close`), so a
    /// client does not send its next request on it.
    unread_body: bool,
}

/// The problem+json body (RFC 9457) of every error answer.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable URI naming the kind of problem, e.g. `https://herald.dev/problems/not-found`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong here and how to fix it.
    pub detail: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Schema violations of an emitted payload (`schema-violation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<herald_engine::error::SchemaIssue>>,
    /// The API-key scope the call needs and the key lacks (`insufficient-scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            field: None,
            errors: None,
            retry_after: None,
            required_scope: None,
            unread_body: false,
        }
    }

    /// 403: the API key lacks the scope this call needs.
    pub fn insufficient_scope(needed: Scope, granted: &[Scope]) -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "insufficient-scope",
            "Insufficient scope",
            format!(
                "this call needs an API key with the scope {needed} (or admin); this key has: {}",
                Scope::join(granted).replace(' ', ", ")
            ),
        );
        e.required_scope = Some(needed.as_str());
        e
    }

    /// 500: a route serves a handler that needs an API key but declares no
    /// scope (a programming error, caught by the route-matrix test).
    pub fn undeclared_scope() -> Self {
        tracing::error!("a route needs an API key but declares no scope");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "an unexpected error happened; it has been logged",
        )
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not support this HTTP method; see /api/v1/openapi.json",
        )
    }

    /// 426: a WebSocket endpoint was called without an upgrade.
    pub fn upgrade_required() -> Self {
        Self::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "WebSocket upgrade required",
            "this endpoint is a WebSocket: send an upgrade request (Connection: Upgrade, Upgrade: websocket)",
        )
    }

    /// 429: the tenant's request rate limit is exhausted.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("the tenant's request rate limit is exhausted; retry in {retry_after_secs} s"),
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// 503: the emits in flight hold the whole emit budget.
    pub fn overloaded(budget_bytes: usize) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many events in flight",
            format!(
                "the emits being served hold the {budget_bytes} bytes of bodies this server takes \
                 at once (--max-emit-bytes-in-flight); nothing was accepted, retry after Retry-After"
            ),
        );
        e.retry_after = Some(1);
        e.unread_body = true;
        e
    }

    /// 503: more accepted events wait for delivery than
    /// `--max-emit-backlog` allows.
    pub fn backlog_full(full: herald_engine::BacklogFull) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many events waiting for delivery",
            format!(
                "{} accepted events are still waiting to be delivered, more than the {} this \
                 server takes before it delivers them ({}), and {} of them are in this tenant's \
                 partition of the event log; nothing was accepted, retry after Retry-After",
                full.events,
                full.max,
                match full.rate {
                    Some(rate) => format!(
                        "--max-backlog-wait at the {rate} events/s delivery settles now, \
                         {} at least",
                        herald_engine::MIN_WAIT_BOUND
                    ),
                    None => "--max-emit-backlog".into(),
                },
                full.in_partition
            ),
        );
        e.retry_after = Some(1);
        e.unread_body = true;
        e
    }

    /// 503: the caller's tenant holds its share of the emit budget.
    pub fn overloaded_tenant(per_tenant_bytes: usize) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many events in flight",
            format!(
                "this tenant's emits being served hold the {per_tenant_bytes} bytes of bodies one \
                 tenant may take at once (a quarter of --max-emit-bytes-in-flight); nothing was \
                 accepted, retry after Retry-After"
            ),
        );
        e.retry_after = Some(1);
        e.unread_body = true;
        e
    }

    /// 413: the body is larger than allowed.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!(
                "the request body is larger than {} bytes",
                crate::MAX_BODY_BYTES
            ),
        )
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Malformed request",
            detail,
        )
    }

    /// 422: a field's value is not acceptable.
    pub fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            "Invalid field",
            detail,
        );
        e.field = Some(field);
        e
    }

    /// 401: no or wrong credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// 404: no such resource (for this tenant).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("{what} not found"),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid { field, message } => {
                Self::invalid(field, format!("{field}: {message}"))
            }
            EngineError::NotFound(what) => Self::not_found(what),
            EngineError::SchemaViolation {
                event_type,
                schema_version,
                errors,
            } => {
                let mut e = Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "schema-violation",
                    "Payload does not match its schema",
                    format!(
                        "payload: {} violation(s) of the registered schema of {event_type} v{schema_version}",
                        errors.len()
                    ),
                );
                e.field = Some("payload");
                e.errors = serde_json::to_value(errors).ok().map(Box::new);
                e
            }
            EngineError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", "Conflict", m),
            EngineError::QuotaExceeded {
                field,
                message,
                retry_after: Some(wait),
            } => {
                let mut e = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Rate limited",
                    message,
                );
                e.field = Some(field);
                // Whole seconds, rounded up: a client that waits this long is let in.
                e.retry_after = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
                e
            }
            EngineError::QuotaExceeded {
                field,
                message,
                retry_after: None,
            } => {
                let mut e = Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "quota-exceeded",
                    "Quota exceeded",
                    message,
                );
                e.field = Some(field);
                e
            }
            EngineError::Unavailable(m) => {
                tracing::warn!(reason = %m, "answering 503");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Temporarily unavailable",
                    "Herald cannot make this change durable right now; retry later",
                )
            }
            EngineError::Internal(source) => {
                tracing::error!(error = %source, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "an unexpected error happened; it has been logged",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as JSON with content-type: application/json",
            ),
            JsonRejection::JsonDataError(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Invalid body",
                e.body_text(),
            ),
            JsonRejection::JsonSyntaxError(e) => Self::bad_request(e.body_text()),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::payload_too_large()
            }
            other => Self::bad_request(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("{PROBLEM_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        if let Some(errors) = self.errors {
            body["errors"] = *errors;
        }
        if let Some(scope) = self.required_scope {
            body["required_scope"] = json!(scope);
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.unread_body {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(scope) = self.required_scope {
            // RFC 6750 §3.1.
            if let Ok(v) = header::HeaderValue::from_str(&format!(
                "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
            )) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        response
    }
}

/// Turns the error answers that axum and tower make on their own (body
/// limits, bad paths, WebSocket upgrade failures) into problem+json, so
/// every 4xx/5xx has the same shape.
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    let (slug, title, detail) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => return ApiError::payload_too_large().into_response(),
        StatusCode::METHOD_NOT_ALLOWED => return ApiError::method_not_allowed().into_response(),
        StatusCode::NOT_FOUND => return ApiError::not_found("route").into_response(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with content-type: application/json",
        ),
        s if s.is_server_error() => (
            "internal",
            "Internal error",
            "an unexpected error happened; it has been logged",
        ),
        StatusCode::UPGRADE_REQUIRED | StatusCode::BAD_REQUEST => (
            "bad-request",
            "Malformed request",
            "the request is malformed (a WebSocket endpoint needs a WebSocket upgrade)",
        ),
        _ => (
            "bad-request",
            "Malformed request",
            "the request was refused",
        ),
    };
    let mut e = ApiError::new(status, slug, title, detail);
    if status.is_server_error() {
        tracing::error!(%status, "a bare error answer was turned into problem+json");
        e.status = StatusCode::INTERNAL_SERVER_ERROR;
    }
    e.into_response()
}
