//! Scoped API keys (issue 20, point 2). Every route's access comes from the
//! route table the router is built from ([`api_routes`]), so the matrix
//! below covers a route the moment it is added: a tenant route must declare
//! a scope (the table's methods take one), the OpenAPI document must name
//! the same scope, and a key of every scope is tried on every route.

use herald_api::{extract::Access, openapi::ApiDoc, route_table::api_routes};
use herald_engine::resources::Scope;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::support::{Herald, ADMIN};

/// `{param}` segments replaced by a value.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// A body for the methods that take one (not a valid one: only the
/// authorization is under test).
fn body_for(method: &str) -> Option<Value> {
    matches!(method, "POST" | "PUT" | "PATCH").then(|| json!({}))
}

/// Creates a key of tenant `tenant` with the admin token.
async fn key_with(h: &Herald, tenant: &str, body: Value) -> (u16, Value) {
    h.call(
        "POST",
        ADMIN,
        &format!("/api/v1/admin/tenants/{tenant}/api-keys"),
        Some(body),
    )
    .await
}

async fn scoped_key(h: &Herald, tenant: &str, scopes: &[&str]) -> String {
    let (status, body) = key_with(h, tenant, json!({ "scopes": scopes })).await;
    assert_eq!(status, 201, "{body}");
    body["api_key"].as_str().unwrap().to_string()
}

#[test]
fn every_route_declares_its_access_and_the_openapi_document_names_the_same_scope() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let routes = api_routes().access();
    assert!(routes.len() > 25, "{}", routes.len());
    for (method, path, access) in routes {
        let op = &doc["paths"][path][method.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        let tenant_route = path.starts_with("/api/v1/")
            && !path.starts_with("/api/v1/admin/")
            && path != "/api/v1/openapi.json";
        match access {
            Access::Key(scope) => {
                assert!(
                    tenant_route,
                    "{method} {path}: an API key on a non-tenant route"
                );
                assert_eq!(
                    op["security"],
                    json!([{ "api_key": [scope.as_str()] }]),
                    "{method} {path}: the document must name the scope {scope}"
                );
                assert!(op["responses"]["403"].is_object(), "{method} {path}");
            }
            Access::AdminToken => {
                assert!(path.starts_with("/api/v1/admin/"), "{method} {path}");
                assert_eq!(
                    op["security"],
                    json!([{ "admin_token": [] }]),
                    "{method} {path}"
                );
            }
            Access::Public => {
                assert!(
                    !tenant_route,
                    "{method} {path}: a tenant route must declare a scope"
                );
                assert!(!path.starts_with("/api/v1/admin/"), "{method} {path}");
                assert!(op["security"].is_null(), "{method} {path}");
            }
        }
    }
}

#[tokio::test]
async fn every_route_answers_every_scope_as_the_table_says() {
    let h = Herald::start().await;
    h.tenant("acme").await;
    let mut keys = Vec::new();
    for scope in Scope::ALL {
        keys.push((scope, scoped_key(&h, "acme", &[scope.as_str()]).await));
    }
    let routes = api_routes().access();
    let mut checked = 0;
    for (method, path, access) in &routes {
        let url = concrete(path);
        for (scope, key) in &keys {
            let (status, body) = h
                .call(method.as_str(), key, &url, body_for(method.as_str()))
                .await;
            let what = format!("{method} {path} with a {scope} key: {status} {body}");
            match access {
                Access::Key(needed) if needed.granted_by(&[*scope]) => {
                    assert!(![401, 403, 500].contains(&status), "allowed: {what}");
                }
                Access::Key(needed) => {
                    assert_eq!(status, 403, "{what}");
                    assert_eq!(
                        body["type"], "https://herald.dev/problems/insufficient-scope",
                        "{what}"
                    );
                    assert_eq!(body["required_scope"], needed.as_str(), "{what}");
                    assert!(
                        body["detail"].as_str().unwrap().contains(needed.as_str()),
                        "{what}"
                    );
                }
                Access::AdminToken => assert_eq!(status, 401, "{what}"),
                Access::Public => assert!(![401, 403].contains(&status) && status < 500, "{what}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * Scope::ALL.len());
    // The admin routes take the admin token (a handler behind the wrong
    // access would answer 500 here).
    for (method, path, access) in &routes {
        if *access == Access::AdminToken {
            let (status, body) = h
                .call(
                    method.as_str(),
                    ADMIN,
                    &concrete(path),
                    body_for(method.as_str()),
                )
                .await;
            assert!(
                ![401, 403, 500].contains(&status),
                "{method} {path} as admin: {status} {body}"
            );
        }
    }
    // A key with two scopes has both, and nothing else.
    let both = scoped_key(&h, "acme", &["events:read", "webhooks:read"]).await;
    assert_eq!(h.get(&both, "/api/v1/integrations/events").await.0, 200);
    assert_eq!(h.get(&both, "/api/v1/portal/webhooks").await.0, 200);
    let (status, _) = h
        .post(
            &both,
            "/api/v1/integrations/events",
            json!({"event_type": "a.b", "payload": {}}),
        )
        .await;
    assert_eq!(status, 403);
    // The 403 says which scope is missing in WWW-Authenticate too (RFC 6750).
    let r = h
        .http
        .get(h.url("/api/v1/portal/api-keys"))
        .bearer_auth(&both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="admin""#
    );
}

#[tokio::test]
async fn key_creation_takes_scopes_expiry_and_name_and_refuses_bad_input() {
    let h = Herald::start().await;
    let full = h.tenant("acme").await;
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, created) = key_with(
        &h,
        "acme",
        json!({"name": "dashboard", "scopes": ["webhooks:read", "events:read", "events:read"], "expires_at": expires}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "dashboard");
    assert_eq!(created["scopes"], json!(["events:read", "webhooks:read"]));
    assert!(created["expires_at"].is_string());
    // Without a body: full access, no expiry (as before scopes).
    let (status, plain) = h.post(&full, "/api/v1/portal/api-keys", json!({})).await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(plain["scopes"], json!(["admin"]));
    assert!(plain["expires_at"].is_null());

    let past = "2020-01-01T00:00:00Z";
    for (body, field) in [
        (
            json!({"scopes": ["events:write", "events:delete"]}),
            "scopes",
        ),
        (json!({"scopes": []}), "scopes"),
        (json!({"scopes": ["Admin"]}), "scopes"),
        (json!({"expires_at": past}), "expires_at"),
        (json!({"expires_at": "tomorrow"}), "expires_at"),
        (json!({"name": "", "scopes": ["admin"]}), "name"),
    ] {
        for (key, path) in [
            (ADMIN, "/api/v1/admin/tenants/acme/api-keys"),
            (full.as_str(), "/api/v1/portal/api-keys"),
        ] {
            let (status, problem) = h.call("POST", key, path, Some(body.clone())).await;
            assert_eq!(status, 422, "{body} on {path}: {problem}");
            assert_eq!(problem["field"], field, "{problem}");
        }
    }
    let (status, unknown) = key_with(&h, "acme", json!({"scopes": ["events:delete"]})).await;
    assert_eq!(status, 422);
    assert!(
        unknown["detail"]
            .as_str()
            .unwrap()
            .contains("events:delete"),
        "{unknown}"
    );
    // Nothing was created by the refused calls.
    let (_, list) = h.get(&full, "/api/v1/portal/api-keys").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");
    // A key without `admin` cannot make keys (so it cannot mint itself more).
    let reader = scoped_key(&h, "acme", &["events:read"]).await;
    let (status, body) = h
        .post(
            &reader,
            "/api/v1/portal/api-keys",
            json!({"scopes": ["admin"]}),
        )
        .await;
    assert_eq!(
        (status, body["required_scope"].as_str()),
        (403, Some("admin"))
    );
}

#[tokio::test]
async fn an_expired_key_gets_401_and_a_live_one_works_until_then() {
    let h = Herald::start().await;
    h.tenant("acme").await;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let (status, created) = key_with(
        &h,
        "acme",
        json!({"scopes": ["events:read"], "expires_at": soon.format(&time::format_description::well_known::Rfc3339).unwrap()}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["api_key"].as_str().unwrap();
    assert_eq!(h.get(key, "/api/v1/integrations/events").await.0, 200);
    tokio::time::sleep_until(tokio::time::Instant::now() + std::time::Duration::from_millis(2300))
        .await;
    let (status, problem) = h.get(key, "/api/v1/integrations/events").await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["type"], "https://herald.dev/problems/unauthorized");
    assert!(
        problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );
    // Expired is checked before the scope: a call it never had a scope for is 401 too.
    assert_eq!(h.get(key, "/api/v1/portal/webhooks").await.0, 401);
}

#[tokio::test]
async fn a_key_stored_before_scopes_keeps_full_access() {
    let h = Herald::start().await;
    let old = h.tenant("acme").await;
    let dir = h.stop().await;
    // As a store from before scopes has it: no scopes, no expiry (the v5
    // migration leaves every older key so).
    {
        let conn = rusqlite::Connection::open(dir.path().join("store").join("herald.db")).unwrap();
        let n = conn
            .execute("UPDATE api_keys SET scopes = NULL, expires_at = NULL", [])
            .unwrap();
        assert_eq!(n, 1);
    }
    let h = Herald::start_in(dir, |_| {}, |s| s).await;
    let (status, list) = h.get(&old, "/api/v1/portal/api-keys").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"][0]["scopes"], json!(["admin"]));
    for (method, path, access) in api_routes().access() {
        if let Access::Key(_) = access {
            let (status, body) = h
                .call(
                    method.as_str(),
                    &old,
                    &concrete(path),
                    body_for(method.as_str()),
                )
                .await;
            assert!(
                ![401, 403, 500].contains(&status),
                "{method} {path}: {status} {body}"
            );
        }
    }
    // And the real thing works end to end with it.
    let sub = h.subscribe(&old, "http://127.0.0.1:9/hook", &["a.*"]).await;
    assert!(sub["id"].is_string());
    let event = h.emit(&old, "a.b", json!({})).await;
    let (status, _) = h
        .get(
            &old,
            &format!(
                "/api/v1/integrations/events/{}",
                event["id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_stream_needs_events_read_by_header_and_by_subprotocol() {
    use tokio_tungstenite::{connect_async, tungstenite::client::IntoClientRequest};
    let h = Herald::start().await;
    h.tenant("acme").await;
    let reader = scoped_key(&h, "acme", &["events:read"]).await;
    let writer = scoped_key(&h, "acme", &["events:write", "webhooks:read"]).await;
    let url = format!(
        "{}/api/v1/webhooks/stream",
        h.base.replace("http://", "ws://")
    );
    let open = |header: &'static str, value: String| {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut().insert(header, value.parse().unwrap());
        connect_async(req)
    };
    for (header, value) in [
        ("authorization", format!("Bearer {reader}")),
        (
            "sec-websocket-protocol",
            format!("herald.v1, herald.bearer.{reader}"),
        ),
    ] {
        let (ws, _) = open(header, value)
            .await
            .expect("events:read opens the stream");
        drop(ws);
    }
    for (header, value) in [
        ("authorization", format!("Bearer {writer}")),
        (
            "sec-websocket-protocol",
            format!("herald.v1, herald.bearer.{writer}"),
        ),
    ] {
        match open(header, value).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 403, "{header}");
                let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["required_scope"], "events:read");
            }
            other => panic!("{header}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
}
