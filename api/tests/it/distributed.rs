//! Distributed mode end to end: `herald` processes on a real Kafka broker
//! (the event log) and a real Cassandra (the CQL store), and nothing on the
//! node's local disk that a restart on a fresh disk would miss.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::Duration,
};

use serde_json::{json, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{
    kafka::{
        all_delivered, prefix, require_kafka, start_role, tenant, TwoWorkersUnderLoad, BROKER,
    },
    support::{eventually, HeraldProcess, Receiver},
};

/// Kafka + Cassandra flags for a process of this test (the CQL store needs
/// the secret-encryption key, the same for every process).
pub(crate) fn cql_flags(keyspace: &str) -> Vec<String> {
    let nodes = crate::cql::nodes().join(",");
    [
        "--scylla-nodes",
        &nodes,
        "--scylla-keyspace",
        keyspace,
        "--secret-encryption-key",
        crate::cql::TEST_KEY,
    ]
    .map(String::from)
    .to_vec()
}

async fn start(dir: &Path, prefix: &str, flags: &[String], extra: &[&str]) -> HeraldProcess {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    start_role("all", dir, prefix, &args).await
}

pub(crate) async fn get(base: &str, key: &str, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

pub(crate) async fn post(base: &str, key: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Every page of a list endpoint (`data` + `next_cursor`).
async fn all_pages(base: &str, key: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &cursor {
            Some(c) => format!("{path}{sep}limit=500&cursor={c}"),
            None => format!("{path}{sep}limit=500"),
        };
        let page = get(base, key, &page_path).await;
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Emits `n` events in batches of 1,000 (a refused batch again, until it is
/// taken); returns their ids.
async fn emit_batches(base: &str, key: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(1000) {
        let events: Vec<Value> = (start..n.min(start + 1000))
            .map(|i| json!({ "event_type": "work_order.completed", "payload": { "i": i } }))
            .collect();
        // Refused past the backlog's bound (503): sent again, as a client
        // should, until delivery has caught up.
        let body = eventually("the batch accepted", Duration::from_secs(120), || async {
            let (status, body) = post(
                base,
                key,
                "/api/v1/integrations/events/batch",
                json!({ "events": events }),
            )
            .await;
            match status {
                202 => Some(body),
                503 => None,
                _ => panic!("{status} {body}"),
            }
        })
        .await;
        ids.extend(
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
    }
    ids
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// How often the receiver got each event, counting from its `from`-th request.
fn received_since(receiver: &Receiver, from: usize) -> HashMap<String, usize> {
    let mut per_event = HashMap::new();
    for r in receiver.received().iter().skip(from) {
        *per_event
            .entry(r.header("webhook-id").to_string())
            .or_default() += 1;
    }
    per_event
}

/// Waits until recovery job `id` is completed and every replay it
/// scheduled is done; returns the job. Progress-aware: a loaded machine
/// gets time as long as the job's counts keep moving; a stall of `limit`
/// fails, showing the job.
async fn job_completed(base: &str, key: &str, id: &str, limit: Duration) -> Value {
    let mut last = (Value::Null, tokio::time::Instant::now());
    loop {
        let job = get(base, key, &format!("/api/v1/portal/recoveries/{id}")).await;
        if job["status"] == "completed" && job["done"] == job["scheduled"] {
            return job;
        }
        let progress = json!([job["status"], job["scheduled"], job["done"]]);
        if progress != last.0 {
            last = (progress, tokio::time::Instant::now());
        } else if last.1.elapsed() > limit {
            panic!("the recovery job made no progress for {limit:?}: {job}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every event of `ids` arrived again after the receiver's
/// `from`-th request; returns the counts since then.
async fn all_again(
    receiver: &Receiver,
    from: usize,
    ids: &HashSet<String>,
    limit: Duration,
) -> HashMap<String, usize> {
    eventually("every event replayed", limit, || async {
        let again = received_since(receiver, from);
        ids.iter().all(|id| again.contains_key(id)).then_some(again)
    })
    .await
}

/// A process on Kafka + Cassandra is killed; a new one on an empty data dir
/// finds the tenant, subscription, events and delivery logs, delivers new
/// events signed with the same secret, and replays a time range from the
/// Kafka log through the API (`"source": "log"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_restart_on_a_fresh_data_dir_keeps_everything() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("fresh");
    let flags = cql_flags(&cql.keyspace);
    let prefix = prefix("fresh");
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(200).await;
    let since = OffsetDateTime::now_utc() - Duration::from_secs(1);

    let first = start(&tmp.path().join("disk-1"), &prefix, &flags, &[]).await;
    let (key, secret) = tenant(&first.base, "acme", &receiver).await;
    let ids: HashSet<String> = emit_batches(&first.base, &key, 50)
        .await
        .into_iter()
        .collect();
    let secrets = [secret];
    all_delivered(
        &receiver,
        &ids,
        &secrets,
        &tmp.path().join("disk-1"),
        Duration::from_secs(120),
    )
    .await;
    // Every attempt is logged before the process goes.
    eventually("50 delivery logs", Duration::from_secs(30), || async {
        let logs = all_pages(&first.base, &key, "/api/v1/integrations/webhooks").await;
        (logs.len() >= 50).then_some(())
    })
    .await;
    first.kill9().await;

    // A new node: same Kafka topic and group, same keyspace, an empty disk.
    let second = start(&tmp.path().join("disk-2"), &prefix, &flags, &[]).await;
    let subs = all_pages(&second.base, &key, "/api/v1/portal/webhooks").await;
    assert_eq!(subs.len(), 1, "the subscription is in Cassandra");
    assert_eq!(subs[0]["url"], receiver.url.as_str());
    let events = all_pages(&second.base, &key, "/api/v1/integrations/events").await;
    let listed: HashSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ids, "every event is listed from Cassandra");
    let logs = all_pages(&second.base, &key, "/api/v1/integrations/webhooks").await;
    let logged: HashSet<String> = logs
        .iter()
        .filter(|l| l["outcome"] == "delivered")
        .map(|l| l["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logged, ids, "every delivery log is in Cassandra");

    // New events reach the old subscription, signed with its secret.
    let before = receiver.received().len();
    let more: HashSet<String> = emit_batches(&second.base, &key, 20)
        .await
        .into_iter()
        .collect();
    all_delivered(
        &receiver,
        &more,
        &secrets,
        &tmp.path().join("disk-2"),
        Duration::from_secs(120),
    )
    .await;
    let emitted: HashSet<String> = ids.union(&more).cloned().collect();

    // Replay the range from the Kafka log: every event of both nodes again.
    let replayed_from = receiver.received().len();
    let sub_id = subs[0]["id"].as_str().unwrap();
    let (status, job) = post(
        &second.base,
        &key,
        &format!("/api/v1/portal/webhooks/{sub_id}/recover"),
        json!({
            "since": rfc3339(since),
            "until": rfc3339(OffsetDateTime::now_utc() + Duration::from_secs(60)),
            "source": "log",
        }),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["source"], "log");
    assert!(
        job["total"].as_u64().unwrap() >= 70,
        "total counts the range's records: {job}"
    );
    let job_id = job["id"].as_str().unwrap();
    let job = job_completed(&second.base, &key, job_id, Duration::from_secs(120)).await;
    assert_eq!(
        job["scheduled"], 70,
        "one replay per event of the range: {job}"
    );
    all_again(&receiver, replayed_from, &emitted, Duration::from_secs(120)).await;
    let again = received_since(&receiver, before);
    assert!(
        again.keys().all(|id| emitted.contains(id)),
        "nothing outside the range is replayed"
    );
    // A bad request changes nothing: `only_failed` needs the delivery history.
    let (status, problem) = post(
        &second.base,
        &key,
        &format!("/api/v1/portal/webhooks/{sub_id}/recover"),
        json!({ "since": rfc3339(since), "until": rfc3339(OffsetDateTime::now_utc()),
                "source": "log", "only_failed": true }),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("only_failed"), "{problem}");
    second.kill9().await;
}

/// What a recovery test starts from: tenant `acme` on `herald` subscribed to
/// `receiver`, `n` events emitted, every one delivered and its attempt
/// logged (a recovery counts the latest attempt of each event). Returns the
/// API key, the event ids and the subscription id.
async fn delivered_and_logged(
    herald: &HeraldProcess,
    receiver: &Receiver,
    disk: &Path,
    n: usize,
) -> (String, HashSet<String>, String) {
    let (key, secret) = tenant(&herald.base, "acme", receiver).await;
    let ids: HashSet<String> = emit_batches(&herald.base, &key, n)
        .await
        .into_iter()
        .collect();
    assert_eq!(ids.len(), n);
    all_delivered(receiver, &ids, &[secret], disk, Duration::from_secs(240)).await;
    let sub_id = all_pages(&herald.base, &key, "/api/v1/portal/webhooks").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually("every attempt logged", Duration::from_secs(120), || async {
        let logs = all_pages(&herald.base, &key, "/api/v1/integrations/webhooks").await;
        (logs.len() >= n).then_some(())
    })
    .await;
    (key, ids, sub_id)
}

/// Recover 10,000 deliveries of one subscription on Kafka + Cassandra,
/// kill -9 the process midway, start a new one on a fresh disk: the job
/// completes and every event arrives again at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_recovery_of_10000_deliveries_survives_kill_9() {
    const N: usize = 10_000;
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("recover");
    let flags = cql_flags(&cql.keyspace);
    let prefix = prefix("recover");
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(200).await;
    // Slow enough to be killed midway, fast enough for a test.
    let rate = [
        "--recovery-rate",
        "400",
        "--max-in-flight-per-endpoint",
        "64",
    ];
    let since = OffsetDateTime::now_utc() - Duration::from_secs(1);

    let first = start(&tmp.path().join("disk-1"), &prefix, &flags, &rate).await;
    let (key, ids, sub_id) =
        delivered_and_logged(&first, &receiver, &tmp.path().join("disk-1"), N).await;
    let until = OffsetDateTime::now_utc() + Duration::from_secs(60);
    let body = json!({ "since": rfc3339(since), "until": rfc3339(until) });
    let from = receiver.received().len();
    let (status, job) = post(
        &first.base,
        &key,
        &format!("/api/v1/portal/webhooks/{sub_id}/recover"),
        body,
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(
        job["total"], N,
        "every delivered event is a candidate: {job}"
    );
    let job_id = job["id"].as_str().unwrap().to_string();
    eventually("recovery under way", Duration::from_secs(120), || async {
        (received_since(&receiver, from).len() >= N / 5).then_some(())
    })
    .await;
    first.kill9().await;
    let at_kill = received_since(&receiver, from).len();
    assert!(at_kill < N, "killed midway ({at_kill} of {N} replayed)");

    let second = start(&tmp.path().join("disk-2"), &prefix, &flags, &rate).await;
    let job = job_completed(&second.base, &key, &job_id, Duration::from_secs(300)).await;
    assert!(job["scheduled"].as_u64().unwrap() >= N as u64, "{job}");
    let replayed = all_again(&receiver, from, &ids, Duration::from_secs(240)).await;
    let duplicates: usize = replayed.values().map(|n| n - 1).sum();
    println!(
        "distributed recovery: {N} deliveries recovered, kill -9 after {at_kill} replays, \
         every event arrived again, {duplicates} duplicate replays"
    );
    second.kill9().await;
}

/// Two processes on one Kafka + Cassandra: a recovery job created on the
/// first is still running when the second starts (and finds it among the
/// unfinished jobs at once); the job is stepped under one lease at a time,
/// so every event is replayed exactly once, not once per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_recovery_is_stepped_by_one_process_at_a_time() {
    const N: usize = 3_000;
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("onelease");
    let flags = cql_flags(&cql.keyspace);
    let prefix = prefix("onelease");
    let tmp = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(200).await;
    // 3,000 replays at 150/s: about 20 s, long enough for a second process to join.
    let rate = ["--recovery-rate", "150"];
    let since = OffsetDateTime::now_utc() - Duration::from_secs(1);

    let first = start(&tmp.path().join("disk-1"), &prefix, &flags, &rate).await;
    let (key, ids, sub_id) =
        delivered_and_logged(&first, &receiver, &tmp.path().join("disk-1"), N).await;
    let from = receiver.received().len();
    let until = OffsetDateTime::now_utc() + Duration::from_secs(60);
    let (status, job) = post(
        &first.base,
        &key,
        &format!("/api/v1/portal/webhooks/{sub_id}/recover"),
        json!({ "since": rfc3339(since), "until": rfc3339(until) }),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();

    let second = start(&tmp.path().join("disk-2"), &prefix, &flags, &rate).await;
    let seen = get(
        &second.base,
        &key,
        &format!("/api/v1/portal/recoveries/{job_id}"),
    )
    .await;
    assert_eq!(
        seen["status"], "running",
        "the second process must join while the job runs (else this test shows nothing): {seen}"
    );
    let job = job_completed(&second.base, &key, &job_id, Duration::from_secs(120)).await;
    assert_eq!(job["scheduled"], N, "each event scheduled once: {job}");
    let replayed = all_again(&receiver, from, &ids, Duration::from_secs(240)).await;
    let twice: Vec<_> = replayed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {N} events replayed more than once, e.g. {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    println!("recovery with two processes: {N} events replayed, each exactly once");
    first.kill9().await;
    second.kill9().await;
}

/// kill -9 one of two workers on Kafka + Cassandra while events flow. On
/// the CQL store fan-out hands a first attempt to the shards without
/// writing it to the schedule, and keeps the event's log offset
/// uncommitted until the attempt is recorded: the deliveries the killed
/// worker held in memory come back from the log on the survivor, and every
/// acknowledged event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_kill_9_of_a_worker_with_unscheduled_deliveries_loses_nothing() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("handoff");
    let flags = cql_flags(&cql.keyspace);
    let (run, w1, w2) = TwoWorkersUnderLoad::start("handoff", &flags).await;
    w1.kill9().await;
    let (acked, delivered, duplicates) = run.finish(w2).await;
    println!(
        "kafka + cql kill -9 of a worker: {acked} acknowledged, {delivered} delivered, 0 lost, \
         {duplicates} duplicate deliveries"
    );
}

/// Whether the fan-out group of the topics under `prefix` has committed
/// every partition of the events topic to its end (a transaction marker
/// aside), read from the broker (blocking).
fn fanout_caught_up(prefix: &str) -> bool {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        ClientConfig, Offset, TopicPartitionList,
    };
    let wait = Duration::from_secs(5);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", crate::kafka::BROKERS)
        .set("group.id", format!("{prefix}-fanout"))
        .create()
        .unwrap();
    let topic = format!("{prefix}.events");
    let Ok(metadata) = consumer.fetch_metadata(Some(&topic), wait) else {
        return false;
    };
    let mut partitions = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        partitions.add_partition(&topic, p.id());
    }
    let Ok(committed) = consumer.committed_offsets(partitions, wait) else {
        return false;
    };
    committed.elements().iter().all(|e| {
        let Ok((_, end)) = consumer.fetch_watermarks(&topic, e.partition(), wait) else {
            return false;
        };
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        at >= end - 1
    })
}

/// Waits until the fan-out group has committed past every event under
/// `prefix` (see [`fanout_caught_up`]).
pub async fn fanout_commits_past_every_event(prefix: &str) {
    eventually(
        "the worker commits past every event",
        Duration::from_secs(60),
        || {
            let prefix = prefix.to_string();
            async move {
                tokio::task::spawn_blocking(move || fanout_caught_up(&prefix))
                    .await
                    .unwrap()
                    .then_some(())
            }
        },
    )
    .await;
}

/// What the schedule changelog of the topics under `prefix` keeps: the
/// last record per delivery id (`None`: a tombstone), read from the broker
/// from each partition's start to its end (blocking).
fn changelog(prefix: &str) -> HashMap<String, Option<Value>> {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        ClientConfig, Message, Offset, TopicPartitionList,
    };
    let wait = Duration::from_secs(5);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", crate::kafka::BROKERS)
        .set("group.id", format!("{prefix}-test-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topic = format!("{prefix}.schedule");
    let metadata = consumer.fetch_metadata(Some(&topic), wait).unwrap();
    let mut kept = HashMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(&topic, p.id(), wait).unwrap();
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
                    let value = m.payload().map(|v| serde_json::from_slice(v).unwrap());
                    kept.insert(key, value);
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(e)) => panic!("reading the changelog: {e}"),
                None => {
                    let at = consumer.position().unwrap().elements()[0].offset();
                    if matches!(at, Offset::Offset(o) if o >= high) {
                        break;
                    }
                }
            }
        }
    }
    kept
}

/// The first logged attempt of `event` with `outcome`, once there is one.
async fn logged_attempt(
    base: &str,
    key: &str,
    event: &str,
    outcome: &str,
    limit: Duration,
) -> Value {
    let path = format!("/api/v1/integrations/webhooks?event_id={event}");
    let what = format!("a {outcome} attempt of {event}");
    eventually(&what, limit, || async {
        let logs = get(base, key, &path).await;
        logs["data"]
            .as_array()
            .and_then(|l| l.iter().find(|a| a["outcome"] == outcome).cloned())
    })
    .await
}

/// The payload numbers `rx` received (`{"n": …}`), sorted.
fn numbers_received(rx: &Receiver) -> Vec<i64> {
    let mut n: Vec<i64> = rx
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok()?["data"]["n"].as_i64())
        .collect();
    n.sort_unstable();
    n
}

/// A worker on Kafka + Cassandra schedules a retry and holds a paused
/// subscription's events, then dies (kill -9). The worker started after it
/// restores the retry from the schedule changelog and delivers it as the
/// same delivery, no earlier than it was due; delivered, it leaves a
/// tombstone. (On the CQL store a first attempt is not in the schedule:
/// its retry is kept in the changelog, with its event.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_a_retry_outlives_its_worker() {
    retry_and_held_events_outlive_their_worker(false).await;
}

/// As [`distributed_a_retry_outlives_its_worker`], then the paused
/// subscription is resumed: its held events arrive (and one emitted after).
///
/// Twice under a full suite's load the held events had not all arrived
/// 120 s after the resume. Two causes were found in the CQL store's
/// release (`store/scylla/held.rs`): it deleted the listing of a delivery
/// another worker was holding again, and it dated every row of a release
/// when the release began, so under slow compare-and-sets rows landed
/// behind the workers' read marks and waited up to a minute for their
/// pull-back (`cql_store::cql_held_deliveries_released_late_are_claimed_at_once`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_held_events_outlive_their_worker() {
    retry_and_held_events_outlive_their_worker(true).await;
}

async fn retry_and_held_events_outlive_their_worker(resume: bool) {
    const HELD: i64 = 3;
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("outlive");
    let mut flags = cql_flags(&cql.keyspace);
    flags.extend(["--retry-schedule", "5s,5s"].map(String::from));
    let prefix = prefix("outlive");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let flaky = Receiver::start(503).await;
    let held = Receiver::start(200).await;
    let barrier = Receiver::start(200).await;
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let api = start_role("api", &dir, &prefix, &args).await;
    let first = start_role("worker", &dir, &prefix, &args).await;
    let (key, _) = tenant(&api.base, "acme", &flaky).await;
    let subscribe = |url: String, types: &'static str| {
        let (base, key) = (api.base.clone(), key.clone());
        async move {
            let body = json!({ "url": url, "event_types": [types] });
            let (status, sub) = post(&base, &key, "/api/v1/portal/webhooks/subscribe", body).await;
            assert_eq!(status, 201, "{sub}");
            sub["id"].as_str().unwrap().to_string()
        }
    };
    let paused = subscribe(held.url.clone(), "order.*").await;
    subscribe(barrier.url.clone(), "barrier.sent").await;
    let path = format!("/api/v1/portal/webhooks/{paused}/pause");
    assert_eq!(post(&api.base, &key, &path, json!({})).await.0, 200);

    let emit = |event_type, n| emit_n(&api.base, &key, event_type, n);
    let retried = emit("work_order.completed", -1).await;
    for n in 0..HELD {
        emit("order.placed", n).await;
    }
    emit("barrier.sent", -2).await;
    eventually("the barrier", Duration::from_secs(60), || async {
        (barrier.received().len() == 1).then_some(())
    })
    .await;
    let wait = Duration::from_secs(60);
    let failed = logged_attempt(&api.base, &key, &retried, "failed", wait).await;
    assert!(flaky.received().is_empty());
    assert!(held.received().is_empty(), "nothing goes out while paused");
    // The retry and the held deliveries are in the schedule once fan-out
    // commits past their events: wait for that (at most a transaction
    // marker left per partition), so the next worker does not read them
    // again from the log, and the retry is the one delivery of the event.
    fanout_commits_past_every_event(&prefix).await;

    // The retry is kept in the schedule changelog, with its event (the
    // store's schedule has no row of it: fan-out handed the first attempt
    // over unscheduled).
    let id = failed["delivery_id"].as_str().unwrap().to_string();
    let kept = {
        let prefix = prefix.clone();
        tokio::task::spawn_blocking(move || changelog(&prefix))
            .await
            .unwrap()
    };
    let retry = kept[&id]
        .as_ref()
        .expect("the retry is kept, not a tombstone");
    assert_eq!(
        (&retry["attempt"], &retry["event"]["id"]),
        (&json!(2), &json!(retried))
    );

    first.kill9().await;
    flaky.set_status(200);
    // Its own data dir (and log): nothing of the first worker's disk is shared.
    let second = start_role("worker", &tmp.path().join("data-2"), &prefix, &args).await;
    // The retry, by the next worker.
    let wait = Duration::from_secs(120);
    let delivered = logged_attempt(&api.base, &key, &retried, "delivered", wait).await;
    assert_eq!(
        (&delivered["delivery_id"], &delivered["attempt"]),
        (&failed["delivery_id"], &json!(2)),
        "the retry of the failed delivery, not a new one"
    );
    assert_eq!(numbers_received(&flaky), [-1]);
    let due = OffsetDateTime::parse(failed["next_attempt_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let at = OffsetDateTime::parse(delivered["created_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(
        at >= due,
        "the retry went at {at}, before it was due at {due}"
    );

    println!(
        "retry by the next worker {} ms after it was due",
        (at - due).whole_milliseconds()
    );
    // Delivered, it leaves a tombstone: a later owner restores nothing.
    eventually(
        "the delivered retry's tombstone",
        Duration::from_secs(30),
        || {
            let (prefix, id) = (prefix.clone(), id.clone());
            async move {
                tokio::task::spawn_blocking(move || changelog(&prefix)[&id].is_none())
                    .await
                    .unwrap()
                    .then_some(())
            }
        },
    )
    .await;
    if !resume {
        second.kill9().await;
        api.kill9().await;
        return;
    }
    resume_and_receive_held(&api.base, &key, &paused, &held, HELD, tmp.path()).await;
    println!("held events received: {:?}", numbers_received(&held));
    second.kill9().await;
    api.kill9().await;
}

/// Emits `event_type` with the payload `{"n": n}`; returns the event's id.
async fn emit_n(base: &str, key: &str, event_type: &str, n: i64) -> String {
    let body = json!({ "event_type": event_type, "payload": { "n": n } });
    let (status, e) = post(base, key, "/api/v1/integrations/events", body).await;
    assert_eq!(status, 202, "{e}");
    e["id"].as_str().unwrap().to_string()
}

/// Resumes the paused subscription `paused`, emits one more `order.placed`
/// (`n` = `count`) and waits until `held` has received events 0 to `count`
/// (repeats aside). If they do not all come, fails with what did, and the
/// lines of the processes' logs (under `logs`) that tell why.
async fn resume_and_receive_held(
    base: &str,
    key: &str,
    paused: &str,
    held: &Receiver,
    count: i64,
    logs: &Path,
) {
    let path = format!("/api/v1/portal/webhooks/{paused}/resume");
    assert_eq!(post(base, key, &path, json!({})).await.0, 200);
    emit_n(base, key, "order.placed", count).await;
    let want: Vec<i64> = (0..=count).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut got = numbers_received(held);
        got.dedup();
        if got == want {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "held events received after the resume: {got:?}, not {want:?}; the logs:\n{}",
                log_lines(
                    logs,
                    &["held", "release", "WARN", "ERROR", "assign", "revok"]
                )
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every line of every `*.log` under `dir` (its subdirectories too) that
/// holds one of `words`, prefixed with its file's name.
fn log_lines(dir: &Path, words: &[&str]) -> String {
    let mut out = String::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for line in text.lines().filter(|l| words.iter().any(|w| l.contains(w))) {
                    out += &format!("{}: {line}\n", path.display());
                }
            }
        }
    }
    out
}

/// A receiver that answers 503 to the first attempt of every fifth event
/// (`{"n": …}`) and 200 otherwise, and records each request as (n, status)
/// in arrival order.
#[derive(Clone, Default)]
struct FailsEveryFifth {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(i64, u16)>>>,
}

impl FailsEveryFifth {
    async fn start() -> Self {
        use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
        async fn answer(State(s): State<FailsEveryFifth>, body: Bytes) -> StatusCode {
            let n = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["data"]["n"].as_i64());
            let Some(n) = n else {
                return StatusCode::BAD_REQUEST;
            };
            let mut seen = s.seen.lock().unwrap();
            let first = !seen.iter().any(|(m, _)| *m == n);
            let status = if n % 5 == 0 && first { 503 } else { 200 };
            seen.push((n, status));
            StatusCode::from_u16(status).unwrap()
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            ..Self::default()
        };
        let app = Router::new()
            .route("/hook", post(answer))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    fn seen(&self) -> Vec<(i64, u16)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Whether the worker logging to `log` has been assigned partitions (it
/// logs each assignment).
fn assigned(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains("partitions assigned"))
}

/// Two rebalances while events flow on Kafka + Cassandra: a second worker
/// joins, then the first leaves (SIGTERM), so every partition ends on the
/// second. A strictly ordered subscription whose receiver fails the first
/// attempt of every fifth event still gets the events one at a time, in
/// log order; a paused subscription's events, held across both
/// rebalances, all arrive once it is resumed; nothing reaches it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_a_rebalance_keeps_strict_order_and_held_events() {
    const EVENTS: i64 = 150;
    const HELD: i64 = 4;
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("rebalance");
    let mut flags = cql_flags(&cql.keyspace);
    flags.extend(["--retry-schedule".into(), ["300ms"; 30].join(",")]);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let prefix = prefix("rebalance");
    let tmp = tempfile::tempdir().unwrap();
    let strict = FailsEveryFifth::start().await;
    let held = Receiver::start(200).await;
    let barrier = Receiver::start(200).await;
    let api = start_role("api", &tmp.path().join("api"), &prefix, &args).await;
    let first = start_role("worker", &tmp.path().join("w1"), &prefix, &args).await;
    let (key, _) = tenant(&api.base, "acme", &barrier).await;
    let subscribe = |body: Value| {
        let (base, key) = (api.base.clone(), key.clone());
        async move {
            let (status, sub) = post(&base, &key, "/api/v1/portal/webhooks/subscribe", body).await;
            assert_eq!(status, 201, "{sub}");
            sub["id"].as_str().unwrap().to_string()
        }
    };
    subscribe(json!({ "url": strict.url, "event_types": ["inventory.*"], "ordering": "strict" }))
        .await;
    let paused = subscribe(json!({ "url": held.url, "event_types": ["order.*"] })).await;
    let path = format!("/api/v1/portal/webhooks/{paused}/pause");
    assert_eq!(post(&api.base, &key, &path, json!({})).await.0, 200);
    let emit = |event_type, n| emit_n(&api.base, &key, event_type, n);
    let emit_range = |from: i64, to: i64| async move {
        for n in from..to {
            emit("inventory.moved", n).await;
            if n % (EVENTS / HELD) == 0 {
                emit("order.placed", n / (EVENTS / HELD)).await;
            }
        }
    };

    emit_range(0, EVENTS / 3).await;
    eventually(
        "the first worker's deliveries",
        Duration::from_secs(60),
        || async { (!strict.seen().is_empty()).then_some(()) },
    )
    .await;
    // A second worker joins while events flow.
    let second_dir = tmp.path().join("w2");
    let second_log = second_dir.join("worker.log");
    let (second, ()) = tokio::join!(
        start_role("worker", &second_dir, &prefix, &args),
        emit_range(EVENTS / 3, 2 * EVENTS / 3),
    );
    eventually(
        "the second worker's assignment",
        Duration::from_secs(60),
        || async { assigned(&second_log).then_some(()) },
    )
    .await;
    // The first leaves while events flow: the second takes every partition.
    let (status, ()) = tokio::join!(first.terminate(), emit_range(2 * EVENTS / 3, EVENTS));
    assert!(status.success(), "the first worker exited with {status}");
    emit("work_order.completed", -1).await;
    eventually("the barrier", Duration::from_secs(120), || async {
        (barrier.received().len() == 1).then_some(())
    })
    .await;
    eventually(
        "every strictly ordered event",
        Duration::from_secs(180),
        || async {
            let done: HashSet<i64> = strict
                .seen()
                .iter()
                .filter(|(_, s)| *s == 200)
                .map(|(n, _)| *n)
                .collect();
            (done.len() == EVENTS as usize).then_some(())
        },
    )
    .await;
    assert!(held.received().is_empty(), "nothing goes out while paused");

    resume_and_receive_held(&api.base, &key, &paused, &held, HELD, tmp.path()).await;

    // One at a time, in log order: no attempt of event n before event n-1
    // succeeded, and first successes in order. (A delivery repeated after
    // a rebalance, of an event already delivered, breaks neither.)
    let seen = strict.seen();
    let failures = seen.iter().filter(|(_, s)| *s != 200).count();
    assert!(
        failures >= (EVENTS / 5) as usize,
        "every fifth event failed once: {failures}"
    );
    let mut done: HashSet<i64> = HashSet::new();
    let mut first_successes = Vec::new();
    for (n, status) in &seen {
        assert!(
            *n == 0 || done.contains(&(n - 1)),
            "event {n} was attempted before event {} succeeded: {seen:?}",
            n - 1
        );
        if *status == 200 && done.insert(*n) {
            first_successes.push(*n);
        }
    }
    assert_eq!(first_successes, (0..EVENTS).collect::<Vec<_>>());
    let repeated = seen.iter().filter(|(_, s)| *s == 200).count() - EVENTS as usize;
    println!(
        "rebalance: {EVENTS} strictly ordered events in order ({failures} failed attempts, \
         {repeated} repeated after a rebalance), {} held events delivered on resume",
        HELD + 1
    );
    second.kill9().await;
    api.kill9().await;
}

/// A deleted tenant's retry, kept in a worker's memory and changelog, is
/// forgotten when it falls due: not sent, nothing of the tenant written
/// after its purge (no dead record, which dropping it as an orphan would
/// write), and a tombstone in the changelog. A barrier of another tenant,
/// emitted once the retry was due, shows the worker went past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_a_deleted_tenants_kept_retry_is_forgotten_not_sent() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("gone_retry");
    let mut flags = cql_flags(&cql.keyspace);
    flags.extend(["--retry-schedule", "3s,3s"].map(String::from));
    let prefix = prefix("gone-retry");
    let tmp = tempfile::tempdir().unwrap();
    let flaky = Receiver::start(503).await;
    let barrier = Receiver::start(200).await;
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let herald = start_role("all", &tmp.path().join("data"), &prefix, &args).await;
    let (leaving, _) = tenant(&herald.base, "leaving", &flaky).await;
    let (staying, _) = tenant(&herald.base, "staying", &barrier).await;
    let event = emit_n(&herald.base, &leaving, "work_order.completed", 1).await;
    let failed = logged_attempt(
        &herald.base,
        &leaving,
        &event,
        "failed",
        Duration::from_secs(60),
    )
    .await;
    let id = failed["delivery_id"].as_str().unwrap().to_string();
    let read_changelog = || {
        let prefix = prefix.clone();
        async move {
            tokio::task::spawn_blocking(move || changelog(&prefix))
                .await
                .unwrap()
        }
    };
    // Recorded first, then kept (durable once its transaction commits).
    eventually(
        "the retry kept in the changelog",
        Duration::from_secs(30),
        || async {
            read_changelog()
                .await
                .get(&id)
                .is_some_and(Option::is_some)
                .then_some(())
        },
    )
    .await;

    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/admin/tenants/leaving", herald.base))
        .bearer_auth(crate::support::ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // A retry sent now would be received.
    flaky.set_status(200);
    let due = OffsetDateTime::parse(failed["next_attempt_at"].as_str().unwrap(), &Rfc3339).unwrap();
    while OffsetDateTime::now_utc() < due + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    emit_n(&herald.base, &staying, "work_order.completed", 2).await;
    eventually("the barrier", Duration::from_secs(60), || async {
        (barrier.received().len() == 1).then_some(())
    })
    .await;
    eventually("the retry's tombstone", Duration::from_secs(30), || async {
        read_changelog()
            .await
            .get(&id)
            .is_some_and(Option::is_none)
            .then_some(())
    })
    .await;
    assert!(flaky.received().is_empty(), "the retry was not sent");
    let store = herald_engine::store::scylla::ScyllaStore::connect(&cql, crate::cql::cipher())
        .await
        .unwrap();
    let logs = herald_engine::store::DeliveryLogStore::list_delivery_logs(
        &store,
        "leaving",
        &herald_engine::store::LogFilter::default(),
        10,
    )
    .await
    .unwrap();
    assert!(logs.is_empty(), "written after the purge: {logs:?}");
    herald.kill9().await;
}

/// A retry due further off than a worker keeps in memory goes to the
/// store's schedule: the first retry (3 s) is kept in the changelog; when
/// it fails too, the next one (20 min) is written to the CQL schedule and
/// forgotten in the changelog (a tombstone), and the worker's backlog gauge
/// counts it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_a_far_retry_moves_from_the_changelog_to_the_store() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("far_retry");
    let mut flags = cql_flags(&cql.keyspace);
    flags.extend(["--retry-schedule", "3s,20m"].map(String::from));
    let prefix = prefix("far-retry");
    let tmp = tempfile::tempdir().unwrap();
    let flaky = Receiver::start(503).await;
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let herald = start_role("all", &tmp.path().join("data"), &prefix, &args).await;
    let (key, _) = tenant(&herald.base, "acme", &flaky).await;
    let event = emit_n(&herald.base, &key, "work_order.completed", 1).await;
    let wait = Duration::from_secs(60);
    let first = logged_attempt(&herald.base, &key, &event, "failed", wait).await;
    let id = first["delivery_id"].as_str().unwrap().to_string();
    let read_changelog = || {
        let prefix = prefix.clone();
        async move {
            tokio::task::spawn_blocking(move || changelog(&prefix))
                .await
                .unwrap()
        }
    };
    let kept = eventually("the retry kept in the changelog", wait, || async {
        read_changelog().await.get(&id).cloned().flatten()
    })
    .await;
    assert_eq!(kept["attempt"], json!(2));

    let second = eventually("the second failure", wait, || async {
        let path = format!("/api/v1/integrations/webhooks?event_id={event}");
        let logs = get(&herald.base, &key, &path).await;
        logs["data"]
            .as_array()
            .and_then(|l| l.iter().find(|a| a["attempt"] == 2).cloned())
    })
    .await;
    assert_eq!(second["outcome"], "failed");
    let next =
        OffsetDateTime::parse(second["next_attempt_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(next - OffsetDateTime::now_utc() > Duration::from_secs(15 * 60));
    eventually(
        "the changelog forgets it",
        Duration::from_secs(30),
        || async {
            read_changelog()
                .await
                .get(&id)
                .is_some_and(Option::is_none)
                .then_some(())
        },
    )
    .await;
    eventually(
        "the store's schedule holds it",
        Duration::from_secs(30),
        || async {
            let metrics = reqwest::get(format!("{}/metrics", herald.base))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            metrics
                .lines()
                .any(|l| l == "herald_retry_backlog_deliveries 1")
                .then_some(())
        },
    )
    .await;
    herald.kill9().await;
}

/// SIGTERM of a worker while it keeps retries in the changelog: it drains
/// and exits 0 (a retry kept during the shutdown still learns how its
/// transaction ended: the changelog's flusher outlives the fan-out), and
/// the next process restores the retries and delivers every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_sigterm_while_keeping_retries_exits_and_the_next_worker_delivers_them() {
    const EVENTS: i64 = 100;
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("term_retry");
    let mut flags = cql_flags(&cql.keyspace);
    let schedule = vec!["2s"; 30].join(",");
    flags.extend(
        [
            "--retry-schedule",
            &schedule,
            // The breaker stays closed: every failure is a kept retry.
            "--breaker-failures",
            "1000000",
            "--breaker-min-requests",
            "1000000",
        ]
        .map(String::from),
    );
    let prefix = prefix("term-retry");
    let tmp = tempfile::tempdir().unwrap();
    let flaky = Receiver::start(503).await;
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first = start_role("all", &tmp.path().join("data"), &prefix, &args).await;
    let (key, _) = tenant(&first.base, "acme", &flaky).await;
    for n in 0..EVENTS {
        emit_n(&first.base, &key, "work_order.completed", n).await;
    }
    eventually("retries kept", Duration::from_secs(60), || {
        let prefix = prefix.clone();
        async move {
            let kept = tokio::task::spawn_blocking(move || changelog(&prefix))
                .await
                .unwrap();
            (kept.values().filter(|v| v.is_some()).count() >= EVENTS as usize / 2).then_some(())
        }
    })
    .await;
    let status = first.terminate().await;
    assert!(status.success(), "exit 0 on SIGTERM: {status}");

    flaky.set_status(200);
    let next = start_role("all", &tmp.path().join("data-2"), &prefix, &args).await;
    eventually(
        "every event delivered",
        Duration::from_secs(120),
        || async {
            let mut got = numbers_received(&flaky);
            got.dedup();
            (got == (0..EVENTS).collect::<Vec<_>>()).then_some(())
        },
    )
    .await;
    next.kill9().await;
}

/// A worker started with `--worker-id w1` on `args`, its data dir (and
/// log) under `dir`.
async fn start_named_worker(dir: &Path, prefix: &str, args: &[&str]) -> HeraldProcess {
    let mut args = args.to_vec();
    args.extend(["--worker-id", "w1"]);
    start_role("worker", dir, prefix, &args).await
}

/// A worker with a stable name (`--worker-id`), killed -9 and started
/// again under it, takes its partitions back at once: the session timeout
/// here (120 s) is twice what the test waits, so a delivery after the
/// restart shows that no partition waited for the dead process's session
/// to end; the retry the first process kept in the changelog is delivered
/// by the second, as the same delivery. A third process started under the
/// same name fences the second, which says so in its log, and delivers in
/// its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_a_worker_restarted_under_its_id_takes_its_partitions_back_at_once() {
    let _broker = BROKER.read().await;
    require_kafka().await;
    let _cassandra = crate::cql::shared().await;
    let cql = crate::cql::config("static_member");
    let mut flags = cql_flags(&cql.keyspace);
    flags.extend(
        [
            "--retry-schedule",
            "3s,3s",
            "--kafka-session-timeout",
            "120s",
        ]
        .map(String::from),
    );
    let prefix = prefix("static-member");
    let tmp = tempfile::tempdir().unwrap();
    let flaky = Receiver::start(503).await;
    let steady = Receiver::start(200).await;
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let api = start_role("api", &tmp.path().join("api"), &prefix, &args).await;
    let first = start_named_worker(&tmp.path().join("w-1"), &prefix, &args).await;
    let (flaky_key, _) = tenant(&api.base, "flaky", &flaky).await;
    let (key, _) = tenant(&api.base, "steady", &steady).await;
    let wait = Duration::from_secs(60);

    let retried = emit_n(&api.base, &flaky_key, "work_order.completed", -1).await;
    let failed = logged_attempt(&api.base, &flaky_key, &retried, "failed", wait).await;
    let id = failed["delivery_id"].as_str().unwrap().to_string();
    eventually("the retry kept in the changelog", wait, || {
        let (prefix, id) = (prefix.clone(), id.clone());
        async move {
            let kept = tokio::task::spawn_blocking(move || changelog(&prefix))
                .await
                .unwrap();
            kept.get(&id).is_some_and(Option::is_some).then_some(())
        }
    })
    .await;
    emit_n(&api.base, &key, "work_order.completed", 1).await;
    let delivered = |n: i64| {
        let steady = steady.clone();
        move || {
            let got = numbers_received(&steady).contains(&n);
            async move { got.then_some(()) }
        }
    };
    eventually("event 1", wait, delivered(1)).await;
    // A kill before fan-out commits past the failed event would have the
    // restarted worker read it again and deliver it twice (at least once).
    fanout_commits_past_every_event(&prefix).await;

    first.kill9().await;
    flaky.set_status(200);
    let second_dir = tmp.path().join("w-2");
    let second = start_named_worker(&second_dir, &prefix, &args).await;
    emit_n(&api.base, &key, "work_order.completed", 2).await;
    eventually(
        "event 2, from the restarted worker, before the dead one's session could end",
        wait,
        delivered(2),
    )
    .await;
    let retry = logged_attempt(&api.base, &flaky_key, &retried, "delivered", wait).await;
    assert_eq!(
        (&retry["delivery_id"], &retry["attempt"]),
        (&failed["delivery_id"], &json!(2)),
        "the kept retry, delivered by the restarted worker"
    );

    let third = start_named_worker(&tmp.path().join("w-3"), &prefix, &args).await;
    eventually("the fenced worker saying what to fix", wait, || {
        let log = std::fs::read_to_string(second_dir.join("worker.log")).unwrap_or_default();
        async move {
            log.contains("another worker runs with the same id")
                .then_some(())
        }
    })
    .await;
    emit_n(&api.base, &key, "work_order.completed", 3).await;
    eventually(
        "event 3, from the worker that fenced it",
        wait,
        delivered(3),
    )
    .await;
    assert_eq!(numbers_received(&flaky), [-1], "the retry, once");
    drop((second, third, api));
}
