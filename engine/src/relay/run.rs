//! The relay's loop: the CDC topic in, the events topic out, one Kafka
//! transaction per batch with the consumed offsets (see the module above).

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
    error::KafkaResult,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    types::RDKafkaErrorCode,
    ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{map, parse, RelayStats};
use crate::{
    catalogue::Catalogue,
    config::KafkaConfig,
    gone::GoneTenants,
    log::kafka::{
        record,
        stall::{StallWatch, STALLED_AFTER, STATS_EVERY},
    },
};

/// Records per transaction, at most.
const BATCH: usize = 500;
/// How long a batch waits for more records after the first one.
const LINGER: Duration = Duration::from_millis(50);
/// Timeout of the transactional calls.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transactional call may take before the session is given up.
/// librdkafka's `send_offsets_to_transaction` can wait forever on a
/// coordinator request it never retries (its issues #5456, #5511), past
/// its own timeout; the relay would relay nothing more.
const END_WAIT: Duration = Duration::from_secs(45);

/// Where the relay reads and writes.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The Kafka settings shared with the event log.
    pub kafka: KafkaConfig,
    /// Partitions of the events topic (the event log's count).
    pub partitions: u32,
    /// The event-type catalogue rows are validated against (the process's
    /// own, which follows the shared store).
    pub catalogue: Arc<Catalogue>,
    /// Tenants deleted or being deleted: their rows are dead-lettered.
    pub gone: Arc<GoneTenants>,
}

impl RelaySettings {
    fn group(&self) -> String {
        format!("{}-relay", self.kafka.topic_prefix)
    }

    fn transactional_id(&self) -> String {
        format!("{}-relay-{}", self.kafka.topic_prefix, self.kafka.relay_id)
    }
}

/// Runs the relay until `cancel` fires, restarting its Kafka clients after
/// any error. Returns once the current batch is committed or aborted.
pub async fn run(settings: RelaySettings, stats: Arc<RelayStats>, cancel: CancellationToken) {
    if let Err(e) = ensure_topics(&settings).await {
        tracing::warn!(error = %e, "could not create the CDC topics; the relay will wait for them");
    }
    let task = tokio::task::spawn_blocking(move || {
        let mut pause = Duration::from_millis(200);
        while !cancel.is_cancelled() {
            match Session::open(&settings, stats.clone()) {
                Ok(mut session) => {
                    tracing::info!(
                        topic = %settings.kafka.cdc_topic(),
                        group = %settings.group(),
                        transactional_id = %settings.transactional_id(),
                        "CDC relay running"
                    );
                    match session.run(&cancel) {
                        Ok(Ended::Cancelled) => return,
                        Ok(Ended::Stalled) => pause = Duration::from_millis(200),
                        Err(e) => {
                            stats.aborted.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "CDC relay batch aborted; restarting from the committed offsets");
                            pause = Duration::from_millis(200);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CDC relay cannot start yet");
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
            let until = Instant::now() + pause;
            while Instant::now() < until && !cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    let _ = task.await;
}

/// Creates the CDC and dead-letter topics when missing (an existing topic
/// is left as it is).
async fn ensure_topics(settings: &RelaySettings) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(&settings.kafka)
        .create()
        .map_err(|e| e.to_string())?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let (cdc, dlq) = (
        settings.kafka.cdc_topic(),
        settings.kafka.dead_letter_topic(),
    );
    let topics = [
        NewTopic::new(
            &cdc,
            settings.partitions as i32,
            TopicReplication::Fixed(-1),
        ),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(-1)),
    ];
    for r in admin
        .create_topics(&topics, &opts)
        .await
        .map_err(|e| e.to_string())?
    {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating {name}: {code}")),
        }
    }
    Ok(())
}

fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "herald-relay")
        .set("log_level", "4");
    c
}

/// One consumer and one transactional producer; dropped on any error.
struct Session {
    settings: RelaySettings,
    consumer: BaseConsumer<Watched>,
    /// Shared with the thread of a transactional call ([`Session::bounded`]).
    producer: Arc<ThreadedProducer<DefaultProducerContext>>,
    stats: Arc<RelayStats>,
    events_topic: String,
    dlq_topic: String,
    /// Set when a transactional call did not return: the producer is busy
    /// for good, so it is not asked to abort; the next session's producer
    /// fences it.
    stuck: Cell<bool>,
}

type Failure = String;

/// Why a session ended without an error.
enum Ended {
    /// The relay was asked to stop.
    Cancelled,
    /// Its consumer stalled ([`StallWatch`]): a new session starts.
    Stalled,
}

/// The relay consumer's context: its statistics feed a stall watch, as the
/// events consumer's do (a consumer that stalled after a broker restart
/// polls for ever with no error; a new session's bootstraps afresh); and it
/// notes each rebalance, which voids the records of a batch read before it.
#[derive(Default)]
struct Watched(StallWatch, AtomicBool);

impl ClientContext for Watched {
    fn stats(&self, statistics: Statistics) {
        self.0.observe(&statistics);
    }
}

impl ConsumerContext for Watched {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.1.store(true, Ordering::SeqCst);
    }
}

impl Session {
    fn open(settings: &RelaySettings, stats: Arc<RelayStats>) -> Result<Self, Failure> {
        let consumer: BaseConsumer<Watched> = client_config(&settings.kafka)
            .set("group.id", settings.group())
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Eager: a rebalance revokes every partition and the assignment
            // that follows starts each at its committed offset, which
            // `poll_batch`'s dropping of a batch read before it relies on.
            .set("partition.assignment.strategy", "range,roundrobin")
            .set(
                "session.timeout.ms",
                settings
                    .kafka
                    .session_timeout
                    .as_millis()
                    .max(1)
                    .to_string(),
            )
            .set(
                "statistics.interval.ms",
                STATS_EVERY.as_millis().to_string(),
            )
            .create_with_context(Watched::default())
            .map_err(|e| format!("creating the relay consumer: {e}"))?;
        let producer: ThreadedProducer<DefaultProducerContext> = client_config(&settings.kafka)
            .set("transactional.id", settings.transactional_id())
            .set("transaction.timeout.ms", "30000")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()
            .map_err(|e| format!("creating the relay producer: {e}"))?;
        // Fences a previous incarnation with the same id and aborts its open transaction.
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| format!("initialising transactions: {e}"))?;
        consumer
            .subscribe(&[&settings.kafka.cdc_topic()])
            .map_err(|e| format!("subscribing to the CDC topic: {e}"))?;
        Ok(Self {
            settings: settings.clone(),
            consumer,
            producer: Arc::new(producer),
            stats,
            events_topic: settings.kafka.events_topic(),
            dlq_topic: settings.kafka.dead_letter_topic(),
            stuck: Cell::new(false),
        })
    }

    fn run(&mut self, cancel: &CancellationToken) -> Result<Ended, Failure> {
        while !cancel.is_cancelled() {
            if self.consumer.context().0.take() {
                tracing::warn!(
                    stalled_s = STALLED_AFTER.as_secs(),
                    "the CDC relay's consumer group found no coordinator, or no committed offsets, for a while; starting again with new clients"
                );
                return Ok(Ended::Stalled);
            }
            let batch = self.poll_batch()?;
            if batch.is_empty() {
                continue;
            }
            let outcome = self.relay(&batch);
            if outcome.is_err() && !self.stuck.get() {
                let _ = self.producer.abort_transaction(TXN_TIMEOUT);
            }
            self.stats.in_transaction.store(false, Ordering::SeqCst);
            self.stats.uncommitted.store(0, Ordering::SeqCst);
            outcome?;
        }
        Ok(Ended::Cancelled)
    }

    /// Reads a batch. Records read before a rebalance are dropped from it:
    /// their partitions may be another relay's now, which reads them from
    /// the committed offsets (as this one does, if they come back to it),
    /// and committing them here as well would relay them twice. A rebalance
    /// runs inside `poll` before the record it returns, so that record is
    /// of the new assignment and kept.
    fn poll_batch(&self) -> Result<Vec<BorrowedMessage<'_>>, Failure> {
        let mut batch = Vec::new();
        let mut deadline = Instant::now() + Duration::from_millis(500);
        let rebalanced = &self.consumer.context().1;
        while batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let polled = self.consumer.poll(left);
            if rebalanced.swap(false, Ordering::SeqCst) && !batch.is_empty() {
                tracing::debug!(
                    records = batch.len(),
                    "a rebalance came while a CDC batch was read: its records are read again from the committed offsets"
                );
                batch.clear();
            }
            match polled {
                None => break,
                Some(Ok(m)) => {
                    if batch.is_empty() {
                        deadline = Instant::now() + LINGER;
                    }
                    batch.push(m);
                }
                // Unknown topic before Debezium's first record, a broker hiccup:
                // librdkafka retries; a batch in hand is still committed.
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "CDC consumer");
                    if batch.is_empty() {
                        // Don't spin on an error that repeats at once.
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
        Ok(batch)
    }

    /// One transaction: the events, the dead letters and the offsets.
    fn relay(&self, batch: &[BorrowedMessage<'_>]) -> Result<(), Failure> {
        self.producer
            .begin_transaction()
            .map_err(|e| format!("beginning a transaction: {e}"))?;
        self.stats.in_transaction.store(true, Ordering::SeqCst);
        let now = OffsetDateTime::now_utc();
        let (mut relayed, mut skipped, mut dead) = (0u64, 0u64, 0u64);
        let mut offsets = TopicPartitionList::new();
        for m in batch {
            let headers: Vec<(&str, Option<&[u8]>)> = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default();
            let outcome = match parse::parse(m.payload(), &headers) {
                Ok(parse::Parsed::Row(row)) => map::to_event(*row, now)
                    .and_then(|event| {
                        map::check_schema(&event, &self.settings.catalogue)?;
                        Ok(event)
                    })
                    .map_err(|e| e.to_string())
                    .and_then(|event| {
                        if self.settings.gone.contains(&event.tenant_id) {
                            return Err(format!(
                                "tenant {} is deleted: its outbox rows are not relayed",
                                event.tenant_id
                            ));
                        }
                        Ok(Some(event))
                    }),
                Ok(parse::Parsed::Skip(_)) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(Some(event)) => {
                    let value = record::encode(&event);
                    let partition =
                        crate::log::partition_for(&event.tenant_id, self.settings.partitions);
                    self.send(
                        BaseRecord::to(&self.events_topic)
                            .partition(partition as i32)
                            .key(event.tenant_id.as_bytes())
                            .payload(&value)
                            .headers(record::headers(&event, false)),
                    )?;
                    relayed += 1;
                }
                Ok(None) => skipped += 1,
                Err(reason) => {
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        reason,
                        "CDC record dead-lettered"
                    );
                    let mut h = OwnedHeaders::new();
                    for (k, v) in &headers {
                        h = h.insert(Header { key: k, value: *v });
                    }
                    let (p, o) = (m.partition().to_string(), m.offset().to_string());
                    for (k, v) in [
                        ("herald-dlq-reason", reason.as_str()),
                        ("herald-dlq-topic", m.topic()),
                        ("herald-dlq-partition", p.as_str()),
                        ("herald-dlq-offset", o.as_str()),
                    ] {
                        h = h.insert(Header {
                            key: k,
                            value: Some(v.as_bytes()),
                        });
                    }
                    let mut rec: BaseRecord<'_, [u8], [u8]> =
                        BaseRecord::to(&self.dlq_topic).headers(h);
                    if let Some(k) = m.key() {
                        rec = rec.key(k);
                    }
                    if let Some(v) = m.payload() {
                        rec = rec.payload(v);
                    }
                    self.send(rec)?;
                    dead += 1;
                }
            }
            let next = Offset::Offset(m.offset() + 1);
            match offsets.find_partition(m.topic(), m.partition()) {
                Some(mut p) => p.set_offset(next).map_err(|e| e.to_string())?,
                None => offsets
                    .add_partition_offset(m.topic(), m.partition(), next)
                    .map_err(|e| e.to_string())?,
            }
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| "the relay consumer has no group metadata".to_string())?;
        self.bounded("adding the offsets to the transaction", move |p| {
            if crate::test_hooks::relay_commit_stuck() {
                std::thread::sleep(Duration::from_secs(24 * 3600));
            }
            p.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
        })?;
        let delay = crate::test_hooks::relay_commit_delay();
        if !delay.is_zero() {
            // Crash tests: let the records reach the broker, uncommitted.
            let _ = self.producer.flush(TXN_TIMEOUT);
        }
        self.stats
            .uncommitted
            .store(relayed + dead, Ordering::SeqCst);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.bounded("committing the transaction", |p| {
            p.commit_transaction(TXN_TIMEOUT)
        })?;
        let s = &self.stats;
        s.relayed.fetch_add(relayed, Ordering::Relaxed);
        s.skipped.fetch_add(skipped, Ordering::Relaxed);
        s.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        s.transactions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            relayed,
            skipped,
            dead_lettered = dead,
            "CDC batch committed"
        );
        Ok(())
    }

    /// Runs a transactional call on a thread of its own and waits at most
    /// [`END_WAIT`] for it. A call that does not return by then is left to
    /// its thread (a Kafka call cannot be cancelled) and fails the session:
    /// the relay starts again with new clients, from the committed offsets.
    fn bounded(
        &self,
        what: &str,
        call: impl FnOnce(&ThreadedProducer<DefaultProducerContext>) -> KafkaResult<()> + Send + 'static,
    ) -> Result<(), Failure> {
        let producer = self.producer.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("relay-txn".into())
            .spawn(move || {
                let _ = tx.send(call(&producer));
            })
            .map_err(|e| format!("{what}: no thread to run it on: {e}"))?;
        match rx.recv_timeout(END_WAIT) {
            Ok(done) => done.map_err(|e| format!("{what}: {e}")),
            Err(_) => {
                self.stuck.set(true);
                tracing::error!(
                    waited_s = END_WAIT.as_secs(),
                    "a CDC relay transaction call did not return in time; its producer is left behind and fenced by the next one"
                );
                Err(format!("{what}: no answer in {}s", END_WAIT.as_secs()))
            }
        }
    }

    /// Enqueues a record, waiting while the producer's queue is full.
    fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
        &self,
        mut rec: BaseRecord<'_, K, P>,
    ) -> Result<(), Failure> {
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("producing: {e}")),
            }
        }
    }
}
