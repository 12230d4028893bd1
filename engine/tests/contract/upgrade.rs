//! Stores written by the Herald before keys had scopes open and keep their
//! keys working with full access: a SQLite database at schema v4 migrates
//! to v7 (scopes, tenant quotas, then the audit trail), and a CQL keyspace whose `api_keys`
//! table lacks `scopes` and `expires_at` and whose `tenants` table lacks
//! `quotas` gets them by `ALTER TABLE`. Old tenants have no quotas, and
//! quotas can be set on them.

use herald_engine::{
    config::ScyllaConfig,
    resources::{Scope, TenantQuotas},
    store::{
        embedded::{EmbeddedStore, SCHEMA_VERSION},
        scylla::ScyllaStore,
        Store, TenantStore,
    },
};

use crate::backend::{cipher, nodes, run_id, session, KEYSPACE_PREFIX};

/// The configuration of a keyspace of this run no test has used yet.
fn fresh_keyspace(tag: &str) -> ScyllaConfig {
    let mut config = ScyllaConfig::new(nodes());
    config.keyspace = format!(
        "{KEYSPACE_PREFIX}{}_{tag}_{}",
        run_id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    config
}

async fn old_key_has_full_access(store: &dyn Store) {
    let grant = store
        .grant_for_key([7; 32])
        .await
        .unwrap()
        .expect("old key");
    assert_eq!(grant.tenant_id, "acme");
    assert_eq!(grant.key_id, "key_old");
    assert_eq!(grant.scopes, [Scope::Admin]);
    assert_eq!(grant.expires_at_ms, None);
    let listed = store.list_api_keys("acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].scopes, [Scope::Admin]);
    assert_eq!(
        store.tenant_quotas("acme").await.unwrap(),
        Some(TenantQuotas::default())
    );
    let q = TenantQuotas {
        max_subscriptions: Some(1),
        ..TenantQuotas::default()
    };
    store.set_tenant_quotas("acme", &q).await.unwrap();
    assert_eq!(store.tenant_quotas("acme").await.unwrap(), Some(q));
}

#[tokio::test]
async fn an_embedded_store_at_schema_v4_migrates_and_old_keys_keep_full_access() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
        let sql = |f: &str| {
            std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src/store/embedded")
                    .join(f),
            )
            .unwrap()
        };
        conn.execute_batch(&sql("schema.sql")).unwrap();
        for f in ["schema_v2.sql", "schema_v3.sql", "schema_v4.sql"] {
            conn.execute_batch(&sql(f)).unwrap();
        }
        conn.execute(
            "INSERT INTO tenants (id, created_at) VALUES ('acme', 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO api_keys (hash, tenant_id, created_at, id, name, prefix) VALUES (?1, 'acme', 0, 'key_old', 'old', 'hk_old')",
            [[7u8; 32].as_slice()],
        )
        .unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 4);
    }
    let store = EmbeddedStore::open(dir.path(), cipher()).unwrap();
    old_key_has_full_access(&store).await;
    let conn = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[tokio::test]
async fn a_cql_keyspace_from_before_scopes_gets_the_columns_and_old_keys_keep_full_access() {
    let config = fresh_keyspace("upgrade");
    let ks = config.keyspace.clone();
    let session = session().await;
    for cql in [
        format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        // The tables as the previous schema.cql created them.
        format!("CREATE TABLE {ks}.tenants (tenant_id text PRIMARY KEY, created_at bigint)"),
        format!("CREATE TABLE {ks}.api_keys (key_hash blob PRIMARY KEY, tenant_id text, key_id text, revoked_at bigint)"),
        format!("CREATE TABLE {ks}.api_keys_by_tenant (tenant_id text, key_id text, key_hash blob, body text, PRIMARY KEY ((tenant_id), key_id))"),
        format!("INSERT INTO {ks}.tenants (tenant_id, created_at) VALUES ('acme', 0)"),
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
    let body = r#"{"id":"key_old","tenant_id":"acme","name":"old","prefix":"hk_old","created_at":"2026-01-02T03:04:05Z","revoked_at":null}"#;
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.api_keys_by_tenant (tenant_id, key_id, key_hash, body) VALUES ('acme', 'key_old', ?, ?)"),
            (vec![7u8; 32], body),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.api_keys (key_hash, tenant_id, key_id) VALUES (?, 'acme', 'key_old')"),
            (vec![7u8; 32],),
        )
        .await
        .unwrap();

    let result = async move {
        let store = ScyllaStore::connect(&config, cipher()).await.unwrap();
        old_key_has_full_access(&store).await;
        // New keys with scopes go into the altered table.
        let mut key = crate::fixtures::key("key_new", "acme");
        key.scopes = vec![Scope::EventsRead];
        store.create_api_key(&key, [8; 32]).await.unwrap();
        let grant = store.grant_for_key([8; 32]).await.unwrap().unwrap();
        assert_eq!(grant.scopes, [Scope::EventsRead]);
    };
    // Drop the keyspace whatever happened.
    let outcome = tokio::spawn(result).await;
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
        .await;
    outcome.unwrap();
}

/// A keyspace made before `logs_by_event_slot` keeps its attempts listed by
/// event: the store reads the older `logs_by_event` beside the new table
/// (newest first across both), keeps its retention and purges it with the
/// tenant; a new keyspace has no such table.
#[tokio::test]
async fn a_cql_keyspace_with_logs_by_event_still_lists_and_purges_them() {
    use herald_engine::{
        model::Outcome,
        store::{DeliveryLogStore, LogFilter, TenantPurgeStore},
    };

    use crate::fixtures::{attempt, delivery, event, now};

    let config = fresh_keyspace("bylog");
    let ks = config.keyspace.clone();
    let session = session().await;
    let e = event("acme", "order.created");
    let old = attempt(&delivery(&e, "sub_a", now()), Outcome::Failed);
    for cql in [
        format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        // The table as the previous schema.cql created it.
        format!("CREATE TABLE {ks}.logs_by_event (tenant_id text, event_id text, id text, subscription_id text, outcome text, body text, PRIMARY KEY ((tenant_id, event_id), id)) WITH CLUSTERING ORDER BY (id DESC)"),
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.logs_by_event (tenant_id, event_id, id, subscription_id, outcome, body) VALUES (?, ?, ?, ?, ?, ?)"),
            ("acme", &e.id, &old.id, "sub_a", "failed", serde_json::to_string(&old).unwrap()),
        )
        .await
        .unwrap();
    let fresh = format!("{ks}_new");
    let result = {
        let (session_ks, fresh) = (ks.clone(), fresh.clone());
        let nodes_config = config.clone();
        async move {
            let store = ScyllaStore::connect(&config, cipher()).await.unwrap();
            let new = attempt(&delivery(&e, "sub_a", now()), Outcome::Delivered);
            store.record_attempt(new.clone(), None).await.unwrap();
            let store = &store;
            let list = |tenant: &'static str, before: Option<String>, limit: usize| {
                let filter = LogFilter {
                    event_id: Some(e.id.clone()),
                    before,
                    ..LogFilter::default()
                };
                async move {
                    let logs = store.list_delivery_logs(tenant, &filter, limit).await;
                    logs.unwrap().into_iter().map(|l| l.id).collect::<Vec<_>>()
                }
            };
            assert_eq!(
                list("acme", None, 10).await,
                [new.id.clone(), old.id.clone()]
            );
            assert_eq!(list("acme", None, 1).await, [new.id.as_str()]);
            assert_eq!(
                list("acme", Some(new.id.clone()), 1).await,
                [old.id.as_str()]
            );
            // Another tenant's event with the same id lists nothing.
            assert!(list("globex", None, 10).await.is_empty());

            let ttl_session = crate::backend::session().await;
            let ttl: (i32,) = ttl_session
                .query_unpaged(
                    "SELECT default_time_to_live FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'logs_by_event'",
                    (&session_ks,),
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .single_row()
                .unwrap();
            assert_eq!(i64::from(ttl.0), nodes_config.retention.as_secs() as i64);

            store.purge_tenant("acme", 1000).await.unwrap();
            assert!(list("acme", None, 10).await.is_empty());

            // A keyspace made now has only the new table.
            let mut made_now = nodes_config.clone();
            made_now.keyspace = fresh.clone();
            ScyllaStore::connect(&made_now, cipher()).await.unwrap();
            let tables: Vec<(String,)> = ttl_session
                .query_unpaged(
                    "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name IN ('logs_by_event', 'logs_by_event_slot')",
                    (&fresh,),
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .rows()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(tables, [("logs_by_event_slot".to_string(),)]);
        }
    };
    // Drop the keyspaces whatever happened.
    let outcome = tokio::spawn(result).await;
    for keyspace in [&ks, &fresh] {
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await;
    }
    outcome.unwrap();
}

/// Since the delivery log writes an attempt's body once (to
/// `logs_by_tenant`), lists by subscription and by event read their rows'
/// bodies from it. Rows written before that carry their own body and are
/// listed beside the new ones, newest first; a key row whose body was never
/// written (a write that failed part-way) is left out, not an error.
#[tokio::test]
async fn a_cql_delivery_log_lists_attempts_with_and_without_a_body_in_its_key_tables() {
    use herald_engine::{
        model::Outcome,
        store::{DeliveryLogStore, LogFilter},
    };

    use crate::fixtures::{attempt, delivery, event, now};

    let config = fresh_keyspace("bodies");
    let ks = config.keyspace.clone();
    let session = session().await;
    let result = {
        let ks = ks.clone();
        async move {
            let store = ScyllaStore::connect(&config, cipher()).await.unwrap();
            let e = event("acme", "order.created");
            let old = attempt(&delivery(&e, "sub_a", now()), Outcome::Failed);
            let orphan = attempt(&delivery(&e, "sub_a", now()), Outcome::Failed);
            let new = attempt(&delivery(&e, "sub_a", now()), Outcome::Delivered);
            store.record_attempt(new.clone(), None).await.unwrap();
            let ms = |id: &str| i64::from_str_radix(&id.split_once('_').unwrap().1[..12], 16);
            let raw = crate::backend::session().await;
            // `old` as the previous version wrote it: a body in each key
            // table (and none in `logs_by_tenant`, so it must come from
            // there); `orphan` without a body anywhere.
            for (a, body) in [
                (&old, Some(serde_json::to_string(&old).unwrap())),
                (&orphan, None),
            ] {
                let (day, slot) = (ms(&a.id).unwrap() / 86_400_000, ms(&e.id).unwrap() / 10_000);
                raw.query_unpaged(
                    format!("INSERT INTO {ks}.logs_by_subscription (tenant_id, subscription_id, day, id, outcome, body) VALUES (?, ?, ?, ?, ?, ?)"),
                    ("acme", "sub_a", day as i32, &a.id, "failed", &body),
                )
                .await
                .unwrap();
                raw.query_unpaged(
                    format!("INSERT INTO {ks}.logs_by_event_slot (tenant_id, slot, event_id, id, subscription_id, outcome, body) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                    ("acme", slot, &e.id, &a.id, "sub_a", "failed", &body),
                )
                .await
                .unwrap();
            }
            let store = &store;
            let list = |filter: LogFilter| async move {
                let logs = store.list_delivery_logs("acme", &filter, 10).await;
                logs.unwrap()
            };
            let by_subscription = list(LogFilter {
                subscription_id: Some("sub_a".into()),
                ..LogFilter::default()
            })
            .await;
            let by_event = list(LogFilter {
                event_id: Some(e.id.clone()),
                ..LogFilter::default()
            })
            .await;
            for listed in [by_subscription, by_event] {
                let ids: Vec<_> = listed.iter().map(|l| l.id.as_str()).collect();
                assert_eq!(ids, [new.id.as_str(), old.id.as_str()]);
                assert_eq!(listed[0].outcome, Outcome::Delivered);
                assert_eq!(listed[0].url, new.url);
                assert_eq!(listed[1].outcome, Outcome::Failed);
            }
            // The key tables of a new attempt hold no body.
            let body: (Option<String>,) = raw
                .query_unpaged(
                    format!("SELECT body FROM {ks}.logs_by_subscription WHERE tenant_id = 'acme' AND subscription_id = 'sub_a' AND day = ? AND id = ?"),
                    ((ms(&new.id).unwrap() / 86_400_000) as i32, &new.id),
                )
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .single_row()
                .unwrap();
            assert_eq!(body, (None,));
        }
    };
    // Drop the keyspace whatever happened.
    let outcome = tokio::spawn(result).await;
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
        .await;
    outcome.unwrap();
}

/// A database at schema v9 marked an event fanned out unscheduled with
/// `events.state = 3`; from v10 such an event keeps state 0 and has a row
/// in `events_kept` (a row the size of its id, where the update rewrote
/// the event's row). After the migration an old mark still reads as kept:
/// a re-read leaves out what was settled since. A new mark is a row of
/// `events_kept`, and it goes with its event (here, the tenant's purge).
#[tokio::test]
async fn an_embedded_store_at_schema_v9_keeps_reading_events_fanned_out_unscheduled() {
    use herald_engine::store::{
        DeliveryLogStore, EventStore, FanOut, FanOutResult, ScheduleStore, TenantPurgeStore,
    };

    use crate::fixtures::{attempt, delivery, event, now, POSITION};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let (old, new) = (
        event("acme", "order.created"),
        event("acme", "order.created"),
    );
    let t = now();
    let handed = |e: &herald_engine::model::DomainEvent| {
        let deliveries = vec![delivery(e, "sub_a", t), delivery(e, "sub_b", t)];
        FanOut {
            event: e.clone(),
            position: POSITION,
            deliveries,
            lease_until_ms: Some(t + 60_000),
            unscheduled: true,
            parked: Vec::new(),
            indexed: false,
        }
    };
    let (old_item, new_item) = (handed(&old), handed(&new));
    {
        let store = EmbeddedStore::open(dir.path(), cipher()).unwrap();
        store.record_event(&old, POSITION, t).await.unwrap();
        let done = attempt(
            &old_item.deliveries[0],
            herald_engine::model::Outcome::Delivered,
        );
        store.log_attempt(done).await.unwrap();
    }
    {
        // Back to v9, the event marked as v9 marked it.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "DROP TRIGGER events_kept_gone; DROP TABLE events_kept; PRAGMA user_version = 9;",
        )
        .unwrap();
        conn.execute("UPDATE events SET state = 3 WHERE id = ?1", [&old.id])
            .unwrap();
    }
    let store = EmbeddedStore::open(dir.path(), cipher()).unwrap();
    let kept_rows = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT count(*) FROM events_kept", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    assert_eq!(kept_rows(), 0);
    let results = store.fan_out(vec![old_item], t, t).await.unwrap();
    assert_eq!(results, [FanOutResult::Resumed(vec!["sub_a".into()])]);

    store.record_event(&new, POSITION, t).await.unwrap();
    let results = store.fan_out(vec![new_item.clone()], t, t).await.unwrap();
    assert_eq!(results, [FanOutResult::Scheduled]);
    assert_eq!(kept_rows(), 1, "the mark is a row of events_kept");
    let done = attempt(
        &new_item.deliveries[1],
        herald_engine::model::Outcome::Delivered,
    );
    store.log_attempt(done).await.unwrap();
    let results = store.fan_out(vec![new_item], t, t).await.unwrap();
    assert_eq!(results, [FanOutResult::Resumed(vec!["sub_b".into()])]);

    store.begin_tenant_deletion("acme").await.unwrap();
    while store.purge_tenant("acme", 100).await.unwrap() > 0 {}
    assert_eq!(kept_rows(), 0, "the mark went with its event");
}
