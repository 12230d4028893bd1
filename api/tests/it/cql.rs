//! The CQL store against a real Apache Cassandra 5.0 (`scripts/services up
//! cassandra`; `HERALD_TEST_SCYLLA_NODES` points elsewhere). Each test uses
//! its own keyspace. Without a reachable node these tests fail, loudly.

use std::{collections::HashSet, time::Duration};

use herald_engine::{
    config::ScyllaConfig,
    encryption::{KeyRing, SecretCipher},
    ids,
    log::LogPosition,
    model::{DomainEvent, EventSource, Outcome, ScheduledDelivery, Trigger, WebhookDeliveryLog},
    store::{scylla::ScyllaStore, DeliveryLogStore, EventStore, SubscriptionStore},
};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::support::{eventually, Herald, Receiver};

/// Held shared by every test on Cassandra, exclusively by the one that
/// restarts it.
pub static CASSANDRA: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A shared hold on Cassandra for one test (see [`CASSANDRA`]); the first
/// one of a test run drops the keyspaces earlier runs left behind.
pub(crate) async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    let guard = CASSANDRA.read().await;
    sweep_earlier_runs().await;
    guard
}

/// This test run's mark in its keyspace names.
fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        format!("{secs:08x}{:03x}", rand::random::<u16>() & 0xfff)
    })
}

/// Whether a test keyspace (named `<prefix><run id>_…`) belongs to another
/// run that is over: one started more than two hours ago, or named before
/// run ids carried their start time. A run still going on the same node (a
/// second test command) keeps its keyspaces.
fn is_stale(rest: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    rest.get(..8)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .is_none_or(|started| now.saturating_sub(started) > 2 * 3600)
}

/// Drops, once per test run, every test keyspace of an earlier run: each
/// test makes a keyspace of ~25 tables, and a single node with a small heap
/// runs out of memory after a few dozen runs' worth of them.
async fn sweep_earlier_runs() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let session = scylla::client::session_builder::SessionBuilder::new()
                .known_nodes(nodes())
                .build()
                .await
                .expect("connect to Cassandra");
            let rows = session
                .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
                .await
                .expect("list keyspaces")
                .into_rows_result()
                .expect("rows");
            let mine = format!("herald_t_{}_", run_id());
            let stale: Vec<String> = rows
                .rows::<(String,)>()
                .expect("keyspace names")
                .filter_map(Result::ok)
                .map(|(ks,)| ks)
                .filter(|ks| {
                    !ks.starts_with(&mine) && ks.strip_prefix("herald_t_").is_some_and(is_stale)
                })
                .collect();
            for ks in &stale {
                drop_keyspace(&session, ks).await;
            }
            if !stale.is_empty() {
                println!("dropped {} test keyspaces of earlier runs", stale.len());
            }
        })
        .await;
}

pub(crate) fn nodes() -> Vec<String> {
    let raw = std::env::var("HERALD_TEST_SCYLLA_NODES").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let nodes: Vec<String> = raw.split(',').map(|s| s.trim().to_string()).collect();
    if std::net::TcpStream::connect_timeout(
        &nodes[0]
            .parse()
            .expect("HERALD_TEST_SCYLLA_NODES: host:port"),
        Duration::from_secs(3),
    )
    .is_err()
    {
        panic!(
            "no CQL node at {}: start Cassandra with `scripts/services up cassandra` (scripts/test does)",
            nodes[0]
        );
    }
    nodes
}

/// The secret-encryption key of every CQL test (the CQL store needs one).
pub(crate) const TEST_KEY: &str = "aGVyYWxkLWNxbC10ZXN0cy1lbmNyeXB0aW9uLWtleSE=";

/// The cipher of [`TEST_KEY`], for tests that open the store directly.
pub(crate) fn cipher() -> SecretCipher {
    SecretCipher::new(KeyRing::parse(TEST_KEY).unwrap(), "TEST_KEY")
}

/// A fresh keyspace for one test.
pub(crate) fn config(tag: &str) -> ScyllaConfig {
    let mut c = ScyllaConfig::new(nodes());
    c.keyspace = format!(
        "herald_t_{}_{tag}_{}",
        run_id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    c
}

async fn herald_on(cql: &ScyllaConfig) -> Herald {
    let cql = cql.clone();
    Herald::start_with(move |c| {
        c.scylla = Some(cql);
        c.secret_keys = Some(KeyRing::parse(TEST_KEY).unwrap());
        // Count plain attempts: no circuit breaking in these tests.
        c.delivery.breaker_failure_threshold = 1_000;
        c.delivery.breaker_min_requests = 1_000;
    })
    .await
}

async fn page(h: &Herald, key: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = h
            .get(
                key,
                &format!("/api/v1/integrations/webhooks?limit={limit}&{query}&cursor={cursor}"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        out.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_store_writes_pages_and_filters_delivery_logs() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("logs");
    let h = herald_on(&cql).await;
    let key = h.tenant("acme").await;
    let other = h.tenant("globex").await;
    let ok = Receiver::start(200).await;
    let bad = Receiver::start(500).await;
    let good_sub = h.subscribe(&key, &ok.url, &["order.*"]).await;
    let bad_sub = h.subscribe(&key, &bad.url, &["order.created"]).await;
    let mut event_ids = Vec::new();
    for i in 0..12 {
        let t = if i % 2 == 0 {
            "order.created"
        } else {
            "order.paid"
        };
        event_ids.push(
            h.emit(&key, t, json!({ "n": i })).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // 12 delivered to the good endpoint; 6 events x 4 attempts (1s,1s,1s) failing on the bad one.
    let all = eventually("every attempt logged", Duration::from_secs(60), || async {
        let logs = page(&h, &key, "", 500).await;
        (logs.len() == 12 + 6 * 4).then_some(logs)
    })
    .await;
    let paged = page(&h, &key, "", 5).await;
    let ids: Vec<&str> = paged.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "paging returns each record once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");

    let by_sub = page(
        &h,
        &key,
        &format!("subscription_id={}", bad_sub["id"].as_str().unwrap()),
        4,
    )
    .await;
    assert_eq!(by_sub.len(), 24);
    assert!(by_sub.iter().all(|l| l["subscription_id"] == bad_sub["id"]));
    let failed = page(&h, &key, "status=failed", 7).await;
    assert_eq!(failed.len(), 18);
    let dead = page(&h, &key, "status=dead", 7).await;
    assert_eq!(dead.len(), 6);
    assert!(dead.iter().all(|l| l["attempt"] == 4));
    let delivered = page(
        &h,
        &key,
        &format!(
            "status=delivered&subscription_id={}",
            good_sub["id"].as_str().unwrap()
        ),
        3,
    )
    .await;
    assert_eq!(delivered.len(), 12);
    let one = page(&h, &key, &format!("event_id={}", event_ids[0]), 2).await;
    assert_eq!(one.len(), 1 + 4, "order.created goes to both subscriptions");
    assert!(one.iter().all(|l| l["event_id"] == event_ids[0].as_str()));
    // Tenant isolation on the CQL store too.
    assert!(page(&h, &other, "", 50).await.is_empty());
    let (status, _) = h
        .get(
            &other,
            &format!("/api/v1/integrations/events/{}", event_ids[0]),
        )
        .await;
    assert_eq!(status, 404);
    // Events list (event index by tenant and day), newest first, with a type filter.
    let (status, events) = h
        .get(
            &key,
            "/api/v1/integrations/events?limit=100&event_type=order.paid",
        )
        .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["data"].as_array().unwrap().len(), 6);
    h.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_paused_subscriptions_hold_events_until_resumed() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("held");
    let h = Herald::start_with(move |c| {
        c.scylla = Some(cql);
        c.secret_keys = Some(KeyRing::parse(TEST_KEY).unwrap());
        c.delivery.lease_margin = crate::manage::LONG_LEASE;
    })
    .await;
    crate::manage::held_until_resumed(&h, "acme", Duration::from_secs(30)).await;
    h.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_state_survives_a_restart_on_a_fresh_data_dir() {
    let _cassandra = crate::cql::shared().await;
    let cql = config("restart");
    let receiver = Receiver::start(200).await;
    let (key, sub_id, event_id) = {
        let h = herald_on(&cql).await;
        let key = h.tenant("acme").await;
        let sub = h.subscribe(&key, &receiver.url, &["invoice.*"]).await;
        let event = h.emit(&key, "invoice.sent", json!({ "n": 1 })).await;
        eventually("first delivery", Duration::from_secs(20), || async {
            (receiver.received().len() == 1).then_some(())
        })
        .await;
        eventually("first log", Duration::from_secs(10), || async {
            (h.logs(&key, "").await.len() == 1).then_some(())
        })
        .await;
        h.engine.shutdown().await;
        (
            key,
            sub["id"].as_str().unwrap().to_string(),
            event["id"].as_str().unwrap().to_string(),
        )
    };
    // A new process with an empty data dir, same keyspace.
    let h = herald_on(&cql).await;
    let (status, sub) = h
        .get(&key, &format!("/api/v1/portal/webhooks/{sub_id}"))
        .await;
    assert_eq!(
        status, 200,
        "the API key and the subscription are in CQL: {sub}"
    );
    assert_eq!(sub["url"], receiver.url.as_str());
    let logs = h.logs(&key, "").await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["event_id"], event_id.as_str());
    assert_eq!(logs[0]["outcome"], "delivered");
    let (status, event) = h
        .get(&key, &format!("/api/v1/integrations/events/{event_id}"))
        .await;
    assert_eq!(status, 200, "the event index is in CQL: {event}");
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 1);
    // The subscription index is rebuilt from CQL: new events reach it.
    h.emit(&key, "invoice.paid", json!({ "n": 2 })).await;
    eventually(
        "delivery after the restart",
        Duration::from_secs(20),
        || async { (receiver.received().len() == 2).then_some(()) },
    )
    .await;
    h.engine.shutdown().await;
}

/// The CQL store writes sealed secrets only; a row written before
/// encryption (plaintext) still loads and is re-sealed when a store
/// connects; another key fails the connect, naming the key it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_signing_secrets_are_sealed_and_legacy_rows_resealed() {
    let cql = config("secrets");
    let secret = herald_engine::signing::SigningSecret::generate().to_whsec();
    let b64 = secret.trim_start_matches("whsec_").to_string();
    let h = herald_on(&cql).await;
    let key = h.tenant("acme").await;
    let (status, sub) = h
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["a.*"], "secret": secret }),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_string();
    h.engine.shutdown().await;

    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&cql.nodes)
        .build()
        .await
        .unwrap();
    let select = format!(
        "SELECT body FROM {}.subscriptions WHERE tenant_id = 'acme' AND id = ?",
        cql.keyspace
    );
    async fn body(session: &scylla::client::session::Session, select: &str, id: &str) -> String {
        session
            .query_unpaged(select, (id,))
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row::<(String,)>()
            .unwrap()
            .0
    }
    let sealed = body(&session, &select, &sub_id).await;
    assert!(sealed.contains("\"enc:v1:"), "{sealed}");
    assert!(!sealed.contains(&b64), "{sealed}");

    // A row as written before encryption: the secret in plaintext.
    let mut legacy: Value = serde_json::from_str(&sealed).unwrap();
    legacy["secrets"][0]["secret"] = Value::String(secret.clone());
    session
        .query_unpaged(
            format!(
                "UPDATE {}.subscriptions SET body = ? WHERE tenant_id = 'acme' AND id = ?",
                cql.keyspace
            ),
            (legacy.to_string(), &sub_id),
        )
        .await
        .unwrap();
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let resealed = body(&session, &select, &sub_id).await;
    assert!(resealed.contains("\"enc:v1:"), "{resealed}");
    assert!(!resealed.contains(&b64), "{resealed}");
    let loaded = store
        .get_subscription("acme", &sub_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.secrets[0].secret.to_whsec(), secret);

    let err = ScyllaStore::connect(&cql, SecretCipher::random())
        .await
        .err()
        .expect("another key fails")
        .to_string();
    assert!(
        err.contains("cannot decrypt the key of tenant acme"),
        "{err}"
    );
    assert!(err.contains(cipher().ring().primary().id()), "{err}");
    drop_keyspace(&session, &cql.keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_retention_is_the_tables_ttl() {
    let _cassandra = crate::cql::shared().await;
    let mut cql = config("ttl");
    cql.retention = Duration::from_secs(2 * 24 * 3600);
    let store = ScyllaStore::connect(&cql, cipher()).await.unwrap();
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&cql.nodes)
        .build()
        .await
        .unwrap();
    for table in [
        "logs_by_tenant",
        "logs_by_subscription",
        "logs_by_event_slot",
        "events",
        "events_by_day",
    ] {
        let ttl = session
            .query_unpaged(
                "SELECT default_time_to_live FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
                (&cql.keyspace, table),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row::<(i32,)>()
            .unwrap()
            .0;
        assert_eq!(ttl, 2 * 24 * 3600, "{table}");
    }
    let (tenant, sub) = ("acme", "sub_x");
    let event = event(tenant);
    store
        .record_event(
            &event,
            LogPosition {
                partition: 0,
                offset: 0,
            },
            now_ms() + 60_000,
        )
        .await
        .unwrap();
    store
        .record_attempt(attempt(&event, sub, "dlv_1", Outcome::Delivered), None)
        .await
        .unwrap();
    let rows: Vec<(Option<i32>,)> = session
        .query_unpaged(
            format!(
                "SELECT TTL(body) FROM {}.logs_by_tenant WHERE tenant_id = ? ALLOW FILTERING",
                cql.keyspace
            ),
            (tenant,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(Option<i32>,)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1);
    let ttl = rows[0].0.expect("the log row carries a TTL");
    assert!(ttl > 2 * 24 * 3600 - 600 && ttl <= 2 * 24 * 3600, "{ttl}");
    // The dedupe claim's TTL is the window (60 s here), not the retention.
    let (ttl,): (Option<i32>,) = session
        .query_unpaged(
            format!(
                "SELECT TTL(event_id) FROM {}.dedupe WHERE tenant_id = ? AND dedupe_key = ?",
                cql.keyspace
            ),
            (tenant, "k1"),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert!(ttl.is_some_and(|t| t > 0 && t <= 60), "{ttl:?}");
    drop_keyspace(&session, &cql.keyspace).await;
}

pub(crate) fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn event(tenant: &str) -> DomainEvent {
    let now = OffsetDateTime::now_utc();
    DomainEvent {
        id: ids::new_id(ids::EVENT),
        tenant_id: tenant.into(),
        event_type: "order.created".into(),
        schema_version: 1,
        dedupe_key: Some("k1".into()),
        occurred_at: now,
        received_at: now,
        payload: json!({ "a": 1 }).into(),
        source: EventSource::Api,
        aggregate_type: None,
        aggregate_id: None,
        trace_id: None,
    }
}

pub(crate) fn attempt(
    event: &DomainEvent,
    sub: &str,
    delivery: &str,
    outcome: Outcome,
) -> WebhookDeliveryLog {
    WebhookDeliveryLog {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id: delivery.into(),
        event_id: event.id.clone(),
        subscription_id: sub.into(),
        tenant_id: event.tenant_id.clone(),
        attempt: 1,
        trigger: Trigger::Initial,
        replay_of: None,
        url: "http://127.0.0.1:1/hook".into(),
        created_at: OffsetDateTime::now_utc(),
        status_code: Some(if outcome == Outcome::Delivered {
            200
        } else {
            500
        }),
        latency_ms: Some(1),
        response_body: None,
        location: None,
        error: None,
        error_message: None,
        outcome,
        next_attempt_at: None,
    }
}

pub(crate) fn delivery(event: &DomainEvent, sub: &str, due: i64) -> ScheduledDelivery {
    ScheduledDelivery {
        delivery_id: ids::new_id(ids::DELIVERY),
        tenant_id: event.tenant_id.clone(),
        event_id: event.id.clone(),
        subscription_id: sub.into(),
        attempt: 1,
        replay_of: None,
        is_replay: false,
        due_at_ms: due,
        seq: 0,
        ordered: false,
    }
}

pub(crate) async fn drop_keyspace(session: &scylla::client::session::Session, ks: &str) {
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
        .await;
}

/// The CQL store counts the statements it sends (`herald_store_operations_total`):
/// delivering events adds reads and writes, so the operations per delivery
/// can be measured; the embedded store exports no such series.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_statements_are_counted_per_kind() {
    use crate::metrics::{parse, value};
    let _cassandra = crate::cql::shared().await;
    let h = herald_on(&config("ops")).await;
    let ops = |kind: &'static str| {
        let text = h.engine.metrics().render();
        value(
            &parse(&text),
            "herald_store_operations_total",
            &[("kind", kind)],
        )
        .unwrap_or(0.0)
    };
    let key = h.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    h.subscribe(&key, &receiver.url, &["order.*"]).await;
    let (reads, writes) = (ops("read"), ops("write"));
    assert!(writes > 0.0, "creating a tenant and a subscription wrote");
    for n in 0..5 {
        h.emit(&key, "order.placed", json!({ "n": n })).await;
    }
    eventually("5 deliveries", Duration::from_secs(30), || async {
        (receiver.received().len() >= 5).then_some(())
    })
    .await;
    assert!(ops("write") >= writes + 5.0, "each delivery wrote");
    assert!(ops("read") > reads);
    h.engine.shutdown().await;

    let embedded = Herald::start().await;
    let text = embedded.engine.metrics().render();
    assert!(
        !text.contains("herald_store_operations_total"),
        "SQLite counts none"
    );
}
