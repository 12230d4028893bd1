//! [`TenantStore`]: tenants, API keys by hash, revocation, scopes and
//! expiry, and keys stored before keys had scopes (full access).

use herald_engine::{
    resources::{Scope, TenantQuotas},
    store::StoreError,
};
use time::OffsetDateTime;

use crate::{backend::Harness, fixtures::key};

contract!(
    tenants_are_created_once,
    keys_authenticate_until_revoked,
    scopes_and_expiry_are_kept,
    keys_from_before_scopes_have_full_access,
    quotas_are_kept_per_tenant,
);

/// The tenant of a live key hash.
async fn tenant_of(h: &Harness, hash: [u8; 32]) -> Option<String> {
    h.store
        .grant_for_key(hash)
        .await
        .unwrap()
        .map(|g| g.tenant_id)
}

async fn tenants_are_created_once(h: &Harness) {
    let s = &h.store;
    assert!(!s.tenant_exists("acme").await.unwrap());
    s.create_tenant("acme", &key("key_01", "acme"), [1; 32])
        .await
        .unwrap();
    assert!(s.tenant_exists("acme").await.unwrap());
    assert!(!s.tenant_exists("globex").await.unwrap());
    let again = s
        .create_tenant("acme", &key("key_02", "acme"), [2; 32])
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    // The refused creation added no key.
    assert_eq!(tenant_of(h, [2; 32]).await, None);
    assert_eq!(tenant_of(h, [1; 32]).await.as_deref(), Some("acme"));
}

async fn keys_authenticate_until_revoked(h: &Harness) {
    let s = &h.store;
    s.create_tenant("acme", &key("key_01", "acme"), [1; 32])
        .await
        .unwrap();
    let orphan = s.create_api_key(&key("key_09", "globex"), [9; 32]).await;
    assert!(matches!(orphan, Err(StoreError::NotFound(_))), "{orphan:?}");
    s.create_api_key(&key("key_03", "acme"), [3; 32])
        .await
        .unwrap();
    let keys = s.list_api_keys("acme").await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["key_01", "key_03"]
    );
    assert!(s.list_api_keys("globex").await.unwrap().is_empty());
    assert_eq!(tenant_of(h, [3; 32]).await.as_deref(), Some("acme"));
    assert_eq!(tenant_of(h, [4; 32]).await, None);

    let revoked = s
        .revoke_api_key("acme", "key_03", crate::fixtures::now())
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(revoked.id, "key_03");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(tenant_of(h, [3; 32]).await, None);
    assert_eq!(
        tenant_of(h, [1; 32]).await.as_deref(),
        Some("acme"),
        "the other key still works"
    );
    let listed = s.list_api_keys("acme").await.unwrap();
    assert!(listed[1].revoked_at.is_some() && listed[0].revoked_at.is_none());
    // Another tenant's key, and a key that does not exist.
    assert!(s
        .revoke_api_key("globex", "key_01", crate::fixtures::now())
        .await
        .unwrap()
        .is_none());
    assert!(s
        .revoke_api_key("acme", "key_77", crate::fixtures::now())
        .await
        .unwrap()
        .is_none());
    assert_eq!(tenant_of(h, [1; 32]).await.as_deref(), Some("acme"));
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn scopes_and_expiry_are_kept(h: &Harness) {
    let s = &h.store;
    s.create_tenant("acme", &key("key_01", "acme"), [1; 32])
        .await
        .unwrap();
    let expires = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let mut scoped = key("key_02", "acme");
    scoped.scopes = vec![Scope::EventsRead, Scope::WebhooksWrite];
    scoped.expires_at = Some(expires);
    s.create_api_key(&scoped, [2; 32]).await.unwrap();
    let mut expired = key("key_03", "acme");
    expired.scopes = vec![Scope::EventsWrite];
    expired.expires_at = Some(OffsetDateTime::now_utc() - time::Duration::minutes(1));
    s.create_api_key(&expired, [3; 32]).await.unwrap();

    let grant = s.grant_for_key([2; 32]).await.unwrap().expect("live key");
    assert_eq!(grant.tenant_id, "acme");
    assert_eq!(grant.key_id, "key_02");
    assert_eq!(grant.scopes, [Scope::EventsRead, Scope::WebhooksWrite]);
    assert_eq!(grant.expires_at_ms, Some(ms(expires)));
    assert!(!grant.expired_at(crate::fixtures::now()));
    // An expired key is still found (the caller answers 401 "expired").
    let old = s
        .grant_for_key([3; 32])
        .await
        .unwrap()
        .expect("expired key");
    assert_eq!(old.scopes, [Scope::EventsWrite]);
    assert!(old.expired_at(crate::fixtures::now()));
    // The first key has full access and never expires.
    let first = s.grant_for_key([1; 32]).await.unwrap().unwrap();
    assert_eq!(
        (first.scopes, first.expires_at_ms),
        (vec![Scope::Admin], None)
    );

    let listed = s.list_api_keys("acme").await.unwrap();
    assert_eq!(listed[1].scopes, [Scope::EventsRead, Scope::WebhooksWrite]);
    assert_eq!(listed[1].expires_at.map(ms), Some(ms(expires)));
    assert_eq!(listed[0].scopes, [Scope::Admin]);
    assert_eq!(listed[0].expires_at, None);
    // Revoking keeps what the key was in its listing.
    let revoked = s
        .revoke_api_key("acme", "key_02", crate::fixtures::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.scopes, [Scope::EventsRead, Scope::WebhooksWrite]);
    assert_eq!(revoked.expires_at.map(ms), Some(ms(expires)));
    assert_eq!(s.grant_for_key([2; 32]).await.unwrap(), None);
}

async fn keys_from_before_scopes_have_full_access(h: &Harness) {
    let s = &h.store;
    s.create_tenant("acme", &key("key_01", "acme"), [1; 32])
        .await
        .unwrap();
    h.write_key_from_before_scopes("acme", "key_05", [5; 32])
        .await;
    let grant = s.grant_for_key([5; 32]).await.unwrap().expect("old key");
    assert_eq!(grant.tenant_id, "acme");
    assert_eq!(grant.key_id, "key_05");
    assert_eq!(grant.scopes, [Scope::Admin], "full access, as it had");
    assert_eq!(grant.expires_at_ms, None);
    assert!(Scope::ALL.iter().all(|need| need.granted_by(&grant.scopes)));
    let listed = s.list_api_keys("acme").await.unwrap();
    let old = listed.iter().find(|k| k.id == "key_05").unwrap();
    assert_eq!(
        (old.scopes.as_slice(), old.expires_at),
        (&[Scope::Admin][..], None)
    );
    // Revocable as any other key.
    s.revoke_api_key("acme", "key_05", crate::fixtures::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.grant_for_key([5; 32]).await.unwrap(), None);
}

async fn quotas_are_kept_per_tenant(h: &Harness) {
    let s = &h.store;
    assert_eq!(s.tenant_quotas("acme").await.unwrap(), None, "no tenant");
    let orphan = s.set_tenant_quotas("acme", &TenantQuotas::default()).await;
    assert!(matches!(orphan, Err(StoreError::NotFound(_))), "{orphan:?}");
    assert!(
        !s.tenant_exists("acme").await.unwrap(),
        "setting quotas creates no tenant"
    );
    for (t, k) in [("acme", 1), ("globex", 2)] {
        s.create_tenant(t, &key(&format!("key_0{k}"), t), [k; 32])
            .await
            .unwrap();
    }
    assert_eq!(
        s.tenant_quotas("acme").await.unwrap(),
        Some(TenantQuotas::default()),
        "a new tenant has none"
    );
    let q = TenantQuotas {
        max_subscriptions: Some(3),
        max_event_bytes: Some(1024),
        events_per_second: Some(50),
    };
    s.set_tenant_quotas("acme", &q).await.unwrap();
    assert_eq!(s.tenant_quotas("acme").await.unwrap(), Some(q));
    assert_eq!(
        s.tenant_quotas("globex").await.unwrap(),
        Some(TenantQuotas::default()),
        "another tenant's are its own"
    );
    // Replaced as a whole: a limit left out is lifted.
    let fewer = TenantQuotas {
        events_per_second: Some(5),
        ..TenantQuotas::default()
    };
    s.set_tenant_quotas("acme", &fewer).await.unwrap();
    assert_eq!(s.tenant_quotas("acme").await.unwrap(), Some(fewer));
}
