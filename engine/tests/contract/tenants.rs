//! [`TenantStore`]: tenants, API keys by hash, revocation.

use herald_engine::store::StoreError;

use crate::{backend::Harness, fixtures::key};

contract!(tenants_are_created_once, keys_authenticate_until_revoked);

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
    assert_eq!(s.tenant_for_key([2; 32]).await.unwrap(), None);
    assert_eq!(
        s.tenant_for_key([1; 32]).await.unwrap().as_deref(),
        Some("acme")
    );
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
    assert_eq!(
        s.tenant_for_key([3; 32]).await.unwrap().as_deref(),
        Some("acme")
    );
    assert_eq!(s.tenant_for_key([4; 32]).await.unwrap(), None);

    let revoked = s
        .revoke_api_key("acme", "key_03", crate::fixtures::now())
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(revoked.id, "key_03");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(s.tenant_for_key([3; 32]).await.unwrap(), None);
    assert_eq!(
        s.tenant_for_key([1; 32]).await.unwrap().as_deref(),
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
    assert_eq!(
        s.tenant_for_key([1; 32]).await.unwrap().as_deref(),
        Some("acme")
    );
}
