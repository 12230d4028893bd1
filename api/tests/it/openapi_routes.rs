//! The OpenAPI document describes exactly the routes the router serves:
//! the served list comes from the route table the router is built from,
//! and probing the running server confirms each pair is served (and every
//! other method on a served path is refused with 405).

use std::collections::BTreeSet;

use herald_api::{openapi::ApiDoc, route_table::api_routes};
use serde_json::Value;
use utoipa::OpenApi;

use crate::support::Herald;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn documented() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut pairs = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item[m].is_object() {
                pairs.insert((m.to_string(), path.clone()));
            }
        }
    }
    pairs
}

fn served() -> BTreeSet<(String, String)> {
    api_routes()
        .served()
        .iter()
        .map(|(m, p)| (m.as_str().to_ascii_lowercase(), p.to_string()))
        .collect()
}

#[test]
fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let (documented, served) = (documented(), served());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served, not in OpenAPI: {undocumented:?}"
    );
    assert!(unserved.is_empty(), "in OpenAPI, not served: {unserved:?}");
    assert!(served.contains(&("post".into(), "/api/v1/integrations/events/batch".into())));
}

/// `{param}` segments replaced by a value.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the answer is the router's own (no route or no such method),
/// not a handler's.
fn routers_own(status: u16, body: &Value) -> bool {
    status == 405 || (status == 404 && body["detail"] == "route not found")
}

#[tokio::test]
async fn the_running_router_serves_each_listed_pair_and_refuses_other_methods() {
    let h = Herald::start().await;
    let served = served();
    let paths: BTreeSet<&String> = served.iter().map(|(_, p)| p).collect();
    assert!(!paths.is_empty());
    for path in paths {
        for m in METHODS {
            let (status, body) = h
                .call(&m.to_ascii_uppercase(), "not-a-key", &concrete(path), None)
                .await;
            let listed = served.contains(&(m.to_string(), path.clone()));
            assert_eq!(
                !routers_own(status, &body),
                listed,
                "{m} {path}: answered {status} {body}, listed: {listed}"
            );
        }
    }
}
