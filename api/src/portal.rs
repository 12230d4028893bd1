//! The web portal at `/portal`: the static assets of `portal/dist/` (built
//! by `scripts/build-portal` and committed), embedded in the binary so that
//! `herald serve` needs nothing else to serve them.
//!
//! What it guarantees:
//! - The portal is only static files; every call it makes goes through the
//!   authenticated REST API with the tenant's key, so it can show nothing
//!   the key could not read with `curl`.
//! - Content types follow the file extension; hashed assets under
//!   `/portal/assets/` are cached for a year (`immutable`), the HTML page is
//!   revalidated on every load (`no-cache`) so a new build shows at once.
//! - Every answer carries a strict Content-Security-Policy (same-origin
//!   scripts, styles and connections only, no framing) and
//!   `Referrer-Policy: no-referrer`.

use axum::{
    extract::Path,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};
use include_dir::{include_dir, Dir};

use crate::{error::ApiError, AppState};

static DIST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../portal/dist");

/// The portal's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Cache-Control of the fingerprinted files under `assets/`.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache-Control of everything else (the HTML page).
pub const CACHE_REVALIDATE: &str = "no-cache";

/// The `/portal` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/portal", get(|| async { Redirect::permanent("/portal/") }))
        .route("/portal/", get(|| async { file("index.html") }))
        .route(
            "/portal/{*path}",
            get(|Path(path): Path<String>| async move { file(&path) }),
        )
}

fn file(path: &str) -> Response {
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(f) = DIST.get_file(path) else {
        return ApiError::not_found("portal file").into_response();
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let cache = if path.starts_with("assets/") {
        CACHE_IMMUTABLE
    } else {
        CACHE_REVALIDATE
    };
    let mut res = (StatusCode::OK, f.contents()).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}
