//! The event-type catalogue and payload validation.

use serde_json::json;

use crate::support::Herald;

#[tokio::test]
async fn registered_types_are_validated_and_versions_are_immutable() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let v1 = json!({"type": "object", "required": ["order_id"],
                    "properties": {"order_id": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}});
    let path = "/api/v1/integrations/event-types/order.created";
    let (s, body) = h
        .call(
            "PUT",
            &key,
            path,
            Some(json!({"schema_version": 1, "schema": v1})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    // Same again: 200, unchanged. Another schema for v1: 409.
    let (s, _) = h
        .call(
            "PUT",
            &key,
            path,
            Some(json!({"schema_version": 1, "schema": v1})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, body) = h
        .call(
            "PUT",
            &key,
            path,
            Some(json!({"schema_version": 1, "schema": {"type": "object"}})),
        )
        .await;
    assert_eq!(s, 409, "{body}");
    let (s, _) = h
        .call(
            "PUT",
            &key,
            path,
            Some(json!({"schema_version": 2, "schema": {"type": "object"}})),
        )
        .await;
    assert_eq!(s, 201);
    // Bad registrations.
    for bad in [
        json!({"schema_version": 0, "schema": {}}),
        json!({"schema_version": 3, "schema": {"type": 12}}),
        json!({"schema_version": 3, "schema": "text"}),
        json!({"schema_version": 3}),
    ] {
        let (s, body) = h.call("PUT", &key, path, Some(bad.clone())).await;
        assert_eq!(s, 422, "{bad} → {body}");
    }
    let (s, _) = h
        .call(
            "PUT",
            &key,
            "/api/v1/integrations/event-types/a.*",
            Some(json!({"schema_version": 1, "schema": {}})),
        )
        .await;
    assert_eq!(s, 422);

    let (s, t) = h.get(&key, path).await;
    assert_eq!(s, 200);
    assert_eq!(t["versions"].as_array().unwrap().len(), 2);
    assert_eq!(t["versions"][0]["schema"], v1);
    let (s, _) = h
        .get(&key, "/api/v1/integrations/event-types/never.registered")
        .await;
    assert_eq!(s, 404);
    h.call(
        "PUT",
        &key,
        "/api/v1/integrations/event-types/a.b",
        Some(json!({"schema_version": 1, "schema": {}})),
    )
    .await;
    let (s, list) = h
        .get(&key, "/api/v1/integrations/event-types?limit=1")
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["data"][0]["event_type"], "a.b");
    let c = list["next_cursor"].as_str().unwrap();
    let (_, list2) = h
        .get(
            &key,
            &format!("/api/v1/integrations/event-types?limit=1&cursor={c}"),
        )
        .await;
    assert_eq!(list2["data"][0]["event_type"], "order.created");

    // Emits: valid passes, invalid → 422 listing every violation, nothing stored.
    let emit = |payload: serde_json::Value, version: u32| json!({"event_type": "order.created", "payload": payload, "schema_version": version});
    let (s, _) = h
        .post(
            &key,
            "/api/v1/integrations/events",
            emit(json!({"order_id": "o1", "qty": 2}), 1),
        )
        .await;
    assert_eq!(s, 202);
    let (s, problem) = h
        .post(
            &key,
            "/api/v1/integrations/events",
            emit(json!({"qty": 0}), 1),
        )
        .await;
    assert_eq!(s, 422, "{problem}");
    assert_eq!(
        problem["type"],
        "https://herald.dev/problems/schema-violation"
    );
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{problem}");
    assert!(errors.iter().any(|e| e["instance_path"] == "/qty"));
    // A version with no schema of a registered type is refused; v2 is laxer.
    let (s, _) = h
        .post(&key, "/api/v1/integrations/events", emit(json!({}), 7))
        .await;
    assert_eq!(s, 422);
    let (s, _) = h
        .post(
            &key,
            "/api/v1/integrations/events",
            emit(json!({"qty": 0}), 2),
        )
        .await;
    assert_eq!(s, 202);
    // Unregistered types pass as they are.
    h.emit(&key, "anything.else", json!({"free": true})).await;
    let (_, events) = h.get(&key, "/api/v1/integrations/events").await;
    assert_eq!(
        events["data"].as_array().unwrap().len(),
        3,
        "refused emits store nothing"
    );

    // Another tenant has its own catalogue.
    let other = h.tenant("globex").await;
    let (s, _) = h.get(&other, path).await;
    assert_eq!(s, 404);
    let (s, _) = h
        .post(
            &other,
            "/api/v1/integrations/events",
            emit(json!({"qty": 0}), 1),
        )
        .await;
    assert_eq!(s, 202);
}

/// A batch emit checks every item's payload against the catalogue, as a
/// single emit does: one invalid item refuses the batch (422 pointing into
/// the batch body) and stores nothing.
#[tokio::test]
async fn batch_emits_are_validated_against_the_catalogue() {
    let h = Herald::start().await;
    let key = h.tenant("acme").await;
    let schema = json!({"type": "object", "required": ["order_id"],
                        "properties": {"qty": {"type": "integer", "minimum": 1}}});
    let (s, body) = h
        .call(
            "PUT",
            &key,
            "/api/v1/integrations/event-types/order.created",
            Some(json!({"schema_version": 1, "schema": schema})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let item =
        |payload: serde_json::Value| json!({"event_type": "order.created", "payload": payload});
    let (s, problem) = h
        .post(
            &key,
            "/api/v1/integrations/events/batch",
            json!({"events": [
                item(json!({"order_id": "o1", "qty": 1})),
                item(json!({"order_id": "o2", "qty": 0})),
                {"event_type": "free.type", "payload": {"anything": true}},
            ]}),
        )
        .await;
    assert_eq!(s, 422, "{problem}");
    assert_eq!(
        problem["type"],
        "https://herald.dev/problems/schema-violation"
    );
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{problem}");
    assert_eq!(errors[0]["instance_path"], "/events/1/payload/qty");
    let (_, events) = h.get(&key, "/api/v1/integrations/events").await;
    assert!(
        events["data"].as_array().unwrap().is_empty(),
        "a refused batch stores nothing"
    );

    let (s, body) = h
        .post(
            &key,
            "/api/v1/integrations/events/batch",
            json!({"events": [item(json!({"order_id": "o1", "qty": 1})), item(json!({"order_id": "o2"}))]}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
}
