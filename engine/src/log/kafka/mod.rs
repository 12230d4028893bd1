//! The distributed event log on Apache Kafka: one topic, `<prefix>.events`,
//! partitioned by tenant (DESIGN §1, §3, §4).
//!
//! What it guarantees, and how:
//! - **An append is acknowledged only when Kafka has it.** The producer is
//!   idempotent with `acks=all`; [`KafkaLog::append`] enqueues every record
//!   and returns only after the broker acknowledged each one. If any record
//!   is not acknowledged within the append timeout (broker unreachable,
//!   leader moving) the call fails with [`LogError::Unavailable`] and the API
//!   answers 503 with `Retry-After`. A failed append may still have written
//!   some records (the acknowledgement can be lost after the write); the
//!   fan-out's per-event and `(tenant, dedupe_key)` checks make a retried
//!   emit safe.
//! - **A batch is all or nothing** ([`transaction`]): [`EventLog::append_all`]
//!   appends it in one Kafka transaction, aborted on any failure, and every
//!   reader here and the fan-out consumer read `read_committed`.
//! - **Same partition as the embedded log.** Records go to the partition
//!   [`partition_for`](super::partition_for) names (CRC-32 of the tenant id),
//!   so a tenant's events keep their order; the key is the tenant id for
//!   other readers.
//! - **The value is a public contract** ([`record`]): the webhook envelope
//!   plus lineage, with id, type, schema version and dedupe key in headers.
//! - **Consumers commit only what the fan-out hands them** ([`consumer`]): the
//!   consumer group `herald-fanout` uses cooperative-sticky assignment and no
//!   auto-commit, so a rebalance or a kill -9 re-reads at most the batches
//!   whose deliveries were not yet durable.
//! - **A worker's retries live in a changelog** ([`changelog`]):
//!   `<prefix>.schedule`, compacted and co-partitioned, written in one
//!   transaction with the fan-out's offsets and restored on assignment.
//!
//! The topic is created at start when missing (partition count from the
//! configuration, replication factor the broker's default); an existing
//! topic's partition count wins.

pub mod changelog;
pub mod consumer;
pub mod record;
pub mod stall;
mod transaction;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use time::OffsetDateTime;

use super::{EventLog, LogConsumer, LogError, LogPosition, LogRecord, PendingSink, ScheduleLog};
use crate::{config::KafkaConfig, model::DomainEvent};

/// How long metadata and offset look-ups may take before they count as the
/// broker being unavailable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle readers kept for the next [`EventLog::read`].
const IDLE_READERS: usize = 4;

/// The event log on a Kafka topic.
pub struct KafkaLog {
    config: KafkaConfig,
    topic: String,
    partitions: u32,
    /// Replaced when librdkafka reports a fatal error (an idempotent
    /// producer that lost its sequence state refuses every later record),
    /// or when no append has succeeded for [`stall::STALLED_AFTER`].
    producer: parking_lot::RwLock<FutureProducer>,
    /// Since when appends have failed with none succeeding.
    failing_since: parking_lot::Mutex<Option<std::time::Instant>>,
    lookups: Arc<BaseConsumer>,
    /// Reader clients reused across reads (each assigns by hand).
    readers: Arc<parking_lot::Mutex<Vec<BaseConsumer>>>,
    /// Transactional producers of atomic batches.
    transactions: transaction::Transactions,
    /// One client per consumer group whose committed offsets are asked for
    /// ([`EventLog::committed`], the consumer-lag metric); it never joins
    /// the group, it only fetches the group's offsets.
    offset_readers: Arc<parking_lot::Mutex<HashMap<String, Arc<BaseConsumer>>>>,
}

impl KafkaLog {
    /// Connects, creates the events topic when it is missing, and reads its
    /// partition count. Fails when the brokers cannot be reached.
    pub async fn connect(config: KafkaConfig) -> Result<Self, LogError> {
        let topic = config.events_topic();
        let admin: AdminClient<DefaultClientContext> = base_config(&config)
            .create()
            .map_err(|e| unavailable("creating the Kafka admin client", e))?;
        let opts = AdminOptions::new()
            .request_timeout(Some(LOOKUP_TIMEOUT))
            .operation_timeout(Some(LOOKUP_TIMEOUT));
        let new = NewTopic::new(
            &topic,
            config.partitions as i32,
            TopicReplication::Fixed(-1),
        );
        let created = admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| unavailable("creating the events topic", e))?;
        for r in created {
            match r {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions = config.partitions, "created the events topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Unavailable(format!(
                        "creating topic {name}: {code}"
                    )))
                }
            }
        }
        let lookups: Arc<BaseConsumer> = Arc::new(
            reader_config(&config)
                .create()
                .map_err(|e| unavailable("creating the Kafka lookup client", e))?,
        );
        // A topic just created (or a broker just restarted) may not show its
        // partitions in the metadata yet: ask again until it does.
        let partitions = {
            let (lookups, topic) = (lookups.clone(), topic.clone());
            blocking(move || {
                let deadline = std::time::Instant::now() + LOOKUP_TIMEOUT;
                loop {
                    let md = lookups
                        .fetch_metadata(Some(&topic), LOOKUP_TIMEOUT)
                        .map_err(|e| unavailable("reading the events topic's metadata", e))?;
                    let n = md
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len() as u32);
                    if n > 0 {
                        return Ok(n);
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(LogError::Unavailable(format!(
                            "topic {topic} has no partitions after {LOOKUP_TIMEOUT:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .await?
        };
        if partitions != config.partitions {
            tracing::warn!(
                topic,
                partitions,
                configured = config.partitions,
                "the events topic exists with another partition count; using the topic's"
            );
        }
        let producer = new_producer(&config)?;
        tracing::info!(brokers = %config.brokers, topic, partitions, "Kafka event log ready");
        Ok(Self {
            transactions: transaction::Transactions::new(&config),
            config,
            topic,
            partitions,
            producer: parking_lot::RwLock::new(producer),
            failing_since: Default::default(),
            lookups,
            readers: Default::default(),
            offset_readers: Default::default(),
        })
    }

    /// After a failed append: if the producer is in a fatal state, or no
    /// append has succeeded for [`stall::STALLED_AFTER`], replace it (once,
    /// whoever notices first) so the next emits succeed again.
    ///
    /// The second: librdkafka (since 2.10) can drop the only broker it
    /// knew when a restart leaves it out of a metadata response, and then
    /// has no one to ask where the partitions' leaders are; every record
    /// times out for as long as the process lives (seen after a single
    /// broker's restart, docs/reliability.md). A new producer bootstraps
    /// afresh. While the brokers are really down this replaces it every
    /// 30 s, which costs nothing: no append is succeeding then anyway.
    fn heal(&self, failed: &FutureProducer) {
        let fatal = failed.client().fatal_error();
        let stalled = fatal.is_none() && {
            let now = std::time::Instant::now();
            let mut since = self.failing_since.lock();
            let first = *since.get_or_insert(now);
            let stalled = now.duration_since(first) >= stall::STALLED_AFTER;
            if stalled {
                *since = Some(now);
            }
            stalled
        };
        if fatal.is_none() && !stalled {
            return;
        }
        let mut current = self.producer.write();
        if current.client().native_ptr() != failed.client().native_ptr() {
            return; // Already replaced.
        }
        match fatal {
            Some((code, reason)) => {
                tracing::error!(%code, %reason, "the Kafka producer hit a fatal error; replacing it");
            }
            None => tracing::warn!(
                failing_s = stall::STALLED_AFTER.as_secs(),
                "no append to Kafka succeeded for a while; replacing the Kafka producer, which bootstraps afresh"
            ),
        }
        match new_producer(&self.config) {
            Ok(p) => *current = p,
            Err(e) => tracing::error!(error = %e, "could not create a new Kafka producer"),
        }
    }

    /// The topic events go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn append(&self, events: &[DomainEvent]) -> Result<Vec<LogPosition>, LogError> {
        let producer = self.producer.read().clone();
        let result = append_with(&producer, &self.topic, self.partitions, events).await;
        if result.is_ok() {
            *self.failing_since.lock() = None;
        } else {
            self.heal(&producer);
        }
        result
    }

    async fn append_all(&self, events: &[DomainEvent]) -> Result<Vec<LogPosition>, LogError> {
        if events.len() == 1 && crate::test_hooks::kafka_batch_fail_after().is_none() {
            // One record is all or nothing already.
            return self.append(events).await;
        }
        self.transactions
            .append(&self.config, &self.topic, self.partitions, events, None)
            .await
    }

    async fn append_all_indexed(
        &self,
        events: &[DomainEvent],
        index: &dyn super::AppendIndex,
    ) -> Option<Result<Vec<LogPosition>, LogError>> {
        if events.len() == 1 && crate::test_hooks::kafka_batch_fail_after().is_none() {
            // One record goes without a transaction (see `append_all`).
            return None;
        }
        let appended = self
            .transactions
            .append(
                &self.config,
                &self.topic,
                self.partitions,
                events,
                Some(index),
            )
            .await;
        Some(appended)
    }

    async fn read(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.check_partition(partition, offset)?;
        let (config, topic, readers) = (
            self.config.clone(),
            self.topic.clone(),
            self.readers.clone(),
        );
        blocking(move || {
            let reader = match readers.lock().pop() {
                Some(r) => r,
                None => reader_config(&config)
                    .create()
                    .map_err(|e| unavailable("creating a Kafka reader", e))?,
            };
            let out = read_range(&reader, &topic, partition, offset, max);
            // Back to the pool only when it ended clean and unassigned.
            if out.is_ok() && reader.unassign().is_ok() {
                let mut idle = readers.lock();
                if idle.len() < IDLE_READERS {
                    idle.push(reader);
                }
            }
            out
        })
        .await
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        self.check_partition(partition, 0)?;
        let (lookups, topic) = (self.lookups.clone(), self.topic.clone());
        blocking(move || {
            let (_, high) = lookups
                .fetch_watermarks(&topic, partition as i32, LOOKUP_TIMEOUT)
                .map_err(|e| unavailable("reading the end offset", e))?;
            Ok(high.max(0) as u64)
        })
        .await
    }

    async fn offset_for_time(&self, partition: u32, at: OffsetDateTime) -> Result<u64, LogError> {
        self.check_partition(partition, 0)?;
        let (lookups, topic) = (self.lookups.clone(), self.topic.clone());
        let ms = (at.unix_timestamp_nanos() / 1_000_000).max(0) as i64;
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(ms))
                .map_err(|e| unavailable("building an offset query", e))?;
            let found = lookups
                .offsets_for_times(tpl, LOOKUP_TIMEOUT)
                .map_err(|e| unavailable("looking up an offset by time", e))?;
            let offset = found
                .find_partition(&topic, partition as i32)
                .map(|p| p.offset());
            match offset {
                Some(Offset::Offset(o)) => Ok(o as u64),
                // No record at or after `at`: the end of the partition.
                _ => {
                    let (_, high) = lookups
                        .fetch_watermarks(&topic, partition as i32, LOOKUP_TIMEOUT)
                        .map_err(|e| unavailable("reading the end offset", e))?;
                    Ok(high.max(0) as u64)
                }
            }
        })
        .await
    }

    /// The group's committed offsets, fetched from the group coordinator
    /// without joining the group. A partition the group never committed
    /// counts from its low watermark (a new group starts at the earliest
    /// record). Transaction markers take offsets too, so a group that is
    /// done may show a lag of a record or two on partitions written in
    /// batches.
    async fn committed(&self, group: &str) -> Result<Option<BTreeMap<u32, u64>>, LogError> {
        let reader = {
            let mut readers = self.offset_readers.lock();
            match readers.get(group) {
                Some(r) => r.clone(),
                None => {
                    let r: Arc<BaseConsumer> = Arc::new(
                        reader_config(&self.config)
                            .set("group.id", group)
                            .create()
                            .map_err(|e| unavailable("creating a Kafka offset reader", e))?,
                    );
                    readers.insert(group.to_string(), r.clone());
                    r
                }
            }
        };
        let (topic, partitions) = (self.topic.clone(), self.partitions);
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p as i32);
            }
            let found = reader
                .committed_offsets(tpl, LOOKUP_TIMEOUT)
                .map_err(|e| unavailable("reading the group's committed offsets", e))?;
            let mut out = BTreeMap::new();
            for p in 0..partitions {
                let at = match found.find_partition(&topic, p as i32).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => o as u64,
                    _ => {
                        let (low, _) = reader
                            .fetch_watermarks(&topic, p as i32, LOOKUP_TIMEOUT)
                            .map_err(|e| unavailable("reading the start offset", e))?;
                        low.max(0) as u64
                    }
                };
                out.insert(p, at);
            }
            Ok(Some(out))
        })
        .await
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        Ok(Box::new(consumer::KafkaConsumer::join(
            &self.config,
            &self.topic,
            group,
        )?))
    }

    async fn consumer_keeping(
        &self,
        group: &str,
        sink: Arc<dyn PendingSink>,
    ) -> Result<(Box<dyn LogConsumer>, Option<Arc<dyn ScheduleLog>>), LogError> {
        let changelog = changelog::Changelog::open(&self.config, self.partitions).await?;
        let consumer = consumer::KafkaConsumer::join_keeping(
            &self.config,
            &self.topic,
            group,
            Some((changelog.clone(), sink)),
        )?;
        Ok((Box::new(consumer), Some(changelog)))
    }
}

impl KafkaLog {
    fn check_partition(&self, partition: u32, offset: u64) -> Result<(), LogError> {
        if partition >= self.partitions {
            return Err(LogError::OutOfRange { partition, offset });
        }
        Ok(())
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        // Everything appended was awaited already; this only drains stragglers.
        let _ = self.producer.read().flush(Duration::from_secs(1));
    }
}

/// Hands each event's record (keyed by tenant, to the tenant's partition)
/// to the producer; returns the acknowledgements to wait for.
fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    partitions: u32,
    events: &[DomainEvent],
    indexed: bool,
) -> Result<Vec<rdkafka::producer::DeliveryFuture>, LogError> {
    let mut pending = Vec::with_capacity(events.len());
    for e in events {
        let value = record::encode(e);
        let rec = FutureRecord::to(topic)
            .partition(super::partition_for(&e.tenant_id, partitions) as i32)
            .key(e.tenant_id.as_bytes())
            .payload(&value)
            .headers(record::headers(e, indexed));
        match producer.send_result(rec) {
            Ok(delivery) => pending.push(delivery),
            Err((err, _)) => return Err(produce_error(err)),
        }
    }
    Ok(pending)
}

/// Enqueues every record first, so they travel in as few requests as
/// possible, then waits for every acknowledgement.
async fn append_with(
    producer: &FutureProducer,
    topic: &str,
    partitions: u32,
    events: &[DomainEvent],
) -> Result<Vec<LogPosition>, LogError> {
    let pending = enqueue(producer, topic, partitions, events, false)?;
    let mut positions = Vec::with_capacity(pending.len());
    let mut failure = None;
    for delivery in pending {
        match delivery.await {
            Ok(Ok(d)) => positions.push(LogPosition {
                partition: d.partition as u32,
                offset: d.offset as u64,
            }),
            Ok(Err((err, _))) => failure = failure.or(Some(produce_error(err))),
            Err(_) => failure = failure.or(Some(LogError::Closed)),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(positions),
    }
}

/// The idempotent, `acks=all` producer of the events topic.
fn new_producer(config: &KafkaConfig) -> Result<FutureProducer, LogError> {
    base_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            config.append_timeout.as_millis().max(1).to_string(),
        )
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .create()
        .map_err(|e| unavailable("creating the Kafka producer", e))
}

/// Reads `[offset, offset + max)` of one partition, stopping at its end.
fn read_range(
    c: &BaseConsumer,
    topic: &str,
    partition: u32,
    offset: u64,
    max: usize,
) -> Result<Vec<LogRecord>, LogError> {
    let (low, high) = c
        .fetch_watermarks(topic, partition as i32, LOOKUP_TIMEOUT)
        .map_err(|e| unavailable("reading the partition's offsets", e))?;
    let (low, high) = (low.max(0) as u64, high.max(0) as u64);
    if offset < low {
        // Retention removed it.
        return Err(LogError::OutOfRange { partition, offset });
    }
    let end = high.min(offset.saturating_add(max as u64));
    let mut out = Vec::with_capacity((end.saturating_sub(offset)) as usize);
    if offset >= end {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
        .map_err(|e| unavailable("building a read assignment", e))?;
    c.assign(&tpl)
        .map_err(|e| unavailable("assigning a partition", e))?;
    let deadline = std::time::Instant::now() + LOOKUP_TIMEOUT;
    let mut next = offset;
    while next < end {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(LogError::Unavailable(format!(
                "reading partition {partition} from {offset} timed out at {next}"
            )));
        }
        let m = match c.poll(left) {
            None => continue,
            // The readable end: transaction markers and aborted records
            // take offsets no message is read at.
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(m) => m.map_err(|e| unavailable("reading records", e))?,
        };
        let at = m.offset() as u64;
        if at < next {
            continue;
        }
        out.push(to_record(&m, partition)?);
        next = at + 1;
    }
    Ok(out)
}

/// Decodes a fetched message into a log record.
pub(crate) fn to_record(m: &impl Message, partition: u32) -> Result<LogRecord, LogError> {
    let offset = m.offset().max(0) as u64;
    let event = m
        .payload()
        .ok_or_else(|| "the record has no value".to_string())
        .and_then(record::decode)
        .map_err(|reason| LogError::Corrupt {
            partition,
            offset,
            reason,
        })?;
    let appended_at = m
        .timestamp()
        .to_millis()
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .unwrap_or(event.received_at);
    Ok(LogRecord {
        position: LogPosition { partition, offset },
        appended_at,
        event,
        indexed: record::indexed(m),
    })
}

/// Settings every client shares.
fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "herald")
        // librdkafka logs through the `log` facade; keep its noise out of stderr.
        .set("log_level", "4");
    c
}

/// A consumer that only assigns partitions by hand (reads, look-ups).
fn reader_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(config);
    c.set("group.id", "herald-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    c
}

fn unavailable(what: &str, e: KafkaError) -> LogError {
    LogError::Unavailable(format!("{what}: {e}"))
}

/// A produce failure: the record is too big or malformed (permanent), or
/// the broker did not take it in time (transient).
fn produce_error(e: KafkaError) -> LogError {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord,
        ) => LogError::Rejected(e.to_string()),
        _ => LogError::Unavailable(format!("Kafka did not acknowledge the event: {e}")),
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| LogError::Closed)?
}
