//! The transactional outbox end to end on real services: PostgreSQL 15
//! (127.0.0.1:5432), Kafka Connect with the Debezium PostgreSQL connector
//! (127.0.0.1:8083) and Kafka (127.0.0.1:9092), all started by
//! `scripts/services up kafka postgres connect` (scripts/test does it). These
//! tests fail loudly without them.
//!
//! Each test gets its own database (with `sql/herald_outbox.sql`), its own
//! connector built from the shipped `deploy/debezium/herald-outbox-connector.json`
//! (own slot, publication and topics) and its own Herald topic prefix.

use std::{collections::HashMap, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    ClientConfig, Message,
};
use serde_json::{json, Map, Value};
use standardwebhooks::Webhook;
use tokio::process::Command;

use crate::{
    kafka::{prefix, repo_root, require_kafka, start_role, tenant, BROKER, BROKERS},
    support::{eventually, Receiver},
};

pub(crate) const CONNECT: &str = "http://127.0.0.1:8083";

pub(crate) async fn require_port(port: u16, what: &str) {
    let up = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await;
    assert!(
        matches!(up, Ok(Ok(_))),
        "no {what} on 127.0.0.1:{port}: the CDC tests need real PostgreSQL, Kafka Connect with \
         Debezium and Kafka; run `scripts/services up kafka postgres connect` (scripts/test does)"
    );
}

pub(crate) async fn require_cdc() {
    require_kafka().await;
    require_port(5432, "PostgreSQL").await;
    require_port(8083, "Kafka Connect").await;
}

/// A database with the outbox table and a Debezium connector streaming it.
pub(crate) struct Outbox {
    db: String,
    connector: String,
    /// The topic the connector writes to.
    pub(crate) topic: String,
}

/// Runs SQL on `db` with psql; panics with psql's message on error.
pub(crate) async fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
        .args(["-qtA", "-d", db, "-c", sql])
        .output()
        .await
        .expect("psql (scripts/services installs PostgreSQL)");
    assert!(
        out.status.success(),
        "psql failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Outbox {
    /// `router`: the shipped configuration (Outbox Event Router); otherwise
    /// the plain change envelope as JSON with schemas.
    pub(crate) async fn start(prefix: &str, router: bool) -> Self {
        precreate_events_topic(prefix).await;
        let db = format!(
            "herald_cdc_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        psql("postgres", &format!("CREATE DATABASE {db}")).await;
        let ddl = std::fs::read_to_string(repo_root().join("sql/herald_outbox.sql")).unwrap();
        psql(&db, &ddl).await;
        psql(
            &db,
            "CREATE TABLE work_orders (id text PRIMARY KEY, status text NOT NULL)",
        )
        .await;

        let shipped = std::fs::read_to_string(
            repo_root().join("deploy/debezium/herald-outbox-connector.json"),
        )
        .unwrap();
        let mut config: Map<String, Value> = serde_json::from_str(&shipped).unwrap();
        for (k, v) in [
            ("database.dbname", db.as_str()),
            ("slot.name", db.as_str()),
            ("publication.name", db.as_str()),
            ("topic.prefix", prefix),
            ("slot.drop.on.stop", "true"),
        ] {
            config.insert(k.into(), json!(v));
        }
        let topic = if router {
            let topic = format!("{prefix}.cdc.outbox");
            config.insert(
                "transforms.outbox.route.topic.replacement".into(),
                json!(topic),
            );
            topic
        } else {
            config.retain(|k, _| !k.starts_with("transforms"));
            config.insert(
                "value.converter".into(),
                json!("org.apache.kafka.connect.json.JsonConverter"),
            );
            config.insert("value.converter.schemas.enable".into(), json!("true"));
            format!("{prefix}.public.herald_outbox")
        };
        let connector = db.clone();
        let http = reqwest::Client::new();
        let r = http
            .put(format!("{CONNECT}/connectors/{connector}/config"))
            .json(&config)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "registering the connector: {}",
            r.text().await.unwrap()
        );
        eventually(
            "the Debezium connector task RUNNING",
            Duration::from_secs(90),
            || {
                let (http, connector) = (http.clone(), connector.clone());
                async move {
                    let s: Value = http
                        .get(format!("{CONNECT}/connectors/{connector}/status"))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    assert_ne!(
                        s["tasks"][0]["state"], "FAILED",
                        "connector task failed: {s}"
                    );
                    (s["connector"]["state"] == "RUNNING" && s["tasks"][0]["state"] == "RUNNING")
                        .then_some(())
                }
            },
        )
        .await;
        Self {
            db,
            connector,
            topic,
        }
    }

    pub(crate) async fn sql(&self, sql: &str) -> String {
        psql(&self.db, sql).await
    }

    /// Removes the connector (its slot goes with it) and the database.
    pub(crate) async fn stop(self) {
        let http = reqwest::Client::new();
        let _ = http
            .delete(format!("{CONNECT}/connectors/{}", self.connector))
            .send()
            .await;
        let db = self.db.clone();
        eventually(
            "the replication slot dropped",
            Duration::from_secs(30),
            || {
                let db = db.clone();
                async move {
                    (psql(
                        "postgres",
                        &format!(
                            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{db}'"
                        ),
                    )
                    .await
                        == "0")
                        .then_some(())
                }
            },
        )
        .await;
        psql(
            "postgres",
            &format!("DROP DATABASE {} WITH (FORCE)", self.db),
        )
        .await;
    }
}

/// Creates `<prefix>.events` (6 partitions, as `start_role` asks) before Herald
/// starts, so a start never races the broker's metadata of a topic it has just
/// created (`KafkaLog::connect` reads the partition count right after).
pub(crate) async fn precreate_events_topic(prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let topic = format!("{prefix}.events");
    let new = NewTopic::new(&topic, 6, TopicReplication::Fixed(-1));
    let r = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok(), "creating {topic}: {r:?}");
    eventually(
        "the events topic's partitions in the metadata",
        Duration::from_secs(30),
        || {
            let topic = topic.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let c: BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", BROKERS)
                        .create()
                        .ok()?;
                    let md = c
                        .fetch_metadata(Some(&topic), Duration::from_secs(5))
                        .ok()?;
                    (md.topics().first()?.partitions().len() == 6).then_some(())
                })
                .await
                .unwrap()
            }
        },
    )
    .await;
}

/// An INSERT of one outbox row.
pub(crate) fn outbox_row(
    id: uuid::Uuid,
    tenant: &str,
    event_type: &str,
    dedupe_key: Option<&str>,
    payload: &str,
) -> String {
    let dedupe = dedupe_key.map_or("NULL".to_string(), |k| format!("'{k}'"));
    format!(
        "INSERT INTO herald_outbox (id, tenant_id, aggregatetype, aggregateid, type, dedupe_key, payload) \
         VALUES ('{id}', '{tenant}', 'work_order', 'wo-{id}', '{event_type}', {dedupe}, '{payload}');"
    )
}

pub(crate) fn event_id(row: uuid::Uuid) -> String {
    format!("evt_{}", row.simple())
}

pub(crate) fn delivered_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect()
}

pub(crate) async fn wait_delivered(receiver: &Receiver, id: &str) {
    eventually(
        &format!("{id} delivered"),
        Duration::from_secs(60),
        || async {
            delivered_ids(receiver)
                .iter()
                .any(|d| d == id)
                .then_some(())
        },
    )
    .await;
}

pub(crate) type Rec = (Option<Vec<u8>>, HashMap<String, String>);

/// Every committed record of `topic` (read_committed), read until `quiet`
/// passes with nothing new once at least `min` records are in.
pub(crate) fn read_committed(topic: &str, min: usize, quiet: Duration) -> Vec<Rec> {
    read_topic(topic, "read_committed", min, quiet)
}

pub(crate) fn read_topic(topic: &str, isolation: &str, min: usize, quiet: Duration) -> Vec<Rec> {
    let c = crate::kafka::reader_from_start(topic, isolation);
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((m.payload().map(<[u8]>::to_vec), headers));
                last = std::time::Instant::now();
            }
            // librdkafka reconnects by itself (a broker restart, a dropped connection).
            Some(Err(e)) => eprintln!("reading {topic}: {e} (retrying)"),
            None if out.len() >= min && last.elapsed() >= quiet => break,
            None => {}
        }
    }
    out
}

pub(crate) async fn health(base: &str) -> Value {
    reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A committed transaction (business row + outbox row) becomes one signed
/// webhook; a rolled-back one never does; a dedupe key used by a REST emit
/// suppresses the CDC event with the same key; malformed rows go to the
/// dead-letter topic with their reason.
#[tokio::test]
async fn cdc_outbox_commit_delivers_rollback_does_not_and_bad_rows_are_dead_lettered() {
    let _broker = BROKER.read().await;
    require_cdc().await;
    let prefix = prefix("cdc");
    let outbox = Outbox::start(&prefix, true).await;
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(200).await;
    let herald = start_role("all", &tmp.path().join("data"), &prefix, &[]).await;
    let (key, secret) = tenant(&herald.base, "acme-cdc", &receiver).await;

    // Committed: the business row and the outbox row together.
    let committed = uuid::Uuid::now_v7();
    outbox
        .sql(&format!(
            "BEGIN; INSERT INTO work_orders VALUES ('wo-1', 'done'); {} COMMIT;",
            outbox_row(
                committed,
                "acme-cdc",
                "work_order.completed",
                Some("wo-1-done"),
                r#"{"wo": "wo-1", "by": "ana"}"#
            )
        ))
        .await;
    wait_delivered(&receiver, &event_id(committed)).await;
    let got = receiver
        .received()
        .into_iter()
        .find(|r| r.header("webhook-id") == event_id(committed))
        .unwrap();
    Webhook::new(&secret)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("a valid signature");
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["type"], "work_order.completed");
    assert_eq!(body["tenant_id"], "acme-cdc");
    assert_eq!(body["dedupe_key"], "wo-1-done");
    assert_eq!(body["schema_version"], 1);
    assert_eq!(body["data"], json!({"wo": "wo-1", "by": "ana"}));
    // The event API shows its CDC lineage.
    let http = reqwest::Client::new();
    let ev: Value = http
        .get(format!(
            "{}/api/v1/integrations/events/{}",
            herald.base,
            event_id(committed)
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ev["source"], "cdc", "{ev}");
    assert_eq!(ev["aggregate_type"], "work_order", "{ev}");

    // Rolled back: nothing; a later committed marker proves the pipeline moved past it.
    let rolled_back = uuid::Uuid::now_v7();
    outbox
        .sql(&format!(
            "BEGIN; INSERT INTO work_orders VALUES ('wo-2', 'done'); {} ROLLBACK;",
            outbox_row(
                rolled_back,
                "acme-cdc",
                "work_order.completed",
                None,
                r#"{"wo": "wo-2"}"#
            )
        ))
        .await;
    let marker = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            marker,
            "acme-cdc",
            "work_order.marker",
            None,
            "{}",
        ))
        .await;
    wait_delivered(&receiver, &event_id(marker)).await;
    assert!(
        !delivered_ids(&receiver).contains(&event_id(rolled_back)),
        "a rolled-back row was delivered"
    );
    assert_eq!(
        outbox
            .sql("SELECT count(*) FROM work_orders WHERE id = 'wo-2'")
            .await,
        "0"
    );

    // One dedupe key through REST, then through CDC: delivered once.
    let r = http
        .post(format!("{}/api/v1/integrations/events", herald.base))
        .bearer_auth(&key)
        .json(&json!({"event_type": "work_order.created", "dedupe_key": "shared-1", "payload": {"via": "rest"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let rest_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_delivered(&receiver, &rest_id).await;
    let dup = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            dup,
            "acme-cdc",
            "work_order.created",
            Some("shared-1"),
            r#"{"via": "cdc"}"#,
        ))
        .await;

    // Malformed rows: a tenant id Herald refuses, a payload that is no object.
    let (bad_tenant, bad_payload) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    outbox
        .sql(&outbox_row(
            bad_tenant,
            "Not A Tenant",
            "work_order.completed",
            None,
            "{}",
        ))
        .await;
    outbox
        .sql(&outbox_row(
            bad_payload,
            "acme-cdc",
            "work_order.completed",
            None,
            "[1, 2]",
        ))
        .await;
    let marker2 = uuid::Uuid::now_v7();
    outbox
        .sql(&outbox_row(
            marker2,
            "acme-cdc",
            "work_order.marker",
            None,
            "{}",
        ))
        .await;
    wait_delivered(&receiver, &event_id(marker2)).await;
    let ids = delivered_ids(&receiver);
    assert!(
        !ids.contains(&event_id(dup)),
        "the CDC event with a used dedupe key was delivered"
    );
    let shared: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .filter(|b| b["dedupe_key"] == "shared-1")
        .collect();
    assert_eq!(
        shared.len(),
        1,
        "one delivery for dedupe key shared-1: {shared:?}"
    );
    assert_eq!(shared[0]["data"]["via"], "rest");
    for bad in [bad_tenant, bad_payload] {
        assert!(!ids.contains(&event_id(bad)));
    }

    let dlq = format!("{prefix}.cdc.dead-letter");
    let letters =
        tokio::task::spawn_blocking(move || read_committed(&dlq, 2, Duration::from_secs(2)))
            .await
            .unwrap();
    assert_eq!(letters.len(), 2, "two dead letters: {letters:?}");
    let by_id: HashMap<String, &HashMap<String, String>> =
        letters.iter().map(|(_, h)| (h["id"].clone(), h)).collect();
    let t = by_id[&bad_tenant.to_string()];
    assert!(t["herald-dlq-reason"].contains("tenant_id"), "{t:?}");
    assert_eq!(t["herald-dlq-topic"], outbox.topic);
    assert!(t["herald-dlq-offset"].parse::<u64>().is_ok());
    assert!(t["herald-dlq-partition"].parse::<u32>().is_ok());
    let p = by_id[&bad_payload.to_string()];
    assert!(p["herald-dlq-reason"].contains("payload"), "{p:?}");
    // The original value travels unchanged.
    let raw = letters
        .iter()
        .find(|(_, h)| h["id"] == bad_payload.to_string())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(raw.0.as_ref().unwrap()).unwrap(),
        json!([1, 2])
    );
    let h = health(&herald.base).await;
    assert_eq!(h["relay"]["dead_lettered"], 2, "{h}");
    // The same counts reach Prometheus.
    crate::support::eventually("relay metrics", Duration::from_secs(30), || async {
        let text = reqwest::get(format!("{}/metrics", herald.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "herald_relay_dead_letters_total 2")
            .then_some(())
    })
    .await;

    herald.kill9().await;
    outbox.stop().await;
}
