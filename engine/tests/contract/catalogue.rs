//! [`CatalogueStore`]: schema versions are registered once and immutable.

use herald_engine::{resources::EventTypeSchema, store::StoreError};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::backend::Harness;

contract!(schema_versions_are_immutable);

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
