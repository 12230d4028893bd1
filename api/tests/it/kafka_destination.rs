//! Kafka destinations against the real broker (127.0.0.1:9092): a
//! `kafka://` subscription gets each event as a record a plain consumer
//! reads back (key, value, signed headers), with the delivery log, retries
//! and replay of an HTTP delivery; bad URLs and settings get 422, and the
//! SASL password is never shown or stored in the clear. Over TLS (the
//! broker's SSL listener on 9094, SASL_SSL on 9095): the broker's
//! certificate is verified against the subscription's CA, and SASL
//! credentials are checked by the broker.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::{BorrowedMessage, Headers},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::{json, Value};
use standardwebhooks::Webhook;

use crate::{
    kafka::{require_kafka, BROKER, BROKERS},
    support::{eventually, files_containing, Herald},
};

const WAIT: Duration = Duration::from_secs(60);

/// The test broker's TLS listeners (`scripts/services.d/kafka.sh`).
const SSL_BROKER: &str = "127.0.0.1:9094";
const SASL_SSL_BROKER: &str = "127.0.0.1:9095";
/// The SASL user the broker knows on its SASL_SSL listener.
const SASL_USER: (&str, &str) = ("herald", "herald-kafka-secret");

/// The authority to trust for the test broker's certificate (its
/// self-signed certificate, made by `scripts/services up kafka`).
fn broker_ca() -> String {
    let path = std::env::var_os("HERALD_TEST_KAFKA_CA").map_or_else(
        || crate::kafka::repo_root().join(".cache/services/kafka/tls/ca.pem"),
        std::path::PathBuf::from,
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the test broker's CA {}: {e} (scripts/services up kafka makes it)",
            path.display()
        )
    })
}

/// A record as the test reads it.
#[derive(Debug)]
struct Record {
    key: String,
    value: Vec<u8>,
    headers: HeaderMap,
}

impl Record {
    fn of(m: &BorrowedMessage<'_>) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                headers.append(
                    HeaderName::try_from(h.key).unwrap(),
                    HeaderValue::from_bytes(h.value.unwrap_or_default()).unwrap(),
                );
            }
        }
        Self {
            key: String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap(),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
}

/// Creates a one-partition topic with a unique name.
async fn topic(test: &str) -> String {
    require_kafka().await;
    let name = format!("herald-dest-{test}-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let new = NewTopic::new(&name, 1, TopicReplication::Fixed(1));
    let r = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok(), "creating {name}: {r:?}");
    name
}

/// Reads `n` records of `topic` from the beginning with a plain consumer.
async fn read(topic: &str, n: usize) -> Vec<Record> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} of {n} records of {topic}",
                out.len()
            );
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                out.push(Record::of(&m.unwrap()));
            }
        }
        out
    })
    .await
    .unwrap()
}

async fn emit(herald: &Herald, key: &str, dedupe: Option<&str>, n: u32) -> Value {
    let (status, event) = herald
        .post(
            key,
            "/api/v1/integrations/events",
            json!({ "event_type": "inventory.moved", "payload": { "n": n }, "dedupe_key": dedupe }),
        )
        .await;
    assert_eq!(status, 202, "{event}");
    event
}

/// The delivery log of `event` once it holds a record matching `done`.
async fn logs_until(
    herald: &Herald,
    key: &str,
    event: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    eventually("the delivery log", WAIT, || async {
        let logs = herald.logs(key, &format!("event_id={event}")).await;
        done(&logs).then_some(logs)
    })
    .await
}

#[tokio::test]
async fn records_carry_the_webhook_body_key_and_signed_headers_and_replay_again() {
    let _shared = BROKER.read().await;
    let topic = topic("records").await;
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let (status, sub) = herald
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({
                "url": format!("kafka://{BROKERS}/{topic}"),
                "event_types": ["inventory.*"],
                "headers": { "x-team": "stock" },
                "kafka": { "security_protocol": "plaintext" },
            }),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let secret = sub["secret"].as_str().unwrap();
    let with_key = emit(&herald, &key, Some("move-7"), 1).await;
    let without = emit(&herald, &key, None, 2).await;

    let records = read(&topic, 2).await;
    let webhook = Webhook::new(secret).unwrap();
    for (record, event, want_key) in [
        (&records[0], &with_key, "move-7"),
        (&records[1], &without, without["id"].as_str().unwrap()),
    ] {
        let id = event["id"].as_str().unwrap();
        assert_eq!(record.key, want_key);
        assert!(
            webhook.verify(&record.value, &record.headers).is_ok(),
            "the signature verifies over the value with the subscription's secret: {record:?}"
        );
        let body: Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(body["id"], id);
        assert_eq!(body["type"], "inventory.moved");
        assert_eq!(body["data"], event["payload"]);
        assert_eq!(record.header("webhook-id"), id);
        assert_eq!(record.header("herald-event-type"), "inventory.moved");
        assert_eq!(record.header("herald-subscription-id"), sub["id"]);
        assert_eq!(record.header("herald-attempt"), "1");
        assert_eq!(record.header("x-team"), "stock");
        assert_eq!(record.header("content-type"), "application/json");
        let logs = logs_until(&herald, &key, id, |l| {
            l.iter().any(|r| r["outcome"] == "delivered")
        })
        .await;
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0]["trigger"], "initial");
        assert_eq!(logs[0]["status_code"], Value::Null, "{logs:?}");
        assert!(
            logs[0]["response_body"]
                .as_str()
                .unwrap()
                .contains(&format!("topic {topic}, partition 0, offset")),
            "{logs:?}"
        );
    }
    assert_eq!(
        records[0].header("herald-dedupe-key"),
        "move-7",
        "the dedupe key header"
    );

    // A replay produces the record again, with the same webhook-id.
    let id = with_key["id"].as_str().unwrap();
    let (status, replay) = herald
        .post(
            &key,
            &format!("/api/v1/integrations/events/{id}/replay"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    let records = read(&topic, 3).await;
    assert_eq!(records[2].key, "move-7");
    assert_eq!(records[2].header("webhook-id"), id);
    assert_eq!(records[2].value, records[0].value);
    assert!(webhook
        .verify(&records[2].value, &records[2].headers)
        .is_ok());
    logs_until(&herald, &key, id, |l| {
        l.iter()
            .any(|r| r["trigger"] == "replay" && r["outcome"] == "delivered")
    })
    .await;
    herald.stop().await;
}

#[tokio::test]
async fn a_strict_subscription_produces_records_in_event_order() {
    let _shared = BROKER.read().await;
    let topic = topic("strict").await;
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let (status, sub) = herald
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({
                "url": format!("kafka://{BROKERS}/{topic}"),
                "event_types": ["inventory.moved"],
                "ordering": "strict",
            }),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(emit(&herald, &key, None, n).await["id"].clone());
    }
    let records = read(&topic, 8).await;
    let got: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.value).unwrap()["id"].clone())
        .collect();
    assert_eq!(got, ids, "one record per event, in event order");
    herald.stop().await;
}

/// Records reach a topic through the SSL and the SASL_SSL listener, each
/// with the broker's CA; without the CA (the system's authorities do not
/// know the broker) and with a wrong SASL password, attempts fail and no
/// record is written.
#[tokio::test]
async fn tls_destinations_verify_the_broker_and_sasl_ssl_authenticates() {
    let _shared = BROKER.read().await;
    let ca = broker_ca();
    let (tls_topic, sasl_topic) = (topic("tls").await, topic("sasl-ssl").await);
    let refused_topic = topic("tls-refused").await;
    let herald = Herald::start_with(|c| c.retry_schedule = "1h".parse().unwrap()).await;
    let key = herald.tenant("acme").await;
    let subscribe = |broker: &str, topic: &str, kafka: Value| {
        let body = json!({
            "url": format!("kafka://{broker}/{topic}"),
            "event_types": ["inventory.*"],
            "timeout_seconds": 5,
            "kafka": kafka,
        });
        let herald = &herald;
        let key = &key;
        async move {
            let (status, sub) = herald
                .post(key, "/api/v1/portal/webhooks/subscribe", body)
                .await;
            assert_eq!(status, 201, "{sub}");
            sub["id"].as_str().unwrap().to_string()
        }
    };
    let (user, password) = SASL_USER;
    let sasl = |password: &str| {
        json!({ "security_protocol": "sasl_ssl", "sasl_mechanism": "PLAIN",
                "username": user, "password": password, "ca_pem": ca })
    };
    let tls = subscribe(
        SSL_BROKER,
        &tls_topic,
        json!({ "security_protocol": "ssl", "ca_pem": ca }),
    )
    .await;
    let sasl_ssl = subscribe(SASL_SSL_BROKER, &sasl_topic, sasl(password)).await;
    let untrusted = subscribe(
        SSL_BROKER,
        &refused_topic,
        json!({ "security_protocol": "ssl" }),
    )
    .await;
    let wrong_password = subscribe(SASL_SSL_BROKER, &refused_topic, sasl("not-the-password")).await;
    let (status, shown) = herald
        .get(&key, &format!("/api/v1/portal/webhooks/{tls}"))
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["kafka"]["ca_pem"], ca.as_str(), "the CA is shown");

    let event = emit(&herald, &key, None, 1).await;
    let id = event["id"].as_str().unwrap();
    for topic in [&tls_topic, &sasl_topic] {
        let records = read(topic, 1).await;
        assert_eq!(records[0].header("webhook-id"), id, "{topic}");
    }
    let logs = logs_until(&herald, &key, id, |l| l.len() >= 4).await;
    let attempt = |sub: &str| {
        logs.iter()
            .find(|l| l["subscription_id"] == sub)
            .unwrap_or_else(|| panic!("no attempt of {sub}: {logs:?}"))
    };
    for sub in [&tls, &sasl_ssl] {
        assert_eq!(attempt(sub)["outcome"], "delivered", "{logs:?}");
    }
    for sub in [&untrusted, &wrong_password] {
        let a = attempt(sub);
        println!("{}: {} {}", a["url"], a["error"], a["error_message"]);
        assert_eq!(a["outcome"], "failed", "{a}");
    }
    // Each failure says why, from librdkafka's connection errors.
    let untrusted = attempt(&untrusted);
    assert_eq!(untrusted["error"], "tls", "{untrusted}");
    assert!(
        untrusted["error_message"]
            .as_str()
            .unwrap()
            .contains("certificate verify failed"),
        "{untrusted}"
    );
    let refused = attempt(&wrong_password);
    assert!(
        refused["error_message"]
            .as_str()
            .unwrap()
            .contains("Authentication failed"),
        "{refused}"
    );
    // Both refused attempts are over: nothing reached their topic.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(&refused_topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        high - low,
        0,
        "no record through an untrusted or unauthenticated connection"
    );
    herald.stop().await;
}

#[tokio::test]
async fn a_dead_broker_records_failed_attempts_and_schedules_retries() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let (status, sub) = herald
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            json!({
                // Nothing listens on port 1.
                "url": "kafka://127.0.0.1:1/never",
                "event_types": ["inventory.*"],
                "timeout_seconds": 1,
            }),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let event = emit(&herald, &key, None, 1).await;
    let id = event["id"].as_str().unwrap();
    let logs = logs_until(&herald, &key, id, |l| l.len() >= 2).await;
    let first = logs.iter().find(|r| r["attempt"] == 1).unwrap();
    assert_eq!(first["outcome"], "failed", "{logs:?}");
    assert_eq!(first["error"], "timeout", "{logs:?}");
    assert!(first["next_attempt_at"].is_string(), "{logs:?}");
    let message = first["error_message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1:1") && message.contains("did not acknowledge"),
        "{message}"
    );
    assert!(
        logs.iter()
            .any(|r| r["attempt"] == 2 && r["trigger"] == "retry"),
        "{logs:?}"
    );
    herald.stop().await;
}

#[tokio::test]
async fn bad_kafka_urls_and_settings_get_422_and_the_password_is_never_shown() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let subscribe =
        |url: &str, kafka: Value| json!({ "url": url, "event_types": ["a.b"], "kafka": kafka });
    for (body, says) in [
        (subscribe("kafka://127.0.0.1:9092", Value::Null), "no topic"),
        (
            subscribe("kafka://127.0.0.1:9092/", Value::Null),
            "no topic",
        ),
        (subscribe("kafka://127.0.0.1/t", Value::Null), "host:port"),
        (subscribe("kafka://127.0.0.1:99999/t", Value::Null), "port"),
        (
            subscribe("kafka://127.0.0.1:9092/a b", Value::Null),
            "invalid topic",
        ),
        (
            subscribe("kafka://127.0.0.1:9092/a/b", Value::Null),
            "invalid topic",
        ),
        (
            subscribe("kafka://u:p@127.0.0.1:9092/t", Value::Null),
            "credentials",
        ),
        // The SSRF policy: only 127.0.0.0/8 is allowed in tests.
        (
            subscribe("kafka://10.0.0.1:9092/t", Value::Null),
            "not a public address",
        ),
        (
            subscribe("kafka://127.0.0.1:9092,169.254.169.254:9092/t", Value::Null),
            "not a public address",
        ),
        (
            subscribe(
                "kafka://127.0.0.1:9092/t",
                json!({ "security_protocol": "sasl_plaintext", "username": "u" }),
            ),
            "needs a username and a password",
        ),
        (
            subscribe(
                "https://example.com/hook",
                json!({ "security_protocol": "plaintext" }),
            ),
            "only to a kafka:// url",
        ),
        (
            subscribe(
                "kafka://127.0.0.1:9092/t",
                json!({ "security_protocol": "tls" }),
            ),
            "security_protocol",
        ),
        (
            subscribe(
                "kafka://127.0.0.1:9092/t",
                json!({ "security_protocol": "ssl", "ca_pem": "not a certificate" }),
            ),
            "ca_pem holds no certificate",
        ),
        (
            subscribe(
                "kafka://127.0.0.1:9092/t",
                json!({ "ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" }),
            ),
            "ca_pem needs security_protocol",
        ),
    ] {
        let r = herald
            .http
            .post(herald.url("/api/v1/portal/webhooks/subscribe"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        let problem: Value = r.json().await.unwrap();
        assert!(
            problem.to_string().contains(says),
            "{body}: {problem} should say {says:?}"
        );
    }
    let (_, list) = herald.get(&key, "/api/v1/portal/webhooks").await;
    assert_eq!(list["data"], json!([]), "nothing was created");

    const PASSWORD: &str = "kafka-pass-Zr81mQ";
    let (status, sub) = herald
        .post(
            &key,
            "/api/v1/portal/webhooks/subscribe",
            subscribe(
                "kafka://127.0.0.1:9092/t",
                json!({ "security_protocol": "sasl_plaintext", "sasl_mechanism": "PLAIN",
                        "username": "herald", "password": PASSWORD }),
            ),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["kafka"]["username"], "herald");
    assert_eq!(sub["kafka"]["password_set"], true);
    let id = sub["id"].as_str().unwrap();
    let path = format!("/api/v1/portal/webhooks/{id}");
    let mut answers = vec![sub.clone()];
    answers.push(herald.get(&key, &path).await.1);
    answers.push(herald.get(&key, "/api/v1/portal/webhooks").await.1);
    let (status, patched) = herald
        .call(
            "PATCH",
            &key,
            &path,
            Some(json!({ "description": "moved" })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    answers.push(patched);
    for answer in &answers {
        let text = answer.to_string();
        assert!(text.contains(id), "{text}");
        assert!(
            !text.contains(PASSWORD),
            "the password is never shown: {text}"
        );
    }
    // A PATCH that would leave a SASL protocol without a password is refused.
    let (status, problem) = herald
        .call(
            "PATCH",
            &key,
            &path,
            Some(json!({ "kafka": { "security_protocol": "sasl_ssl" } })),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let dir = herald.stop().await;
    assert_eq!(
        files_containing(dir.path(), PASSWORD.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "the password is sealed at rest"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_kafka_settings() {
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let (status, doc) = herald.get(&key, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let schemas = &doc["components"]["schemas"];
    let input = &schemas["KafkaSettingsInput"]["properties"];
    for field in [
        "security_protocol",
        "sasl_mechanism",
        "username",
        "password",
        "ca_pem",
    ] {
        assert!(input[field].is_object(), "{field}: {input}");
    }
    assert_eq!(
        schemas["SecurityProtocol"]["enum"],
        json!(["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])
    );
    assert_eq!(
        schemas["SaslMechanism"]["enum"],
        json!(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    );
    assert!(schemas["Subscribe"]["properties"]["kafka"].is_object());
    assert!(schemas["UpdateSubscription"]["properties"]["kafka"].is_object());
    let view = &schemas["SubscriptionView"]["properties"]["kafka"];
    assert!(view.is_object(), "{view}");
    let shown = &schemas["KafkaSettingsView"]["properties"];
    assert!(
        shown["password_set"].is_object()
            && shown["password"].is_null()
            && shown["ca_pem"].is_object(),
        "{shown}"
    );
    herald.stop().await;
}
