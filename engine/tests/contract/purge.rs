//! [`TenantPurgeStore`]: a tenant marked `deleting` loses its keys at once;
//! the purge leaves nothing of it readable and touches no other tenant;
//! every step can run again (a crash, a second DELETE) and changes nothing.

use herald_engine::{
    audit::{AuditFilter, AuditRecord},
    model::{DomainEvent, Outcome},
    resources::EventTypeSchema,
    store::{EventFilter, LogFilter, TenantState},
};
use serde_json::json;
use time::OffsetDateTime;

use crate::{
    backend::Harness,
    fixtures::{attempt, delivery, event, key, now, subscription, POSITION},
};

contract!(
    a_deleted_tenant_leaves_nothing_readable,
    deletion_steps_can_run_again,
);

/// Gives `tenant` a key, a subscription, an event with a dedupe key, a
/// pending delivery, a delivered attempt, an event type and an audit
/// record; returns its key hash and event.
async fn populate(h: &Harness, tenant: &str, n: u8) -> ([u8; 32], DomainEvent) {
    let s = &h.store;
    let hash = [n; 32];
    s.create_tenant(tenant, &key(&format!("key_{tenant}"), tenant), hash)
        .await
        .unwrap();
    let sub = subscription(tenant);
    s.create_subscription(&sub).await.unwrap();
    let mut e = event(tenant, "order.created");
    e.dedupe_key = Some(format!("dk-{tenant}"));
    s.record_event(&e, POSITION, now() + 3_600_000)
        .await
        .unwrap();
    let done = delivery(&e, &sub.id, now());
    s.record_attempt(attempt(&done, Outcome::Delivered), None)
        .await
        .unwrap();
    s.schedule(vec![delivery(&e, &sub.id, now() + 3_600_000)])
        .await
        .unwrap();
    s.put_event_type(&EventTypeSchema {
        tenant_id: tenant.into(),
        event_type: "order.created".into(),
        schema_version: 1,
        schema: json!({"type": "object"}),
        created_at: OffsetDateTime::now_utc(),
    })
    .await
    .unwrap();
    s.append_audit(&AuditRecord::new(tenant, "subscription.created"))
        .await
        .unwrap();
    (hash, e)
}

/// How many rows of `tenant` each listing shows.
async fn visible(h: &Harness, tenant: &str, e: &DomainEvent) -> [usize; 7] {
    let s = &h.store;
    let types = s
        .all_event_types()
        .await
        .unwrap()
        .iter()
        .filter(|t| t.tenant_id == tenant)
        .count();
    let dedupe = s
        .event_by_dedupe_key(tenant, e.dedupe_key.as_deref().unwrap(), now())
        .await
        .unwrap();
    [
        s.list_api_keys(tenant).await.unwrap().len(),
        s.list_subscriptions(tenant, None, 100).await.unwrap().len(),
        s.list_events(tenant, &EventFilter::default(), 100)
            .await
            .unwrap()
            .len(),
        s.list_delivery_logs(tenant, &LogFilter::default(), 100)
            .await
            .unwrap()
            .len(),
        types,
        s.list_audit(tenant, &AuditFilter::default(), None, 100)
            .await
            .unwrap()
            .len(),
        usize::from(dedupe.is_some() || s.get_event(tenant, &e.id).await.unwrap().is_some()),
    ]
}

async fn purge_all(h: &Harness, tenant: &str) {
    for _ in 0..100 {
        if h.store.purge_tenant(tenant, 2).await.unwrap() == 0 {
            return;
        }
    }
    panic!("the purge of {tenant} never finished");
}

async fn a_deleted_tenant_leaves_nothing_readable(h: &Harness) {
    let s = &h.store;
    let (gone_hash, gone_event) = populate(h, "gone", 1).await;
    let (kept_hash, kept_event) = populate(h, "kept", 2).await;
    let before = visible(h, "kept", &kept_event).await;
    assert_eq!(before, [1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(visible(h, "gone", &gone_event).await, before);
    assert_eq!(s.schedule_backlog().await.unwrap(), 2);
    assert!(s.tenants_gone().await.unwrap().is_empty());
    let version = s.subscriptions_version().await.unwrap();

    assert_eq!(
        s.begin_tenant_deletion("gone").await.unwrap(),
        Some(TenantState::Active)
    );
    // Followers learn of it through the subscriptions version.
    assert!(s.subscriptions_version().await.unwrap() > version);
    assert_eq!(s.tenants_gone().await.unwrap(), ["gone"]);
    // From here on its key no longer authenticates, and it is gone for the API.
    assert!(s.grant_for_key(gone_hash).await.unwrap().is_none());
    assert!(!s.tenant_exists("gone").await.unwrap());
    assert!(s.tenant_quotas("gone").await.unwrap().is_none());
    assert_eq!(
        s.tenant_state("gone").await.unwrap(),
        Some(TenantState::Deleting)
    );
    assert_eq!(s.tenants_deleting().await.unwrap(), ["gone"]);

    purge_all(h, "gone").await;
    s.finish_tenant_deletion("gone").await.unwrap();
    assert_eq!(visible(h, "gone", &gone_event).await, [0; 7]);
    assert!(s
        .all_subscriptions()
        .await
        .unwrap()
        .iter()
        .all(|sub| sub.tenant_id != "gone"));
    // Its pending delivery went with it; the other tenant's stays.
    assert_eq!(s.schedule_backlog().await.unwrap(), 1);
    assert_eq!(
        s.tenant_state("gone").await.unwrap(),
        Some(TenantState::Deleted)
    );
    assert!(s.tenants_deleting().await.unwrap().is_empty());
    assert_eq!(
        s.tenants_gone().await.unwrap(),
        ["gone"],
        "deleted stays gone"
    );

    // The other tenant is untouched.
    assert_eq!(visible(h, "kept", &kept_event).await, before);
    assert!(s.grant_for_key(kept_hash).await.unwrap().is_some());
    assert_eq!(
        s.tenant_state("kept").await.unwrap(),
        Some(TenantState::Active)
    );
}

async fn deletion_steps_can_run_again(h: &Harness) {
    let s = &h.store;
    assert_eq!(s.begin_tenant_deletion("nobody").await.unwrap(), None);
    assert_eq!(s.tenant_state("nobody").await.unwrap(), None);
    let (_, e) = populate(h, "twice", 3).await;
    s.begin_tenant_deletion("twice").await.unwrap();
    // A second mark (a DELETE retried after a crash) changes nothing.
    assert_eq!(
        s.begin_tenant_deletion("twice").await.unwrap(),
        Some(TenantState::Deleting)
    );
    purge_all(h, "twice").await;
    assert_eq!(s.purge_tenant("twice", 10).await.unwrap(), 0);
    s.finish_tenant_deletion("twice").await.unwrap();
    assert_eq!(
        s.begin_tenant_deletion("twice").await.unwrap(),
        Some(TenantState::Deleted)
    );
    assert_eq!(s.purge_tenant("twice", 10).await.unwrap(), 0);
    assert_eq!(visible(h, "twice", &e).await, [0; 7]);
    // The id is not reused.
    assert!(s
        .create_tenant("twice", &key("key_again", "twice"), [9; 32])
        .await
        .is_err());
}
