//! [`CatalogueStore`]: schema versions are registered once and immutable,
//! and every new registration moves the catalogue's version.

use herald_engine::{resources::EventTypeSchema, store::StoreError};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::backend::Harness;

contract!(
    schema_versions_are_immutable,
    a_new_registration_moves_the_version
);

fn schema(tenant: &str, version: u32, s: Value) -> EventTypeSchema {
    EventTypeSchema {
        tenant_id: tenant.into(),
        event_type: "order.created".into(),
        schema_version: version,
        schema: s,
        created_at: OffsetDateTime::now_utc(),
    }
}

async fn schema_versions_are_immutable(h: &Harness) {
    let s = &h.store;
    assert!(s.all_event_types().await.unwrap().is_empty());
    let object = json!({ "type": "object" });
    assert!(s
        .put_event_type(&schema("acme", 1, object.clone()))
        .await
        .unwrap());
    assert!(
        !s.put_event_type(&schema("acme", 1, object.clone()))
            .await
            .unwrap(),
        "the same schema again changes nothing"
    );
    let other = s
        .put_event_type(&schema("acme", 1, json!({ "type": "array" })))
        .await;
    assert!(matches!(other, Err(StoreError::Conflict(_))), "{other:?}");
    assert!(s
        .put_event_type(&schema("acme", 2, json!({ "type": "array" })))
        .await
        .unwrap());
    assert!(
        s.put_event_type(&schema("globex", 1, json!({ "type": "array" })))
            .await
            .unwrap(),
        "versions are per tenant"
    );
    let mut all: Vec<(String, u32, Value)> = s
        .all_event_types()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.tenant_id, e.schema_version, e.schema))
        .collect();
    all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(
        all,
        [
            ("acme".to_string(), 1, object),
            ("acme".to_string(), 2, json!({ "type": "array" })),
            ("globex".to_string(), 1, json!({ "type": "array" })),
        ]
    );
}

async fn a_new_registration_moves_the_version(h: &Harness) {
    let s = &h.store;
    let v0 = s.catalogue_version().await.unwrap();
    assert_eq!(v0, 0, "no registration yet");
    let object = json!({ "type": "object" });
    assert!(s
        .put_event_type(&schema("acme", 1, object.clone()))
        .await
        .unwrap());
    let v1 = s.catalogue_version().await.unwrap();
    assert_ne!(v1, v0, "a new version moves it");
    let refused = s
        .put_event_type(&schema("acme", 1, json!({ "type": "array" })))
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))));
    assert_eq!(
        s.catalogue_version().await.unwrap(),
        v1,
        "a refused registration changes nothing"
    );
    assert!(s
        .put_event_type(&schema("globex", 1, object))
        .await
        .unwrap());
    let v2 = s.catalogue_version().await.unwrap();
    assert!(
        v2 != v1 && v2 != v0,
        "another tenant's registration: {v1} -> {v2}"
    );
    // Another process sharing the store sees the same version.
    assert_eq!(h.other().await.catalogue_version().await.unwrap(), v2);
}
