//! The schedule changelog: `<prefix>.schedule`, a compacted topic
//! co-partitioned with the events topic, keyed by delivery id, holding the
//! deliveries a worker keeps in memory for the partitions it owns (retries
//! waiting for their due time), each with its event. A delivery that is
//! finished, or moved to the store's schedule, leaves a tombstone.
//!
//! Its records and the fan-out's consumer offsets are written in one Kafka
//! transaction (consume–transform–produce, as Kafka Streams' state stores
//! do): [`Changelog::commit`] sends the offsets into the open transaction
//! and commits it; a flusher commits every [`FLUSH_EVERY`] when records
//! wait, for as long as the changelog is in use. A write returns only once its transaction committed, so a retry
//! settles its event's offset only when it is durable, and an aborted
//! transaction takes its records and its offsets away together. The offsets
//! carry the consumer's group generation, so a worker that lost its
//! partitions (a zombie) cannot commit them, nor the records of its
//! transaction. The flusher's transactions carry the offsets the member
//! last committed, under its group metadata of now, so the group fences
//! them too. The changelog also knows what its member owns (from the
//! consumer's rebalances): it writes records of owned partitions only, and
//! aborts a transaction holding a record of a partition lost since.
//!
//! On assignment a worker reads each new partition of the changelog from its
//! start to its end, `read_committed`, and keeps the last record per key
//! ([`restore`]), before it reads a record of the events partition.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
    Message, Offset, TopicPartitionList,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, RwLock};

use super::{base_config, blocking, reader_config, unavailable, LOOKUP_TIMEOUT};
use crate::{
    config::KafkaConfig,
    log::{partition_for, LogError, Pending, ScheduleLog},
    model::{DomainEvent, ScheduledDelivery},
};

/// How often waiting changelog records are committed when the fan-out does
/// not commit first.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// How long a transaction of a dead worker keeps the changelog's readers
/// waiting before the broker aborts it (a restore reads `read_committed`).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a write waits for its transaction to end before it counts as
/// failed (the caller tries again, or leaves the delivery to a restore).
const OUTCOME_WAIT: Duration = Duration::from_secs(30);

/// How long the end of a transaction (offsets sent, commit, or abort) may
/// take before it is given up. librdkafka bounds each call by
/// `LOOKUP_TIMEOUT`, except when it does not: `send_offsets_to_transaction`
/// can wait for ever on a group coordinator it never looks up again
/// (librdkafka issues #5456, #5511; seen here after a broker restart). A
/// transaction given up counts as aborted (the broker aborts it after
/// `TRANSACTION_TIMEOUT`, and the next producer's `init_transactions` at
/// once), and the changelog makes a new producer at the next commit.
const END_WAIT: Duration = Duration::from_secs(30);

/// How often a changelog with no transaction open tries a new producer.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How long a restore of one partition may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// The changelog's value: the delivery and its event.
#[derive(Serialize, Deserialize)]
struct Entry {
    delivery_id: String,
    tenant_id: String,
    event_id: String,
    subscription_id: String,
    attempt: u32,
    replay_of: Option<String>,
    is_replay: bool,
    due_at_ms: i64,
    seq: i64,
    ordered: bool,
    event: DomainEvent,
}

impl Entry {
    fn of(p: &Pending) -> Self {
        let d = &p.delivery;
        Self {
            delivery_id: d.delivery_id.clone(),
            tenant_id: d.tenant_id.clone(),
            event_id: d.event_id.clone(),
            subscription_id: d.subscription_id.clone(),
            attempt: d.attempt,
            replay_of: d.replay_of.clone(),
            is_replay: d.is_replay,
            due_at_ms: d.due_at_ms,
            seq: d.seq,
            ordered: d.ordered,
            event: p.event.clone(),
        }
    }

    fn into_pending(self) -> Pending {
        Pending {
            delivery: ScheduledDelivery {
                delivery_id: self.delivery_id,
                tenant_id: self.tenant_id,
                event_id: self.event_id,
                subscription_id: self.subscription_id,
                attempt: self.attempt,
                replay_of: self.replay_of,
                is_replay: self.is_replay,
                due_at_ms: self.due_at_ms,
                seq: self.seq,
                ordered: self.ordered,
            },
            event: self.event,
        }
    }
}

/// The open transaction: whether records wait in it, the assignment of
/// each partition they were written under, and where its writers learn how
/// it ended (`Some(true)`: committed).
struct Open {
    dirty: bool,
    written: HashSet<(i32, u64)>,
    outcome: watch::Sender<Option<bool>>,
}

impl Open {
    fn new() -> Self {
        Self {
            dirty: false,
            written: HashSet::new(),
            outcome: watch::channel(None).0,
        }
    }
}

/// The partitions this member owns, each with the number of the assignment
/// that gave it. A record is written only for a partition owned, and a
/// transaction commits only if every partition it wrote to is still owned
/// under the same assignment: a record committed after its partition moved
/// would reach the new owner's next restore (a retry hidden or brought
/// back), though not the restore it already did.
#[derive(Default)]
struct Owned {
    epochs: HashMap<i32, u64>,
    assignments: u64,
    /// The events topic and the offsets this member last committed there,
    /// of partitions it still owns: sent again with the records the
    /// flusher commits, so the group fences those too.
    committed: Option<(String, HashMap<i32, i64>)>,
}

impl Owned {
    fn assign(&mut self, partitions: &[i32]) {
        self.assignments += 1;
        for &p in partitions {
            self.epochs.insert(p, self.assignments);
        }
    }

    fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.epochs.remove(p);
            if let Some((_, offsets)) = &mut self.committed {
                offsets.remove(p);
            }
        }
    }

    /// Notes the offsets of a commit, of the partitions still owned.
    fn note_committed(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            let Offset::Offset(at) = e.offset() else {
                continue;
            };
            if !self.epochs.contains_key(&e.partition()) {
                continue;
            }
            let (_, offsets) = self
                .committed
                .get_or_insert_with(|| (e.topic().to_string(), HashMap::new()));
            offsets.insert(e.partition(), at);
        }
    }

    /// The offsets last committed, of the partitions owned, to commit again.
    fn fence(&self) -> Option<TopicPartitionList> {
        let (topic, offsets) = self.committed.as_ref()?;
        let mut tpl = TopicPartitionList::new();
        for (&p, &at) in offsets {
            tpl.add_partition_offset(topic, p, Offset::Offset(at))
                .ok()?;
        }
        (tpl.count() > 0).then_some(tpl)
    }

    /// The partitions written to that this member lost since.
    fn lost_since(&self, written: &HashSet<(i32, u64)>) -> Vec<i32> {
        let mut lost: Vec<i32> = written
            .iter()
            .filter(|(p, epoch)| self.epochs.get(p) != Some(epoch))
            .map(|&(p, _)| p)
            .collect();
        lost.sort_unstable();
        lost.dedup();
        lost
    }
}

/// One worker's changelog writer: a transactional producer with one
/// transaction always open.
pub struct Changelog {
    /// Replaced, under the same transactional id, when it cannot open a
    /// transaction (see [`Changelog::commit`]).
    producer: parking_lot::Mutex<FutureProducer>,
    /// How a producer is made: the Kafka settings and the transactional id.
    config: KafkaConfig,
    transactional_id: String,
    topic: String,
    partitions: u32,
    open: RwLock<Open>,
    /// Set while there is no transaction open (a failed abort or begin, a
    /// fenced or failed producer): writes are refused and the next commit
    /// makes a new producer first.
    broken: std::sync::atomic::AtomicBool,
    /// When a new producer was last tried.
    renewed_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// What this member owns, as its consumer's rebalances say.
    owned: parking_lot::Mutex<Owned>,
    /// The consumer's group metadata, now (see [`Changelog::fence_with`]).
    member: parking_lot::Mutex<Option<Member>>,
}

/// Reads a consumer's group metadata.
pub(super) type Member = Box<dyn Fn() -> Option<ConsumerGroupMetadata> + Send + Sync>;

impl Changelog {
    /// Creates the topic when missing (compacted, one partition per events
    /// partition) and a transactional producer with a transaction open.
    pub(super) async fn open(config: &KafkaConfig, partitions: u32) -> Result<Arc<Self>, LogError> {
        let topic = config.schedule_topic();
        create_topic(config, &topic, partitions).await?;
        // A worker's stable name fences its crashed predecessor (and aborts
        // its open transaction) at once; without one, the id is new per process.
        let instance = config
            .worker_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let transactional_id = format!("{}-schedule-{instance}", config.topic_prefix);
        let producer = transactional_producer(config, &transactional_id).await?;
        tracing::info!(topic, partitions, "schedule changelog ready");
        let changelog = Arc::new(Self {
            producer: parking_lot::Mutex::new(producer),
            config: config.clone(),
            transactional_id,
            topic,
            partitions,
            open: RwLock::new(Open::new()),
            broken: Default::default(),
            renewed_at: Default::default(),
            owned: Default::default(),
            member: Default::default(),
        });
        tokio::spawn(flush(Arc::downgrade(&changelog)));
        Ok(changelog)
    }

    /// Commits the open transaction, with `offsets` (the consumer's
    /// positions and group) when given, and opens the next one. Writers
    /// waiting on it learn the outcome. Does nothing when there is nothing
    /// to commit.
    ///
    /// Without offsets (the flusher), the records go with the offsets this
    /// member last committed, sent again under the consumer's group
    /// metadata of now: the group coordinator refuses them, and the
    /// transaction is aborted, if the member was dropped from the group or
    /// replaced under its name, before the member itself has heard.
    pub(super) async fn commit(
        &self,
        offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)>,
    ) -> Result<(), LogError> {
        let mut open = self.open.write().await;
        if offsets.is_none() && !open.dirty {
            return Ok(());
        }
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            // Only the fan-out, while it reads its partitions, makes a new
            // producer: a worker whose successor took its name (and fenced
            // its producer) reads nothing, and does not fence it back.
            if offsets.is_none() {
                return Err(LogError::Unavailable(
                    "the schedule changelog has no transaction open".into(),
                ));
            }
            self.renew().await?;
        }
        let committing = offsets.as_ref().map(|(tpl, _)| tpl.clone());
        let offsets = offsets.or_else(|| {
            let tpl = self.owned.lock().fence()?;
            let group = (self.member.lock().as_ref()?)()?;
            Some((tpl, group))
        });
        let lost = self.owned.lock().lost_since(&open.written);
        let p = self.producer.lock().clone();
        let ended = if lost.is_empty() {
            within_end_wait(move || end_transaction(&p, offsets)).await
        } else {
            within_end_wait(move || {
                p.abort_transaction(LOOKUP_TIMEOUT)
                    .map_err(|e| unavailable("aborting a changelog transaction", e))
            })
            .await
            .map(|aborted| aborted.and(Err(LogError::Unavailable(format!(
                "the schedule changelog's transaction held records of partitions {lost:?}, which moved to another worker since; they are left to the new owner"
            )))))
        };
        let Some(outcome) = ended else {
            // The producer is busy for good: its thread is left to it, and
            // the next commit with offsets makes a new one.
            self.broken
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                waited_s = END_WAIT.as_secs(),
                "a schedule changelog transaction did not end in time; given up as aborted, a new producer is made at the next commit"
            );
            let done = std::mem::replace(&mut *open, Open::new());
            done.outcome.send_replace(Some(false));
            return Err(LogError::Unavailable(
                "the schedule changelog's transaction did not end in time".into(),
            ));
        };
        let committed = outcome.is_ok();
        if let (true, Some(tpl)) = (committed, &committing) {
            self.owned.lock().note_committed(tpl);
        }
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, "a schedule changelog transaction was aborted");
        }
        let p = self.producer.lock().clone();
        let begun = blocking(move || {
            p.begin_transaction()
                .map_err(|e| unavailable("beginning a changelog transaction", e))
        })
        .await;
        if let Err(e) = &begun {
            self.broken
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "the schedule changelog cannot open a transaction; it makes a new producer at the next commit");
        }
        let done = std::mem::replace(&mut *open, Open::new());
        done.outcome.send_replace(Some(committed));
        outcome.and(begun)
    }

    /// Makes a new producer under the same transactional id, at most once
    /// per [`RENEW_EVERY`]: its `init_transactions` aborts what the old
    /// one left open (or waits for the broker to), and bumps the epoch, so
    /// the old producer can commit nothing more. The caller holds the
    /// open transaction's lock.
    async fn renew(&self) -> Result<(), LogError> {
        {
            let mut at = self.renewed_at.lock();
            if at.is_some_and(|t| t.elapsed() < RENEW_EVERY) {
                return Err(LogError::Unavailable(
                    "the schedule changelog has no transaction open; a new producer is tried shortly".into(),
                ));
            }
            *at = Some(std::time::Instant::now());
        }
        let producer = transactional_producer(&self.config, &self.transactional_id).await?;
        let old = std::mem::replace(&mut *self.producer.lock(), producer);
        // Dropping a producer waits for its requests in flight.
        tokio::task::spawn_blocking(move || drop(old));
        self.broken
            .store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("the schedule changelog has a new producer and a transaction open");
        Ok(())
    }

    /// Writes one record (a value, or a tombstone) into the open transaction
    /// and waits until that transaction committed.
    async fn write(
        &self,
        tenant_id: &str,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), LogError> {
        let partition = partition_for(tenant_id, self.partitions) as i32;
        let (ack, mut outcome) = {
            let mut open = self.open.write().await;
            if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(LogError::Unavailable(
                    "the schedule changelog has no transaction open".into(),
                ));
            }
            let Some(epoch) = self.owned.lock().epochs.get(&partition).copied() else {
                return Err(LogError::Unavailable(format!(
                    "partition {partition} is not this worker's: its owner keeps its schedule"
                )));
            };
            let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
                .partition(partition)
                .key(key);
            if let Some(v) = &value {
                record = record.payload(v);
            }
            let ack = self
                .producer
                .lock()
                .send_result(record)
                .map_err(|(e, _)| unavailable("writing to the schedule changelog", e))?;
            open.dirty = true;
            open.written.insert((partition, epoch));
            (ack, open.outcome.subscribe())
        };
        match ack.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(unavailable("writing to the schedule changelog", e)),
            Err(_) => return Err(LogError::Closed),
        }
        let ended = tokio::time::timeout(OUTCOME_WAIT, outcome.wait_for(Option::is_some))
            .await
            .map_err(|_| {
                LogError::Unavailable(
                    "the schedule changelog's transaction did not end in time".into(),
                )
            })?
            .map_err(|_| LogError::Closed)?;
        match *ended {
            Some(true) => Ok(()),
            _ => Err(LogError::Unavailable(
                "the schedule changelog's transaction was aborted".into(),
            )),
        }
    }

    /// The topic.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Where the consumer's group metadata is read for the flusher's
    /// transactions.
    pub(super) fn fence_with(&self, member: Member) {
        *self.member.lock() = Some(member);
    }

    /// This member was given `partitions` (a rebalance).
    pub(super) fn assigned(&self, partitions: &[i32]) {
        self.owned.lock().assign(partitions);
    }

    /// This member lost `partitions` (a rebalance): no record of them is
    /// written or committed from here any more.
    pub(super) fn revoked(&self, partitions: &[i32]) {
        self.owned.lock().revoke(partitions);
    }
}

#[async_trait::async_trait]
impl ScheduleLog for Changelog {
    async fn keep(&self, pending: &Pending) -> Result<(), LogError> {
        let value = serde_json::to_vec(&Entry::of(pending))
            .map_err(|e| LogError::Rejected(format!("encoding a changelog record: {e}")))?;
        self.write(
            &pending.delivery.tenant_id,
            &pending.delivery.delivery_id,
            Some(value),
        )
        .await
    }

    async fn forget(&self, tenant_id: &str, delivery_id: &str) -> Result<(), LogError> {
        self.write(tenant_id, delivery_id, None).await
    }
}

/// Commits waiting records every [`FLUSH_EVERY`] for as long as the
/// changelog is in use: past the fan-out's end too, so a retry kept while a
/// worker shuts down still learns its outcome.
async fn flush(changelog: std::sync::Weak<Changelog>) {
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let Some(changelog) = changelog.upgrade() else {
            return;
        };
        if let Err(e) = changelog.commit(None).await {
            tracing::warn!(error = %e, "could not commit the schedule changelog");
        }
    }
}

/// A transactional producer for the changelog with a transaction open.
async fn transactional_producer(
    config: &KafkaConfig,
    transactional_id: &str,
) -> Result<FutureProducer, LogError> {
    let (c, id) = (config.clone(), transactional_id.to_string());
    blocking(move || {
        let p: FutureProducer = base_config(&c)
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            )
            .set("message.timeout.ms", "9000")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create()
            .map_err(|e| unavailable("creating the schedule changelog's producer", e))?;
        p.init_transactions(LOOKUP_TIMEOUT)
            .map_err(|e| unavailable("initialising the changelog's transactions", e))?;
        p.begin_transaction()
            .map_err(|e| unavailable("beginning a changelog transaction", e))?;
        Ok(p)
    })
    .await
}

/// Runs a call of the transactional API on a thread of its own, waiting at
/// most [`END_WAIT`] for it; `None` when it did not return by then. The
/// thread is left to it (a Kafka call cannot be cancelled); unlike one of
/// tokio's blocking pool, it does not hold up the runtime's shutdown.
async fn within_end_wait(
    f: impl FnOnce() -> Result<(), LogError> + Send + 'static,
) -> Option<Result<(), LogError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("changelog-txn".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return Some(Err(LogError::Unavailable(format!(
            "no thread to end a changelog transaction on: {e}"
        ))));
    }
    match tokio::time::timeout(END_WAIT, rx).await {
        Ok(Ok(outcome)) => Some(outcome),
        Ok(Err(_)) => Some(Err(LogError::Closed)),
        Err(_) => None,
    }
}

/// Sends the offsets and commits; on failure aborts (when it can) and says why.
fn end_transaction(
    p: &FutureProducer,
    offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)>,
) -> Result<(), LogError> {
    let result = offsets
        .map_or(Ok(()), |(tpl, group)| {
            if crate::test_hooks::changelog_commit_stuck() {
                std::thread::sleep(Duration::from_secs(24 * 3600));
            }
            p.send_offsets_to_transaction(&tpl, &group, LOOKUP_TIMEOUT)
        })
        .and_then(|()| {
            // A timeout may be retried; anything else ends in an abort.
            let mut tries = 0;
            loop {
                match p.commit_transaction(LOOKUP_TIMEOUT) {
                    Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 3 => tries += 1,
                    other => break other,
                }
            }
        });
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Err(abort) = p.abort_transaction(LOOKUP_TIMEOUT) {
                tracing::error!(error = %abort, "could not abort a schedule changelog transaction");
            }
            Err(unavailable(
                "committing a schedule changelog transaction",
                e,
            ))
        }
    }
}

/// Creates the compacted changelog topic when it is missing.
async fn create_topic(config: &KafkaConfig, topic: &str, partitions: u32) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = base_config(config)
        .create()
        .map_err(|e| unavailable("creating the Kafka admin client", e))?;
    let opts = AdminOptions::new()
        .request_timeout(Some(LOOKUP_TIMEOUT))
        .operation_timeout(Some(LOOKUP_TIMEOUT));
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact")
        .set("min.compaction.lag.ms", "0")
        .set("segment.ms", "600000");
    for r in admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| unavailable("creating the schedule changelog topic", e))?
    {
        match r {
            Ok(name) => {
                tracing::info!(topic = %name, partitions, "created the schedule changelog topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(LogError::Unavailable(format!(
                    "creating topic {name}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// Reads each of `partitions` of the changelog from its start to its end,
/// `read_committed`, keeping the last record per delivery id: the
/// deliveries each keeps, in the order asked. Blocking.
pub(super) fn restore(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[u32],
) -> Result<Vec<(u32, Vec<Pending>)>, LogError> {
    let c: BaseConsumer = reader_config(config)
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| unavailable("creating a changelog reader", e))?;
    let mut kept: HashMap<i32, HashMap<String, Pending>> = HashMap::new();
    // Where each partition ends now: all of them are read at once, from one
    // assignment (read one after another, each partition's last offset, a
    // transaction marker that is never returned as a record, cost a poll's
    // wait before the position showed it passed).
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let p = p as i32;
        kept.insert(p, HashMap::new());
        let (low, high) = c
            .fetch_watermarks(topic, p, LOOKUP_TIMEOUT)
            .map_err(|e| unavailable("reading the changelog's offsets", e))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| unavailable("building a changelog assignment", e))?;
        }
    }
    if !ends.is_empty() {
        c.assign(&tpl)
            .map_err(|e| unavailable("assigning the changelog partitions", e))?;
    }
    let deadline = std::time::Instant::now() + RESTORE_TIMEOUT;
    while !ends.is_empty() {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let p = m.partition();
                // Past its end (written after the restore began): not ours.
                let Some(&high) = ends.get(&p) else {
                    continue;
                };
                if let (Some(key), Some(partition)) = (m.key(), kept.get_mut(&p)) {
                    let key = String::from_utf8_lossy(key).into_owned();
                    match m.payload() {
                        None => {
                            partition.remove(&key);
                        }
                        Some(v) => match serde_json::from_slice::<Entry>(v) {
                            Ok(e) => {
                                partition.insert(key, e.into_pending());
                            }
                            Err(e) => {
                                tracing::error!(error = %e, partition = p, offset = m.offset(), "skipping an unreadable changelog record")
                            }
                        },
                    }
                }
                if m.offset() + 1 >= high {
                    ends.remove(&p);
                }
            }
            Some(Err(e)) => return Err(unavailable("reading the schedule changelog", e)),
            None => {
                // Transaction markers and aborted records take offsets no
                // record is read at: the position says where reading is.
                if let Ok(at) = c.position() {
                    ends.retain(|&p, &mut high| {
                        at.find_partition(topic, p)
                            .and_then(|e| e.offset().to_raw())
                            .is_none_or(|at| at < high)
                    });
                }
                if !ends.is_empty() && std::time::Instant::now() > deadline {
                    let mut left: Vec<_> = ends.into_iter().collect();
                    left.sort_unstable();
                    return Err(LogError::Unavailable(format!(
                        "restoring the changelog did not reach the end of (partition, offset) {left:?} in {RESTORE_TIMEOUT:?}"
                    )));
                }
            }
        }
    }
    Ok(partitions
        .iter()
        .map(|&p| {
            let pending = kept.remove(&(p as i32)).unwrap_or_default();
            (p, pending.into_values().collect())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_holding_records_of_a_partition_lost_since_is_not_committed() {
        let mut owned = Owned::default();
        owned.assign(&[0, 1]);
        let first = owned.epochs[&1];
        let written = HashSet::from([(0, owned.epochs[&0]), (1, first)]);
        assert!(owned.lost_since(&written).is_empty(), "both still owned");

        owned.revoke(&[1]);
        assert_eq!(owned.lost_since(&written), [1]);

        // Given back: a record written under the earlier assignment is
        // still of a partition lost since (the new restore did not see it).
        owned.assign(&[1]);
        assert_ne!(owned.epochs[&1], first);
        assert_eq!(owned.lost_since(&written), [1]);
        let now = HashSet::from([(0, owned.epochs[&0]), (1, owned.epochs[&1])]);
        assert!(owned.lost_since(&now).is_empty());
    }
}
