//! [`SubscriptionStore`]: create-if-absent, compare-and-set changes, and a
//! version that moves on every create, change and delete.

use std::sync::Arc;

use herald_engine::{
    ed25519::SigningKey,
    model::{KeyEntry, SignatureScheme, SubscriptionStatus, WebhookSubscription},
    store::{Store, StoreError, SubscriptionChange},
};

use crate::{backend::Harness, fixtures::subscription};

contract!(
    create_conflicts_on_an_existing_id,
    every_change_moves_the_version,
    lists_page_newest_first_per_tenant,
    a_deleted_subscription_stays_deleted,
    cas_loses_no_concurrent_update,
    cas_disable_wins,
    signature_scheme_and_ed25519_keys_persist,
);

/// A change that sets the description.
fn describe(text: &'static str) -> SubscriptionChange {
    Box::new(move |s| {
        s.description = Some(text.into());
        true
    })
}

/// The worker's auto-disable (as `delivery::attempt::disable` writes it).
fn disable() -> SubscriptionChange {
    Box::new(|s| {
        if s.status == SubscriptionStatus::Disabled {
            return false;
        }
        s.status = SubscriptionStatus::Disabled;
        s.disabled_reason = Some("failing for 3 days".into());
        true
    })
}

/// An API update of the URL: touches only what the request names.
fn set_url(url: String) -> SubscriptionChange {
    Box::new(move |s| {
        s.url = url.clone();
        true
    })
}

async fn stored(store: &dyn Store, sub: &WebhookSubscription) -> WebhookSubscription {
    store
        .get_subscription(&sub.tenant_id, &sub.id)
        .await
        .unwrap()
        .expect("stored")
}

async fn create_conflicts_on_an_existing_id(h: &Harness) {
    let s = &h.store;
    let sub = subscription("acme");
    s.create_subscription(&sub).await.unwrap();
    let mut again = sub.clone();
    again.url = "https://example.com/other".into();
    let refused = s.create_subscription(&again).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(stored(s.as_ref(), &sub).await.url, sub.url, "not replaced");
    assert_eq!(s.all_subscriptions().await.unwrap().len(), 1);
}

async fn every_change_moves_the_version(h: &Harness) {
    let s = &h.store;
    let v0 = s.subscriptions_version().await.unwrap();
    let sub = subscription("acme");
    s.create_subscription(&sub).await.unwrap();
    let v1 = s.subscriptions_version().await.unwrap();
    assert!(v1 > v0, "create: {v0} -> {v1}");

    let (changed, did) = s
        .modify_subscription("acme", &sub.id, describe("changed"))
        .await
        .unwrap()
        .unwrap();
    assert!(did);
    assert_eq!(changed.description.as_deref(), Some("changed"));
    let v2 = s.subscriptions_version().await.unwrap();
    assert!(v2 > v1, "modify: {v1} -> {v2}");

    let (_, did) = s
        .modify_subscription("acme", &sub.id, Box::new(|_| false))
        .await
        .unwrap()
        .unwrap();
    assert!(!did);
    assert_eq!(
        s.subscriptions_version().await.unwrap(),
        v2,
        "a change that changed nothing writes nothing"
    );

    assert!(s.delete_subscription("acme", &sub.id).await.unwrap());
    let v3 = s.subscriptions_version().await.unwrap();
    assert!(v3 > v2, "delete: {v2} -> {v3}");
    // Another process sees the same version.
    assert_eq!(h.other().await.subscriptions_version().await.unwrap(), v3);
}

async fn lists_page_newest_first_per_tenant(h: &Harness) {
    let s = &h.store;
    let mut made = Vec::new();
    for _ in 0..5 {
        let sub = subscription("acme");
        s.create_subscription(&sub).await.unwrap();
        made.push(sub.id);
    }
    s.create_subscription(&subscription("globex"))
        .await
        .unwrap();
    let first = s.list_subscriptions("acme", None, 3).await.unwrap();
    let rest = s
        .list_subscriptions("acme", Some(&first[2].id), 3)
        .await
        .unwrap();
    let listed: Vec<String> = first.iter().chain(&rest).map(|x| x.id.clone()).collect();
    made.reverse();
    assert_eq!(listed, made);
    assert_eq!(
        s.list_subscriptions("globex", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s
        .list_subscriptions("initech", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.all_subscriptions().await.unwrap().len(), 6);
    assert!(
        s.get_subscription("globex", &made[0])
            .await
            .unwrap()
            .is_none(),
        "another tenant's subscription is not found"
    );
}

async fn a_deleted_subscription_stays_deleted(h: &Harness) {
    let s = &h.store;
    let sub = subscription("acme");
    s.create_subscription(&sub).await.unwrap();
    assert!(!s.delete_subscription("globex", &sub.id).await.unwrap());
    assert!(s.delete_subscription("acme", &sub.id).await.unwrap());
    assert!(!s.delete_subscription("acme", &sub.id).await.unwrap());
    // A change arriving after the delete does not bring it back.
    let late = s
        .modify_subscription("acme", &sub.id, describe("late"))
        .await
        .unwrap();
    assert!(late.is_none());
    assert!(s.get_subscription("acme", &sub.id).await.unwrap().is_none());
    assert!(s.all_subscriptions().await.unwrap().is_empty());
}

/// Ten processes' changes to one subscription at once: every one is kept.
async fn cas_loses_no_concurrent_update(h: &Harness) {
    let (a, b) = (h.store.clone(), h.other().await);
    let sub = subscription("acme");
    a.create_subscription(&sub).await.unwrap();
    let writes = (0..10).map(|i| {
        let store: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = sub.id.clone();
        tokio::spawn(async move {
            store
                .modify_subscription(
                    "acme",
                    &id,
                    Box::new(move |s| {
                        s.headers.insert(format!("x-writer-{i}"), "1".into());
                        true
                    }),
                )
                .await
        })
    });
    for w in futures::future::join_all(writes).await {
        assert!(w.unwrap().unwrap().unwrap().1);
    }
    let headers = stored(a.as_ref(), &sub).await.headers;
    assert_eq!(headers.len(), 10, "{headers:?}");
}

/// A worker's auto-disable racing an API update: the update applies to the
/// stored subscription, never to the API's earlier read of it, so the
/// disable is never undone.
async fn cas_disable_wins(h: &Harness) {
    let (api, worker) = (h.store.clone(), h.other().await);

    // In sequence: the API read it active, then the worker disabled it,
    // then the API's update lands.
    let sub = subscription("acme");
    api.create_subscription(&sub).await.unwrap();
    let seen_by_api = stored(api.as_ref(), &sub).await;
    assert_eq!(seen_by_api.status, SubscriptionStatus::Active);
    worker
        .modify_subscription("acme", &sub.id, disable())
        .await
        .unwrap()
        .unwrap();
    let (after, _) = api
        .modify_subscription("acme", &sub.id, set_url("https://example.com/new".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, SubscriptionStatus::Disabled);
    assert_eq!(after.url, "https://example.com/new");

    // At the same time, many times over.
    for round in 0..10 {
        let sub = subscription("acme");
        api.create_subscription(&sub).await.unwrap();
        let url = format!("https://example.com/round-{round}");
        let (x, y) = tokio::join!(
            worker.modify_subscription("acme", &sub.id, disable()),
            api.modify_subscription("acme", &sub.id, set_url(url.clone())),
        );
        assert!(x.unwrap().unwrap().1 && y.unwrap().unwrap().1);
        for store in [&api, &worker] {
            let now = stored(store.as_ref(), &sub).await;
            assert_eq!(now.status, SubscriptionStatus::Disabled, "round {round}");
            assert_eq!(now.url, url, "round {round}");
        }
    }
}

/// The signature scheme and the (sealed) Ed25519 keys come back as written,
/// through a create and a compare-and-set rotation; a subscription that
/// never chose a scheme reads as `hmac` with no keys.
async fn signature_scheme_and_ed25519_keys_persist(h: &Harness) {
    let s = &h.store;
    let plain = subscription("acme");
    s.create_subscription(&plain).await.unwrap();
    let back = stored(s.as_ref(), &plain).await;
    assert_eq!(back.signature, SignatureScheme::Hmac);
    assert!(back.signing_keys.is_empty());

    let mut sub = subscription("acme");
    sub.signature = SignatureScheme::Ed25519;
    let first = SigningKey::generate();
    sub.signing_keys = vec![KeyEntry {
        key: first.clone(),
        expires_at: None,
    }];
    s.create_subscription(&sub).await.unwrap();
    assert_eq!(stored(s.as_ref(), &sub).await, sub);

    let second = SigningKey::generate();
    let expires = sub.created_at + time::Duration::hours(1);
    let rotated = second.clone();
    let (after, changed) = s
        .modify_subscription(
            "acme",
            &sub.id,
            Box::new(move |s| {
                s.signature = SignatureScheme::Both;
                let mut old = s.signing_keys.remove(0);
                old.expires_at = Some(expires);
                s.signing_keys = vec![
                    KeyEntry {
                        key: rotated.clone(),
                        expires_at: None,
                    },
                    old,
                ];
                true
            }),
        )
        .await
        .unwrap()
        .expect("exists");
    assert!(changed);
    let back = stored(s.as_ref(), &sub).await;
    assert_eq!(back, after);
    assert_eq!(back.signature, SignatureScheme::Both);
    assert_eq!(back.signing_keys.len(), 2);
    assert!(back.signing_keys[0].key == second);
    assert!(back.signing_keys[1].key == first);
    assert_eq!(
        back.signing_keys[1].expires_at.map(|t| t.unix_timestamp()),
        Some(expires.unix_timestamp())
    );
    let listed = s.list_subscriptions("acme", None, 10).await.unwrap();
    assert!(listed
        .iter()
        .any(|l| l.id == sub.id && l.signing_keys.len() == 2));
}
