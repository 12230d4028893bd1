//! [`AuditStore`]: records listed newest first with cursor paging and
//! filters, per tenant; a change's pending record written with the change
//! and no record for a refused one; pruning past the retention.

use herald_engine::{
    audit::{self, action, Actor, AuditFilter, AuditRecord},
    resources::{EventTypeSchema, TenantQuotas},
    store::StoreError,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::{
    backend::Harness,
    fixtures::{key, now, subscription},
};

contract!(
    records_list_newest_first_with_paging_and_filters,
    a_change_writes_its_record_and_a_refused_one_none,
    pruning_removes_only_records_past_the_horizon,
);

/// A record of `tenant` made at `ms` (its id carries the same time).
fn record_at(tenant: &str, act: &str, sub: Option<&str>, ms: i64, n: u32) -> AuditRecord {
    let mut r = AuditRecord::new(tenant, act);
    r.id = format!("aud_{ms:012x}7000{n:016x}");
    r.at = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap();
    r.subscription_id = sub.map(str::to_string);
    r.actor = Actor::ApiKey { id: "key_1".into() };
    r
}

async fn list(
    h: &Harness,
    tenant: &str,
    f: &AuditFilter,
    before: Option<&str>,
    n: usize,
) -> Vec<String> {
    h.store
        .list_audit(tenant, f, before, n)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

async fn records_list_newest_first_with_paging_and_filters(h: &Harness) {
    let s = &h.store;
    let base = now() - 60_000;
    let sub = "sub_0190000000007000a000000000000001";
    let made = [
        record_at("acme", action::SUBSCRIPTION_CREATED, Some(sub), base, 1),
        record_at("acme", action::API_KEY_CREATED, None, base + 1_000, 2),
        record_at(
            "acme",
            action::SUBSCRIPTION_PAUSED,
            Some(sub),
            base + 2_000,
            3,
        ),
        record_at("acme", action::API_KEY_REVOKED, None, base + 3_000, 4),
        record_at(
            "acme",
            action::SUBSCRIPTION_DELETED,
            Some(sub),
            base + 4_000,
            5,
        ),
    ];
    for r in &made {
        s.append_audit(r).await.unwrap();
    }
    s.append_audit(&record_at(
        "globex",
        action::API_KEY_CREATED,
        None,
        base + 500,
        6,
    ))
    .await
    .unwrap();
    let ids: Vec<String> = made.iter().rev().map(|r| r.id.clone()).collect();
    let all = AuditFilter::default();
    assert_eq!(list(h, "acme", &all, None, 10).await, ids);
    // Paging: the last id of a page is the next page's cursor.
    let first = list(h, "acme", &all, None, 2).await;
    assert_eq!(first, ids[..2]);
    let second = list(h, "acme", &all, Some(&first[1]), 2).await;
    assert_eq!(second, ids[2..4]);
    let third = list(h, "acme", &all, Some(&second[1]), 2).await;
    assert_eq!(third, ids[4..]);
    // The whole record comes back.
    let back = s.list_audit("acme", &all, None, 1).await.unwrap();
    assert_eq!(back, [made[4].clone()]);
    // Filters.
    let by_action = AuditFilter {
        action: Some(action::API_KEY_CREATED.into()),
        ..Default::default()
    };
    assert_eq!(
        list(h, "acme", &by_action, None, 10).await,
        [made[1].id.clone()]
    );
    let by_sub = AuditFilter {
        subscription_id: Some(sub.into()),
        ..Default::default()
    };
    assert_eq!(
        list(h, "acme", &by_sub, None, 10).await,
        [made[4].id.clone(), made[2].id.clone(), made[0].id.clone()]
    );
    let window = AuditFilter {
        since_ms: Some(base + 1_000),
        until_ms: Some(base + 3_000),
        ..Default::default()
    };
    assert_eq!(
        list(h, "acme", &window, None, 10).await,
        [made[2].id.clone(), made[1].id.clone()]
    );
    // Tenants see only their own.
    let theirs = s.list_audit("globex", &all, None, 10).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].tenant_id, "globex");
    assert!(list(h, "initech", &all, None, 10).await.is_empty());
}

/// The actions of a tenant's records, oldest first.
async fn actions(h: &Harness, tenant: &str) -> Vec<String> {
    let mut records = h
        .store
        .list_audit(tenant, &AuditFilter::default(), None, 100)
        .await
        .unwrap();
    records.reverse();
    records.into_iter().map(|r| r.action).collect()
}

async fn a_change_writes_its_record_and_a_refused_one_none(h: &Harness) {
    let s = &h.store;
    let r = |act: &str| AuditRecord::new("acme", act);
    s.create_tenant("acme", &key("key_01", "acme"), [1; 32])
        .await
        .unwrap();
    let sub = subscription("acme");
    audit::recorded(r(action::SUBSCRIPTION_CREATED), s.create_subscription(&sub))
        .await
        .unwrap();
    let again = audit::recorded(r(action::SUBSCRIPTION_CREATED), s.create_subscription(&sub)).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    // A change of a missing subscription, and one that changes nothing.
    let missing = s.modify_subscription("acme", "sub_missing", Box::new(|_| true));
    assert!(audit::recorded(r(action::SUBSCRIPTION_PAUSED), missing)
        .await
        .unwrap()
        .is_none());
    let noop = s.modify_subscription("acme", &sub.id, Box::new(|_| false));
    assert!(
        !audit::recorded(r(action::SUBSCRIPTION_PAUSED), noop)
            .await
            .unwrap()
            .unwrap()
            .1
    );
    let change = s.modify_subscription(
        "acme",
        &sub.id,
        Box::new(|s| {
            s.url = "https://example.com/other".into();
            true
        }),
    );
    audit::recorded(r(action::SUBSCRIPTION_UPDATED), change)
        .await
        .unwrap();
    let missing = s.delete_subscription("acme", "sub_missing");
    assert!(!audit::recorded(r(action::SUBSCRIPTION_DELETED), missing)
        .await
        .unwrap());
    let orphan_key = key("key_09", "globex");
    let orphan = s.create_api_key(&orphan_key, [9; 32]);
    assert!(audit::recorded(r(action::API_KEY_CREATED), orphan)
        .await
        .is_err());
    let revoke = s.revoke_api_key("acme", "key_01", now());
    audit::recorded(r(action::API_KEY_REVOKED), revoke)
        .await
        .unwrap();
    // Revoking it again changes nothing.
    let revoke = s.revoke_api_key("acme", "key_01", now());
    audit::recorded(r(action::API_KEY_REVOKED), revoke)
        .await
        .unwrap();
    let quotas = TenantQuotas::default();
    let absent = s.set_tenant_quotas("globex", &quotas);
    assert!(audit::recorded(r(action::TENANT_QUOTAS_SET), absent)
        .await
        .is_err());
    let schema = EventTypeSchema {
        tenant_id: "acme".into(),
        event_type: "order.created".into(),
        schema_version: 1,
        schema: json!({"type": "object"}),
        created_at: OffsetDateTime::now_utc(),
    };
    for _ in 0..2 {
        let put = s.put_event_type(&schema);
        audit::recorded(r(action::EVENT_TYPE_REGISTERED), put)
            .await
            .unwrap();
    }
    // A store call without a pending record writes none.
    s.delete_subscription("acme", &sub.id).await.unwrap();
    assert_eq!(
        actions(h, "acme").await,
        [
            action::SUBSCRIPTION_CREATED,
            action::SUBSCRIPTION_UPDATED,
            action::API_KEY_REVOKED,
            action::EVENT_TYPE_REGISTERED,
        ]
    );
    assert!(actions(h, "globex").await.is_empty());
    // The update names the field it changed, never a value.
    let updated = AuditFilter {
        action: Some(action::SUBSCRIPTION_UPDATED.into()),
        ..Default::default()
    };
    let rec = &s.list_audit("acme", &updated, None, 1).await.unwrap()[0];
    assert_eq!(rec.details["fields"], json!(["url"]));
    assert!(!rec.details.to_string().contains("example.com"));
}

async fn pruning_removes_only_records_past_the_horizon(h: &Harness) {
    let s = &h.store;
    let base = now() - 10_000;
    for n in 0..3 {
        let r = record_at(
            "acme",
            action::API_KEY_CREATED,
            None,
            base + n as i64 * 1_000,
            n,
        );
        s.append_audit(&r).await.unwrap();
    }
    let all = AuditFilter::default();
    // Nothing is older than the oldest record.
    assert_eq!(s.prune_audit(base, 10).await.unwrap(), 0);
    assert_eq!(list(h, "acme", &all, None, 10).await.len(), 3);
    // Past the two older ones: a store that prunes deletes just those (in
    // batches of the limit); one whose records expire by TTL deletes none.
    let first = s.prune_audit(base + 1_500, 1).await.unwrap();
    let second = s.prune_audit(base + 1_500, 1).await.unwrap();
    let third = s.prune_audit(base + 1_500, 1).await.unwrap();
    assert!(
        [(1, 1, 0), (0, 0, 0)].contains(&(first, second, third)),
        "{first} {second} {third}"
    );
    assert_eq!(
        list(h, "acme", &all, None, 10).await.len(),
        3 - first - second
    );
}
