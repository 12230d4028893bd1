//! Payload filters (issue #22): CEL expressions on subscriptions, the test route.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    manage::numbers,
    support::{eventually, Herald, Receiver},
};

const PATH: &str = "/api/v1/portal/webhooks";

async fn subscribe_filtered(h: &Herald, key: &str, url: &str, filter: &str) -> String {
    let body = json!({
        "url": url, "event_types": ["inventory.*"], "ordering": "strict", "filter": filter,
    });
    let (s, sub) = h.post(key, &format!("{PATH}/subscribe"), body).await;
    assert_eq!(s, 201, "{sub}");
    assert_eq!(sub["filter"], filter);
    sub["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn subscriptions_receive_exactly_the_events_their_filters_match() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let (ra, rb) = (Receiver::start(200).await, Receiver::start(200).await);
    let big_eu = r#"data.warehouse == "EU-2" && data.quantity > 100"#;
    subscribe_filtered(&h, &key, &ra.url, big_eu).await;
    subscribe_filtered(&h, &key, &rb.url, r#""x" in data.tags"#).await;
    for data in [
        json!({"n": 1, "warehouse": "EU-2", "quantity": 150, "tags": []}),
        json!({"n": 2, "warehouse": "US-1", "quantity": 500, "tags": ["x"]}),
        json!({"n": 3, "warehouse": "EU-2", "quantity": 5, "tags": ["y"]}),
        json!({"n": 4, "quantity": "lots"}),
        // The barriers: the last event each subscription matches.
        json!({"n": 5, "warehouse": "EU-2", "quantity": 101, "tags": []}),
        json!({"n": 6, "tags": ["x"]}),
    ] {
        h.emit(&key, "inventory.adjusted", data).await;
    }
    for (rx, barrier) in [(&ra, 5), (&rb, 6)] {
        eventually("the barrier arrives", Duration::from_secs(20), || async {
            numbers(rx).contains(&barrier).then_some(())
        })
        .await;
    }
    // Strict order: everything matched before a barrier came before it.
    assert_eq!(numbers(&ra), vec![1, 5]);
    assert_eq!(numbers(&rb), vec![2, 6]);
}

#[tokio::test]
async fn bad_filters_are_refused_and_change_nothing() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let rx = Receiver::start(200).await;
    let too_long = format!("data.a == \"{}\"", "a".repeat(5000));
    let too_deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
    let bad = ["data.quantity >", too_long.as_str(), too_deep.as_str(), ""];
    for filter in bad {
        let body = json!({"url": rx.url, "event_types": ["a.b"], "filter": filter});
        let (s, p) = h.post(&key, &format!("{PATH}/subscribe"), body).await;
        assert_eq!(s, 422, "{p}");
        assert_eq!(p["field"], "filter", "{p}");
    }
    let (_, list) = h.get(&key, PATH).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");

    let id = subscribe_filtered(&h, &key, &rx.url, "has(data.sku)").await;
    let one = format!("{PATH}/{id}");
    for filter in bad {
        let (s, p) = h
            .call("PATCH", &key, &one, Some(json!({"filter": filter})))
            .await;
        assert_eq!(s, 422, "{p}");
        assert_eq!(p["field"], "filter", "{p}");
        let (_, sub) = h.get(&key, &one).await;
        assert_eq!(sub["filter"], "has(data.sku)");
    }
    let (s, sub) = h
        .call("PATCH", &key, &one, Some(json!({"filter": "data.n > 1"})))
        .await;
    assert_eq!((s, &sub["filter"]), (200, &json!("data.n > 1")), "{sub}");
    let (s, sub) = h
        .call("PATCH", &key, &one, Some(json!({"description": "d"})))
        .await;
    assert_eq!(
        (s, &sub["filter"]),
        (200, &json!("data.n > 1")),
        "absent keeps it"
    );
    let (s, sub) = h
        .call("PATCH", &key, &one, Some(json!({"filter": null})))
        .await;
    assert_eq!((s, &sub["filter"]), (200, &Value::Null), "null clears it");
    let (_, sub) = h.get(&key, &one).await;
    assert_eq!(sub["filter"], Value::Null);
}

#[tokio::test]
async fn the_test_route_answers_true_false_or_422() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let event = json!({"type": "inventory.adjusted", "data": {"sku": "A", "quantity": 3}});
    let path = "/api/v1/portal/filters/test";
    for (filter, matches) in [
        (r#"type.startsWith("inventory.") && has(data.sku)"#, true),
        (
            r#"event.type == "inventory.adjusted" && data.quantity > 3"#,
            false,
        ),
        ("data.missing == 1", false),
    ] {
        let (s, r) = h
            .post(&key, path, json!({"filter": filter, "event": event}))
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r, json!({"matches": matches}), "{filter}");
    }
    let (s, p) = h
        .post(&key, path, json!({"filter": "1 +", "event": event}))
        .await;
    assert_eq!(s, 422, "{p}");
    assert_eq!(p["field"], "filter", "{p}");
    let (s, p) = h
        .post(&key, path, json!({"filter": "true", "event": {"data": {}}}))
        .await;
    assert_eq!((s, &p["field"]), (422, &json!("event")), "{p}");
}
