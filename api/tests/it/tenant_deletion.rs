//! Tenant export (NDJSON, never a secret) and deletion (#20 point 4): after
//! `DELETE /api/v1/admin/tenants/{id}` its keys fail, its export 404s, the
//! store lists nothing of it, its pending retry is never sent (the barrier:
//! another tenant's retry, due later, arrives), another tenant keeps all
//! its data; a deletion left half-done is finished at the next start. On
//! the embedded store and on the CQL store. Deleting a tenant deletes its
//! key, so a backup taken before no longer opens its secrets
//! (crypto-shredding).

use std::time::Duration;

use herald_engine::{
    audit::AuditFilter,
    encryption::{KeyRing, SecretCipher},
    store::{
        embedded::EmbeddedStore, scylla::ScyllaStore, secrets::SubscriptionCodec, LogFilter,
        StoreError, TenantPurgeStore, TenantState,
    },
};
use serde_json::{json, Value};

use crate::support::{data_dir_cipher, eventually, Herald, Receiver, ADMIN};

async fn export(h: &Herald, tenant: &str) -> (u16, String, String) {
    let r = h
        .http
        .get(h.url(&format!("/api/v1/admin/tenants/{tenant}/export")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

async fn delete(h: &Herald, tenant: &str) -> (u16, Value) {
    h.call(
        "DELETE",
        ADMIN,
        &format!("/api/v1/admin/tenants/{tenant}"),
        None,
    )
    .await
}

/// Waits until the tenant's log shows an attempt of `event` with `outcome`.
async fn attempted(h: &Herald, key: &str, event: &str, outcome: &str) {
    eventually(
        &format!("an attempt of {event} {outcome}"),
        Duration::from_secs(30),
        || async {
            h.logs(key, &format!("event_id={event}"))
                .await
                .iter()
                .any(|l| l["outcome"] == outcome)
                .then_some(())
        },
    )
    .await;
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

async fn export_then_delete(h: &Herald) {
    let gone = h.tenant("gone").await;
    let kept = h.tenant("kept").await;
    let r = Receiver::start(200).await;
    let sub = h.subscribe(&gone, &r.url, &["order.*"]).await;
    let secret = sub["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let delivered = h.emit(&gone, "order.created", json!({"n": 1})).await;
    attempted(h, &gone, &id(&delivered), "delivered").await;

    // The export lists what was made, and no secret.
    let (status, ctype, text) = export(h, "gone").await;
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("application/x-ndjson"), "{ctype}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["kind"] == kind).collect() };
    assert_eq!(lines[0]["kind"], "tenant");
    assert_eq!(lines[0]["id"], "gone");
    let end = lines.last().unwrap();
    assert_eq!(end["kind"], "end");
    assert_eq!(end["lines"], lines.len() - 1);
    assert_eq!(of("subscription").len(), 1);
    assert_eq!(of("subscription")[0]["id"], sub["id"]);
    assert_eq!(of("event").len(), 1);
    assert_eq!(of("event")[0]["id"], delivered["id"]);
    assert!(of("delivery_log")
        .iter()
        .any(|l| l["event_id"] == delivered["id"] && l["outcome"] == "delivered"));
    assert_eq!(of("api_key").len(), 1);
    assert!(!of("audit").is_empty());
    assert!(!text.contains(&secret), "the secret is exported");
    assert!(!text.contains(secret.trim_start_matches("whsec_")));
    assert!(!text.contains(&gone), "the API key is exported");
    assert!(!text.contains("hash"), "{text}");
    let (status, _, body) = export(h, "nobody").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not-found"), "{body}");

    // A retry of the tenant pending, and one of another tenant due after it.
    r.set_status(500);
    let pending = h.emit(&gone, "order.shipped", json!({"n": 2})).await;
    attempted(h, &gone, &id(&pending), "failed").await;
    h.subscribe(&kept, &r.url, &["order.*"]).await;
    let barrier = h.emit(&kept, "order.shipped", json!({"n": 3})).await;
    attempted(h, &kept, &id(&barrier), "failed").await;

    assert_eq!(delete(h, "gone").await.0, 204);
    r.set_status(200);
    // Deleting again answers the same; an unknown tenant is 404.
    assert_eq!(delete(h, "gone").await.0, 204);
    let (status, body) = delete(h, "nobody").await;
    assert_eq!(status, 404, "{body}");

    // The deletion is in the operator's trail, which outlives the tenant:
    // once (the repeat changed nothing), by the admin, naming the tenant.
    let trail = "/api/v1/admin/audit?action=tenant.deleted";
    let (status, page) = h.call("GET", ADMIN, trail, None).await;
    assert_eq!(status, 200, "{page}");
    let records = page["data"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{page}");
    assert_eq!(records[0]["target"], "gone");
    assert_eq!(records[0]["actor"]["kind"], "admin");
    let (status, body) = h.call("GET", &kept, trail, None).await;
    assert_eq!(status, 401, "a tenant key cannot read it: {body}");

    // An event of the tenant that reaches the log after its deletion (an
    // outbox row relayed late, an emit that raced the DELETE) is dropped by
    // fan-out: its offset is committed past, and nothing of it is indexed.
    let new = herald_engine::input::NewEvent {
        event_type: "order.created".into(),
        payload: json!({"late": true}).into(),
        ..Default::default()
    };
    let source = herald_engine::model::EventSource::Api;
    let late = herald_engine::input::build_event("gone", new, source).unwrap();
    let log = h.engine.log();
    let at = log.append(std::slice::from_ref(&late)).await.unwrap()[0];
    eventually(
        "fan-out past the late event",
        Duration::from_secs(30),
        || async {
            let committed = log
                .committed(herald_engine::config::FANOUT_GROUP)
                .await
                .unwrap();
            committed
                .and_then(|c| c.get(&at.partition).copied())
                .filter(|&o| o > at.offset)
        },
    )
    .await;

    // The other tenant's retry comes; the deleted one's never does.
    eventually(
        "the other tenant's retry",
        Duration::from_secs(60),
        || async {
            r.received()
                .iter()
                .any(|x| x.header("webhook-id") == barrier["id"])
                .then_some(())
        },
    )
    .await;
    assert!(r
        .received()
        .iter()
        .all(|x| x.header("webhook-id") != pending["id"]));

    // Nothing of it remains readable.
    let (status, body) = h.get(&gone, "/api/v1/integrations/events").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(export(h, "gone").await.0, 404);
    nothing_left(h, "gone").await;
    let (status, body) = h
        .call(
            "POST",
            ADMIN,
            "/api/v1/admin/tenants",
            Some(json!({"id": "gone"})),
        )
        .await;
    assert_eq!(status, 409, "a deleted id is not reused: {body}");

    // The other tenant is untouched.
    let (status, page) = h.get(&kept, "/api/v1/integrations/events").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"][0]["id"], barrier["id"]);
    assert_eq!(export(h, "kept").await.0, 200);
}

async fn nothing_left(h: &Herald, tenant: &str) {
    let e = &h.engine;
    assert_eq!(
        e.tenant_state(tenant).await.unwrap(),
        Some(TenantState::Deleted)
    );
    assert!(e
        .list_events(tenant, None, None, 100)
        .await
        .unwrap()
        .data
        .is_empty());
    assert!(e
        .list_delivery_logs(tenant, LogFilter::default(), 100)
        .await
        .unwrap()
        .data
        .is_empty());
    assert!(e
        .list_subscriptions(tenant, None, 100)
        .await
        .unwrap()
        .data
        .is_empty());
    assert!(e
        .audit_trail(tenant, AuditFilter::default(), None, 100)
        .await
        .unwrap()
        .data
        .is_empty());
}

/// A tenant with a subscription, a delivered event; returns its key.
async fn populated(h: &Herald, tenant: &str) -> String {
    let key = h.tenant(tenant).await;
    let r = Receiver::start(200).await;
    h.subscribe(&key, &r.url, &["order.*"]).await;
    let e = h.emit(&key, "order.created", json!({"n": 1})).await;
    attempted(h, &key, &id(&e), "delivered").await;
    key
}

async fn finished_at_start(h: &Herald, tenant: &str) {
    eventually(
        "the deletion finished at start",
        Duration::from_secs(60),
        || async {
            (h.engine.tenant_state(tenant).await.unwrap() == Some(TenantState::Deleted))
                .then_some(())
        },
    )
    .await;
    nothing_left(h, tenant).await;
}

fn retry_slowly(c: &mut herald_engine::config::EngineConfig) {
    c.retry_schedule = "8s,8s".parse().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_and_delete_on_the_embedded_store() {
    let h = Herald::start_with(retry_slowly).await;
    export_then_delete(&h).await;
    h.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_and_delete_on_the_cql_store() {
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("tenant_delete");
    let h = Herald::start_with(move |c| {
        retry_slowly(c);
        c.scylla = Some(cql);
        c.secret_keys = Some(KeyRing::parse(crate::cql::TEST_KEY).unwrap());
    })
    .await;
    export_then_delete(&h).await;
    h.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_left_deleting_finishes_at_start_on_the_embedded_store() {
    let h = Herald::start().await;
    let key = populated(&h, "half").await;
    let dir = h.stop().await;
    {
        let store =
            EmbeddedStore::open(&dir.path().join("store"), data_dir_cipher(dir.path())).unwrap();
        let before = store.begin_tenant_deletion("half").await.unwrap();
        assert_eq!(before, Some(TenantState::Active));
        assert_eq!(
            store.tenant_state("half").await.unwrap(),
            Some(TenantState::Deleting)
        );
    }
    let h = Herald::start_in(dir, |_| {}, |s| s).await;
    finished_at_start(&h, "half").await;
    assert_eq!(h.get(&key, "/api/v1/integrations/events").await.0, 401);
    h.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_left_deleting_finishes_at_start_on_the_cql_store() {
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("tenant_resume");
    let tune = {
        let cql = cql.clone();
        move |c: &mut herald_engine::config::EngineConfig| {
            c.scylla = Some(cql);
            c.secret_keys = Some(KeyRing::parse(crate::cql::TEST_KEY).unwrap());
        }
    };
    let h = Herald::start_with(tune.clone()).await;
    populated(&h, "half").await;
    let dir = h.stop().await;
    {
        let store = ScyllaStore::connect(&cql, crate::cql::cipher())
            .await
            .unwrap();
        let before = store.begin_tenant_deletion("half").await.unwrap();
        assert_eq!(before, Some(TenantState::Active));
        assert_eq!(
            store.tenant_state("half").await.unwrap(),
            Some(TenantState::Deleting)
        );
    }
    let h = Herald::start_in(dir, tune, |s| s).await;
    finished_at_start(&h, "half").await;
    h.engine.shutdown().await;
}

/// Wrapped tenant keys as `(tenant, wrapped)` rows.
type KeyRows = Vec<(String, String)>;

/// Crypto-shredding, checked on copies: `gone_body` and `kept_body` are
/// subscription bodies as a backup taken before `gone` was deleted holds
/// them; `before` and `after` the tenant keys before and after.
fn assert_shredded(
    master: &SecretCipher,
    before: &KeyRows,
    after: &KeyRows,
    gone_body: &str,
    kept_body: &str,
) {
    let codec_with = |keys: &KeyRows| {
        let codec = SubscriptionCodec::new(master.clone());
        for (tenant, wrapped) in keys {
            codec.keys().learn(tenant, wrapped).unwrap();
        }
        codec
    };
    // Sealed under the tenant's key, not the master key.
    assert!(gone_body.contains("\"enc:v1:"), "{gone_body}");
    assert!(!gone_body.contains(&format!("enc:v1:{}:", master.ring().primary().id())));
    assert!(before.iter().any(|(t, _)| t == "gone"));
    // The backup opens with the keys it was taken with …
    codec_with(before)
        .decode(gone_body)
        .expect("the backup opens with its keys");
    // … and after the deletion the tenant has no key: neither the keys left
    // nor the master key open its secrets.
    assert!(!after.iter().any(|(t, _)| t == "gone"), "{after:?}");
    let err = codec_with(after).decode(gone_body).unwrap_err();
    assert!(matches!(err, StoreError::Secrets(_)), "{err}");
    assert!(SubscriptionCodec::new(master.clone())
        .decode(gone_body)
        .is_err());
    // The other tenant's secrets still open.
    codec_with(after)
        .decode(kept_body)
        .expect("the kept tenant's secrets open");
}

fn sqlite_rows(path: &std::path::Path, sql: &str) -> KeyRows {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = conn.prepare(sql).unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_tenant_shreds_its_secrets_on_the_embedded_store() {
    let h = Herald::start().await;
    populated(&h, "gone").await;
    populated(&h, "kept").await;
    let dir = h.stop().await;
    let store = dir.path().join("store");
    let keys_file = store.join(herald_engine::store::embedded::TENANT_KEYS_FILE);
    let body_of = |tenant: &str| {
        sqlite_rows(
            &store.join("herald.db"),
            &format!("SELECT tenant_id, body FROM subscriptions WHERE tenant_id = '{tenant}'"),
        )
        .pop()
        .unwrap()
        .1
    };
    let (gone_body, kept_body) = (body_of("gone"), body_of("kept"));
    let select_keys = "SELECT tenant_id, wrapped FROM tenant_keys";
    let before = sqlite_rows(&keys_file, select_keys);

    let h = Herald::start_in(dir, |_| {}, |s| s).await;
    assert_eq!(delete(&h, "gone").await.0, 204);
    finished_at_start(&h, "gone").await;
    let dir = h.stop().await;
    let after = sqlite_rows(&keys_file, select_keys);
    assert_shredded(
        &data_dir_cipher(dir.path()),
        &before,
        &after,
        &gone_body,
        &kept_body,
    );
    // Overwritten in place (secure_delete), not left in a free page.
    let wrapped = &before.iter().find(|(t, _)| t == "gone").unwrap().1;
    let bytes = std::fs::read(&keys_file).unwrap();
    assert!(!bytes
        .windows(wrapped.len())
        .any(|w| w == wrapped.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_tenant_shreds_its_secrets_on_the_cql_store() {
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("tenant_shred");
    let h = Herald::start_with({
        let cql = cql.clone();
        move |c| {
            c.scylla = Some(cql);
            c.secret_keys = Some(KeyRing::parse(crate::cql::TEST_KEY).unwrap());
        }
    })
    .await;
    populated(&h, "gone").await;
    populated(&h, "kept").await;
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&cql.nodes)
        .build()
        .await
        .unwrap();
    let rows = |cql_text: String| {
        let session = &session;
        async move {
            session
                .query_unpaged(cql_text, ())
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .rows::<(String, String)>()
                .unwrap()
                .collect::<Result<KeyRows, _>>()
                .unwrap()
        }
    };
    let ks = &cql.keyspace;
    let body_of = |tenant: &str| {
        rows(format!(
            "SELECT tenant_id, body FROM {ks}.subscriptions WHERE tenant_id = '{tenant}'"
        ))
    };
    let (gone_body, kept_body) = (
        body_of("gone").await.pop().unwrap().1,
        body_of("kept").await.pop().unwrap().1,
    );
    let select_keys = format!("SELECT tenant_id, wrapped FROM {ks}.tenant_keys");
    let before = rows(select_keys.clone()).await;

    assert_eq!(delete(&h, "gone").await.0, 204);
    finished_at_start(&h, "gone").await;
    let after = rows(select_keys).await;
    assert_shredded(
        &crate::cql::cipher(),
        &before,
        &after,
        &gone_body,
        &kept_body,
    );
    h.engine.shutdown().await;
    crate::cql::drop_keyspace(&session, ks).await;
}
