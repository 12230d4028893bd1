//! `/metrics` of every distributed role: real `--role api`, `--role worker`
//! and `--role relay` processes on the running Kafka and Cassandra, driven
//! until each has done its work, then scraped. Every metric an alert of
//! `helm/files/alerts.yaml` uses must be produced (not merely registered at
//! zero) by the role that does that work, so an alert on a distributed
//! install has a series to fire on. `deploy/prometheus/alerts.test.yaml`
//! proves with promtool that the alerts fire on series labelled like these
//! scrapes (`job` = the role's Service).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use serde_json::json;

use crate::{
    cdc::{event_id, precreate_events_topic},
    distributed::cql_flags,
    kafka::{prefix, require_kafka, start_role, tenant, BROKER, BROKERS},
    metrics::{metric_names, parse, Sample},
    support::{eventually, HeraldProcess, Receiver},
};

async fn scrape(process: &HeraldProcess) -> Vec<Sample> {
    let r = reqwest::get(process.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200, "GET {}/metrics", process.base);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    parse(&r.text().await.unwrap())
}

/// The sum of the samples of `name` whose labels include `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Creates the CDC topic with `partitions` partitions when it is missing.
pub(crate) async fn cdc_topic(prefix: &str, partitions: i32) -> String {
    let topic = format!("{prefix}.cdc.outbox");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            [&NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(-1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    // A relay's subscription may have created it already.
    assert!(
        matches!(
            created[0],
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
        ),
        "creating {topic}: {created:?}"
    );
    topic
}

/// Writes one outbox row per payload to the CDC topic, in the Outbox Event
/// Router's shape (row id in header `id`), keyed by row; returns the
/// events' ids.
pub(crate) async fn outbox_rows(topic: &str, tenant: &str, payloads: &[String]) -> Vec<String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let mut ids = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let row = uuid::Uuid::now_v7();
        let id = row.to_string();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "id",
                value: Some(id.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "tenant_id",
                value: Some(tenant),
            })
            .insert(rdkafka::message::Header {
                key: "type",
                value: Some("work_order.relayed"),
            });
        let record = FutureRecord::to(topic)
            .key(id.as_str())
            .payload(payload.as_str())
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("the outbox row is written");
        ids.push(event_id(row));
    }
    ids
}

/// Writes one good outbox row and one record that is not JSON to the CDC
/// topic; returns the good row's event id.
async fn cdc_rows(prefix: &str, tenant: &str) -> String {
    let topic = cdc_topic(prefix, 1).await;
    let id = outbox_rows(&topic, tenant, &[r#"{"relayed": true}"#.to_string()]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let bad = FutureRecord::<str, str>::to(&topic).payload("this is not JSON");
    producer
        .send(bad, Duration::from_secs(10))
        .await
        .expect("the bad row is written");
    id.into_iter().next().unwrap()
}

/// Which role must produce each metric the alerts use; a new alert on a
/// new metric has to be added here (the test fails until it is).
const PRODUCED_BY: &[(&str, &str)] = &[
    ("herald_delivery_attempts_total", "worker"),
    ("herald_deliveries_total", "worker"),
    ("herald_retry_backlog_deliveries", "worker"),
    ("herald_consumer_lag_records", "worker"),
    ("herald_circuit_breakers", "worker"),
    ("herald_relay_dead_letters_total", "relay"),
    ("herald_http_requests_total", "api"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_serves_metrics_and_every_alert_series_comes_from_the_role_doing_the_work() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("rolemetrics");
    let prefix = prefix("rolemetrics");
    precreate_events_topic(&prefix).await;
    let tmp = tempfile::tempdir().unwrap();
    // One retry an hour after the first: a failing delivery stays in the
    // schedule (the backlog); two failures open its endpoint's circuit.
    let mut flags = cql_flags(&cql.keyspace);
    flags.extend(["--retry-schedule", "1s,1h", "--breaker-failures", "2"].map(String::from));
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    // One at a time: the first creates the keyspace and its tables.
    let api = start_role("api", &tmp.path().join("api"), &prefix, &args).await;
    let worker = start_role("worker", &tmp.path().join("worker"), &prefix, &args).await;
    let relay = start_role("relay", &tmp.path().join("relay"), &prefix, &args).await;

    let good = Receiver::start(200).await;
    let failing = Receiver::start(500).await;
    let gone = Receiver::start(410).await;
    let (key, _secret) = tenant(&api.base, "acme", &good).await;
    for receiver in [&failing, &gone] {
        let (status, body) = api
            .post(
                &key,
                "/api/v1/portal/webhooks/subscribe",
                json!({ "url": receiver.url, "event_types": ["work_order.*"] }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // The worker follows the store's subscriptions about once a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..3 {
        let (status, body) = api
            .post(
                &key,
                "/api/v1/integrations/events",
                json!({ "event_type": "work_order.completed", "payload": { "i": i } }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let relayed = cdc_rows(&prefix, "acme").await;

    // The worker: deliveries, a failure ratio, a dead delivery (410), an
    // open circuit and a waiting retry, and the lag of every partition.
    let worker_samples = eventually(
        "the worker's delivery, breaker, backlog and lag series",
        Duration::from_secs(120),
        || async {
            let s = scrape(&worker).await;
            let lag = s
                .iter()
                .filter(|s| s.name == "herald_consumer_lag_records")
                .count();
            let open = sum(&s, "herald_circuit_breakers", &[("state", "open")])
                + sum(&s, "herald_circuit_breakers", &[("state", "half_open")]);
            let ready = sum(&s, "herald_deliveries_total", &[("outcome", "delivered")]) >= 4.0
                && sum(&s, "herald_deliveries_total", &[("outcome", "dead")]) >= 1.0
                && sum(
                    &s,
                    "herald_delivery_attempts_total",
                    &[("outcome", "failed"), ("error", "http_status")],
                ) >= 2.0
                && open >= 1.0
                && sum(&s, "herald_retry_backlog_deliveries", &[]) >= 1.0
                && lag == 6;
            ready.then_some(s)
        },
    )
    .await;
    assert!(
        good.received()
            .iter()
            .any(|r| r.header("webhook-id") == relayed),
        "the relayed row reached the subscriber"
    );
    // Lag is the group's: every event is fanned out, so at most a
    // transaction marker per partition remains.
    eventually("the lag drains", Duration::from_secs(60), || async {
        let s = scrape(&worker).await;
        (sum(&s, "herald_consumer_lag_records", &[]) <= 6.0).then_some(())
    })
    .await;

    let relay_samples = eventually("the relay's counters", Duration::from_secs(60), || async {
        let s = scrape(&relay).await;
        let ready = sum(&s, "herald_relay_records_total", &[]) >= 1.0
            && sum(&s, "herald_relay_dead_letters_total", &[]) >= 1.0
            && sum(&s, "herald_events_ingested_total", &[("source", "cdc")]) >= 1.0;
        ready.then_some(s)
    })
    .await;
    let api_samples = scrape(&api).await;
    assert!(
        sum(
            &api_samples,
            "herald_http_requests_total",
            &[
                ("route", "/api/v1/integrations/events"),
                ("method", "POST"),
                ("status", "2xx")
            ]
        ) >= 3.0
    );
    assert!(
        sum(
            &api_samples,
            "herald_events_ingested_total",
            &[("source", "api")]
        ) >= 3.0
    );

    // Each series comes from the role doing the work, not from every process:
    // the lag and backlog only from workers, deliveries never from the others.
    for (role, samples) in [("api", &api_samples), ("relay", &relay_samples)] {
        assert!(
            !samples
                .iter()
                .any(|s| s.name == "herald_consumer_lag_records"),
            "{role} exports consumer lag"
        );
        assert_eq!(
            sum(samples, "herald_delivery_attempts_total", &[]),
            0.0,
            "{role} delivers nothing"
        );
    }
    assert_eq!(sum(&relay_samples, "herald_http_requests_total", &[]), 0.0);

    // Every metric an alert uses is produced by the role PRODUCED_BY names.
    let by_role: BTreeMap<&str, &Vec<Sample>> = [
        ("api", &api_samples),
        ("worker", &worker_samples),
        ("relay", &relay_samples),
    ]
    .into();
    let alerts = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/files/alerts.yaml"),
    )
    .unwrap();
    let mut checked = 0;
    for rule in alerts.split("- alert: ").skip(1) {
        let name = rule.lines().next().unwrap().trim();
        let expr = rule.split("labels:").next().unwrap();
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{name} uses no herald_ metric");
        for metric in used {
            let role = PRODUCED_BY
                .iter()
                .find(|(m, _)| *m == metric)
                .map(|(_, r)| *r)
                .unwrap_or_else(|| panic!("{name} uses {metric}: add it to PRODUCED_BY"));
            let samples = by_role[role];
            // A count above zero; for the lag gauge (which may be 0), a
            // partition's series, which only the lag refresher sets.
            let produced = samples.iter().any(|s| {
                s.name == metric && (s.value != 0.0 || s.labels.contains_key("partition"))
            });
            assert!(
                produced,
                "{name} uses {metric}, which the {role} role does not produce:\n{:?}",
                samples
                    .iter()
                    .filter(|s| s.name == metric)
                    .collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} alert metrics checked");
    for p in [api, worker, relay] {
        p.kill9().await;
    }
}
