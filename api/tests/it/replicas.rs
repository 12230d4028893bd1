//! Replicas sharing one Kafka broker and one Cassandra: separate `herald`
//! processes (`--role api`, `--role worker`, `--role relay`), each on its
//! own data dir, follow each other's subscription and catalogue changes
//! through the CQL store, and agree on dedupe.

use std::{collections::HashSet, time::Duration};

use rdkafka::{
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig,
};
use serde_json::{json, Value};

use crate::{
    distributed::{cql_flags, get, post},
    kafka::{prefix, require_kafka, start_role, tenant, BROKER},
    support::{eventually, HeraldProcess, Receiver},
};

/// The processes of one test: their data dirs, topic prefix and keyspace.
struct Cluster {
    tmp: tempfile::TempDir,
    prefix: String,
    flags: Vec<String>,
}

impl Cluster {
    fn new(tag: &str) -> Self {
        let cql = crate::cql::config(tag);
        Self {
            tmp: tempfile::tempdir().unwrap(),
            prefix: prefix(tag),
            flags: cql_flags(&cql.keyspace),
        }
    }

    /// Starts `herald serve --role ROLE` on data dir `name` (its own disk).
    async fn start(&self, role: &str, name: &str) -> HeraldProcess {
        let args: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        start_role(role, &self.tmp.path().join(name), &self.prefix, &args).await
    }
}

/// How often the receiver got each event id.
fn counts(receiver: &Receiver) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for r in receiver.received() {
        *out.entry(r.header("webhook-id").to_string()).or_default() += 1;
    }
    out
}

async fn wait_for(receiver: &Receiver, id: &str, limit: Duration) {
    eventually(&format!("{id} delivered"), limit, || async {
        counts(receiver).contains_key(id).then_some(())
    })
    .await;
}

async fn emit(base: &str, key: &str, body: Value) -> (u16, Value) {
    post(base, key, "/api/v1/integrations/events", body).await
}

/// (a) A worker is running before the subscription exists; the
/// subscription is created through API process A, and events emitted
/// through API process B right after A's 201 (no wait) are delivered to
/// it. B's reads of the subscription agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_made_on_one_api_replica_is_matched_by_a_worker_started_before_it() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let c = Cluster::new("repsub");
    let receiver = Receiver::start(200).await;
    let worker = c.start("worker", "worker").await;
    let a = c.start("api", "api-a").await;
    let b = c.start("api", "api-b").await;

    // The tenant and its subscription, through A only.
    let (key, _secret) = tenant(&a.base, "acme", &receiver).await;
    let mut ids = HashSet::new();
    for i in 0..5 {
        let (status, event) = emit(
            &b.base,
            &key,
            json!({ "event_type": "work_order.completed", "payload": { "i": i } }),
        )
        .await;
        assert_eq!(status, 202, "{event}");
        ids.insert(event["id"].as_str().unwrap().to_string());
    }
    eventually(
        "every event emitted through B delivered",
        Duration::from_secs(60),
        || async {
            let got = counts(&receiver);
            ids.iter().all(|id| got.contains_key(id)).then_some(())
        },
    )
    .await;
    let subs = get(&b.base, &key, "/api/v1/portal/webhooks").await;
    assert_eq!(subs["data"].as_array().unwrap().len(), 1, "{subs}");

    // A second subscription, made through B, gets events emitted through A.
    let second = Receiver::start(200).await;
    let (status, sub) = post(
        &b.base,
        &key,
        "/api/v1/portal/webhooks/subscribe",
        json!({ "url": second.url, "event_types": ["invoice.paid"] }),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    let (status, event) = emit(
        &a.base,
        &key,
        json!({ "event_type": "invoice.paid", "payload": {} }),
    )
    .await;
    assert_eq!(status, 202, "{event}");
    wait_for(
        &second,
        event["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    for p in [worker, a, b] {
        p.kill9().await;
    }
}

/// (b) A schema registered through API process A is enforced by API
/// process B: B accepts an invalid payload before the registration and,
/// polled after it, refuses one within a bounded wait (the replicas check
/// the store's catalogue version every 500 ms). B then serves the schema,
/// accepts valid payloads and keeps refusing invalid ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_registered_on_one_api_replica_is_enforced_by_another() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let c = Cluster::new("repschema");
    let receiver = Receiver::start(200).await;
    let a = c.start("api", "api-a").await;
    let b = c.start("api", "api-b").await;
    let (key, _secret) = tenant(&a.base, "acme", &receiver).await;
    let invalid =
        json!({ "event_type": "work_order.completed", "payload": { "wo": "not a number" } });
    let (status, body) = emit(&b.base, &key, invalid.clone()).await;
    assert_eq!(status, 202, "unregistered types pass: {body}");

    let schema = json!({
        "type": "object",
        "required": ["wo"],
        "properties": { "wo": { "type": "integer" } }
    });
    let r = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/integrations/event-types/work_order.completed",
            a.base
        ))
        .bearer_auth(&key)
        .json(&json!({ "schema_version": 1, "schema": schema }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let registered = tokio::time::Instant::now();
    let refused = eventually(
        "B refuses a payload that violates the schema registered on A",
        Duration::from_secs(20),
        || async {
            let (status, body) = emit(&b.base, &key, invalid.clone()).await;
            match status {
                422 => Some(body),
                202 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    None
                }
                other => panic!("unexpected {other}: {body}"),
            }
        },
    )
    .await;
    let took = registered.elapsed();
    println!("API replica B enforced the schema registered on A after {took:?}");
    assert!(
        refused.to_string().contains("schema"),
        "a schema violation: {refused}"
    );
    // Within about a second, with room for a loaded two-core machine.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let types = get(
        &b.base,
        &key,
        "/api/v1/integrations/event-types/work_order.completed",
    )
    .await;
    assert!(types.to_string().contains("\"required\""), "{types}");
    let (status, body) = emit(
        &b.base,
        &key,
        json!({ "event_type": "work_order.completed", "payload": { "wo": 7 } }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = emit(&b.base, &key, invalid).await;
    assert_eq!(status, 422, "{body}");
    a.kill9().await;
    b.kill9().await;
}

/// A key revoked through API replica A stops authenticating at replica B
/// (which keeps a live key's grant for a second) soon after, while the
/// tenant's other key keeps working there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_api_replica_is_refused_by_another() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let c = Cluster::new("repkeys");
    let receiver = Receiver::start(200).await;
    let a = c.start("api", "api-a").await;
    let b = c.start("api", "api-b").await;
    let (first, _secret) = tenant(&a.base, "acme", &receiver).await;
    let (status, made) = post(&a.base, &first, "/api/v1/portal/api-keys", json!({})).await;
    assert_eq!(status, 201, "{made}");
    let second = made["api_key"].as_str().unwrap().to_string();
    let second_id = made["id"].as_str().unwrap().to_string();
    let webhooks = |base: &str, key: &str| {
        let request = reqwest::Client::new()
            .get(format!("{base}/api/v1/portal/webhooks"))
            .bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // B has authenticated the second key (and keeps its grant).
    assert_eq!(webhooks(&b.base, &second).await, 200);
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/portal/api-keys/{second_id}", a.base))
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(webhooks(&a.base, &second).await, 401, "A: at once");
    let revoked = tokio::time::Instant::now();
    eventually(
        "B refuses the key revoked on A",
        Duration::from_secs(20),
        || async { (webhooks(&b.base, &second).await == 401).then_some(()) },
    )
    .await;
    println!(
        "API replica B refused the key revoked on A after {:?}",
        revoked.elapsed()
    );
    assert_eq!(webhooks(&b.base, &first).await, 200, "the other key works");
    a.kill9().await;
    b.kill9().await;
}

/// (c) Two API processes race on one `(tenant, dedupe_key)`: 32 concurrent
/// emits, split across both, all answer the same event id, and the
/// receiver gets exactly one delivery. The subscription is strictly
/// ordered, so once a barrier event emitted after the race is delivered,
/// every delivery of the race has arrived (or never will).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_replicas_racing_on_one_dedupe_key_deliver_once() {
    const EMITS: usize = 32;
    const ROUNDS: usize = 3;
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let c = Cluster::new("repdedupe");
    let receiver = Receiver::start(200).await;
    let worker = c.start("worker", "worker").await;
    let a = c.start("api", "api-a").await;
    let b = c.start("api", "api-b").await;
    let (key, _secret) = tenant(&a.base, "acme", &receiver).await;
    // Replace the tenant's subscription with a strictly ordered one.
    let subs = get(&a.base, &key, "/api/v1/portal/webhooks").await;
    let old = subs["data"][0]["id"].as_str().unwrap().to_string();
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/portal/webhooks/{old}", a.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, sub) = post(
        &a.base,
        &key,
        "/api/v1/portal/webhooks/subscribe",
        json!({ "url": receiver.url, "event_types": ["work_order.*"], "ordering": "strict" }),
    )
    .await;
    assert_eq!(status, 201, "{sub}");

    let mut raced = Vec::new();
    for round in 0..ROUNDS {
        let dedupe_key = format!("race-{round}");
        let emits = (0..EMITS).map(|i| {
            let base = if i % 2 == 0 { &a.base } else { &b.base };
            let body = json!({
                "event_type": "work_order.completed",
                "dedupe_key": dedupe_key,
                "payload": { "round": round, "i": i },
            });
            let key = key.clone();
            async move { emit(base, &key, body).await }
        });
        let answers = futures::future::join_all(emits).await;
        let ids: HashSet<String> = answers
            .iter()
            .map(|(status, body)| {
                assert_eq!(*status, 202, "{body}");
                body["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "round {round}: every emit answers one event id: {ids:?}"
        );
        raced.push(ids.into_iter().next().unwrap());
    }

    let (status, barrier) = emit(
        &b.base,
        &key,
        json!({ "event_type": "work_order.barrier", "payload": {} }),
    )
    .await;
    assert_eq!(status, 202, "{barrier}");
    wait_for(
        &receiver,
        barrier["id"].as_str().unwrap(),
        Duration::from_secs(90),
    )
    .await;
    let got = counts(&receiver);
    for id in &raced {
        assert_eq!(got.get(id), Some(&1), "{id} delivered once: {got:?}");
    }
    assert_eq!(
        got.values().sum::<usize>(),
        ROUNDS + 1,
        "one delivery per raced key and the barrier, nothing else: {got:?}"
    );
    // How many events each key's race appended to the log (more than one:
    // both processes got past the dedupe check, and the store's conditional
    // claim decided).
    let topic = format!("{}.events", c.prefix);
    let records = tokio::task::spawn_blocking(move || {
        crate::cdc::read_committed(&topic, ROUNDS + 1, Duration::from_secs(1))
    })
    .await
    .unwrap();
    let appended: Vec<usize> = (0..ROUNDS)
        .map(|round| {
            let k = format!("race-{round}");
            records
                .iter()
                .filter(|(_, h)| h.get("dedupe_key") == Some(&k))
                .count()
        })
        .collect();
    assert!(appended.iter().all(|n| *n >= 1), "{appended:?}");
    println!(
        "dedupe race: {ROUNDS} rounds of {EMITS} emits over two API processes, \
         one event id and one delivery each; events appended per round: {appended:?}"
    );
    for p in [worker, a, b] {
        p.kill9().await;
    }
}

/// A relay started before a schema is registered (through an API process)
/// dead-letters, within a bounded wait, a CDC row that violates it, as an
/// API replica refuses the same payload; a valid row is still relayed and
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_enforces_a_schema_registered_on_an_api_replica() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let c = Cluster::new("repcdc");
    let receiver = Receiver::start(200).await;
    let relay = c.start("relay", "relay").await;
    let worker = c.start("worker", "worker").await;
    let a = c.start("api", "api-a").await;
    let (key, _secret) = tenant(&a.base, "acme", &receiver).await;
    let cdc_topic = format!("{}.cdc.outbox", c.prefix);
    let row = |payload: Value| {
        let id = uuid::Uuid::now_v7();
        let value = json!({
            "before": null,
            "after": {
                "id": id.to_string(),
                "tenant_id": "acme",
                "type": "work_order.completed",
                "schema_version": 1,
                "payload": payload.to_string(),
            },
            "op": "c",
        });
        (format!("evt_{}", id.simple()), value.to_string())
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", crate::kafka::BROKERS)
        .create()
        .unwrap();
    let produce = |value: String| {
        producer
            .send(
                BaseRecord::<str, str>::to(&cdc_topic)
                    .key("acme")
                    .payload(&value),
            )
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    // Before the registration a row with any payload is relayed.
    let (first, value) = row(json!({ "wo": "x" }));
    produce(value);
    wait_for(&receiver, &first, Duration::from_secs(60)).await;

    let r = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/integrations/event-types/work_order.completed",
            a.base
        ))
        .bearer_auth(&key)
        .json(&json!({ "schema_version": 1, "schema": {
            "type": "object", "required": ["wo"], "properties": { "wo": { "type": "integer" } }
        } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Rows that violate the schema until the relay dead-letters one.
    let registered = tokio::time::Instant::now();
    eventually(
        "the relay dead-letters a row violating the schema",
        Duration::from_secs(30),
        || async {
            let (_, value) = row(json!({ "wo": "x" }));
            produce(value);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let h = crate::cdc::health(&relay.base).await;
            (h["relay"]["dead_lettered"].as_u64().unwrap_or(0) >= 1).then_some(())
        },
    )
    .await;
    println!(
        "the relay enforced the schema registered on an API replica after {:?}",
        registered.elapsed()
    );
    let dlq = format!("{}.cdc.dead-letter", c.prefix);
    let letters = tokio::task::spawn_blocking(move || {
        crate::cdc::read_committed(&dlq, 1, Duration::from_secs(1))
    })
    .await
    .unwrap();
    assert!(
        letters
            .iter()
            .any(|(_, h)| h["herald-dlq-reason"].contains("does not match the schema")),
        "{letters:?}"
    );
    let (valid, value) = row(json!({ "wo": 3 }));
    produce(value);
    wait_for(&receiver, &valid, Duration::from_secs(60)).await;
    for p in [relay, worker, a] {
        p.kill9().await;
    }
}
