//! Batches appended all or nothing, each in one Kafka transaction.
//!
//! A batch's records are produced inside a transaction and committed
//! together; on any failure (a record not acknowledged, the commit refused
//! or timed out) the transaction is aborted, so a `read_committed` reader —
//! the fan-out consumer and every reader of [`KafkaLog`](super::KafkaLog)
//! are — never sees any of them, even those the broker had written. The
//! caller answers 503 and the client retries the whole batch.
//!
//! A transactional producer runs one transaction at a time, so the log keeps
//! a small pool of them; each has its own `transactional.id`
//! (`<prefix>-batch-<process>-<slot>`). A process killed inside a
//! transaction leaves it open until the broker aborts it after
//! `transaction.timeout.ms` (twice the append timeout); until then
//! `read_committed` readers of that partition wait at its first record.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};

use super::{base_config, blocking, enqueue, produce_error, unavailable};
use crate::{
    config::KafkaConfig,
    log::{AppendIndex, LogError, LogPosition},
    model::DomainEvent,
};

/// Transactional producers kept per log: batches in flight at once.
pub(super) const POOL: usize = 4;

/// The pool of transactional producers, created on first use.
pub(super) struct Transactions {
    slots: Vec<tokio::sync::Mutex<Option<FutureProducer>>>,
    id_prefix: String,
    next: std::sync::atomic::AtomicUsize,
}

impl Transactions {
    pub(super) fn new(config: &KafkaConfig) -> Self {
        Self {
            slots: (0..POOL).map(|_| tokio::sync::Mutex::new(None)).collect(),
            id_prefix: format!(
                "{}-batch-{}",
                config.topic_prefix,
                uuid::Uuid::new_v4().simple()
            ),
            next: Default::default(),
        }
    }

    /// Appends `events` in one transaction: every one committed, or none
    /// visible to `read_committed` readers. With `index`, the records are
    /// marked indexed and `index` runs between their acknowledgements and
    /// the commit; an aborted transaction is unindexed
    /// ([`EventLog::append_all_indexed`](crate::log::EventLog::append_all_indexed)).
    pub(super) async fn append(
        &self,
        config: &KafkaConfig,
        topic: &str,
        partitions: u32,
        events: &[DomainEvent],
        index: Option<&dyn AppendIndex>,
    ) -> Result<Vec<LogPosition>, LogError> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % POOL;
        let mut slot = self.slots[i].lock().await;
        let producer = match slot.take() {
            Some(p) => p,
            None => {
                let (config, id) = (config.clone(), format!("{}-{i}", self.id_prefix));
                blocking(move || new_transactional(&config, &id)).await?
            }
        };
        let timeout = config.append_timeout;
        let p = producer.clone();
        blocking(move || {
            p.begin_transaction()
                .map_err(|e| unavailable("beginning a transaction", e))
        })
        .await?;
        // Set before the index runs: a failure of it may have written some.
        let mut indexed = false;
        let result = async {
            let positions = produce(&producer, topic, partitions, events, index.is_some()).await?;
            if let Some(index) = index {
                indexed = true;
                index.index().await.map_err(|e| {
                    LogError::Unavailable(format!("indexing the batch in its transaction: {e}"))
                })?;
                if let Some(n) = crate::test_hooks::kafka_batch_fail_after() {
                    if n < events.len() {
                        return Err(LogError::Unavailable(format!(
                            "test hook: the batch of {} events failed after its index",
                            events.len()
                        )));
                    }
                }
            }
            let p = producer.clone();
            blocking(move || {
                p.commit_transaction(timeout)
                    .map_err(|e| unavailable("committing the batch's transaction", e))
            })
            .await?;
            Ok(positions)
        }
        .await;
        match result {
            Ok(positions) => {
                *slot = Some(producer);
                Ok(positions)
            }
            Err(e) => {
                let p = producer.clone();
                let aborted = blocking(move || {
                    p.abort_transaction(timeout)
                        .map_err(|e| unavailable("aborting the batch's transaction", e))
                })
                .await;
                match aborted {
                    // Clean: the producer takes the next batch, and no
                    // record of this one will ever be read.
                    Ok(()) => {
                        *slot = Some(producer);
                        if let (true, Some(index)) = (indexed, index) {
                            index.unindex().await;
                        }
                    }
                    // Dropped: the next batch of this slot starts a new one,
                    // whose init fences this one and aborts what it left open.
                    // A commit that failed may still have been applied, so
                    // the index stays (at worst it lists events never read).
                    Err(abort) => {
                        tracing::warn!(error = %abort, "dropping a transactional producer")
                    }
                }
                Err(e)
            }
        }
    }
}

/// Produces the batch's records and waits for each acknowledgement.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partitions: u32,
    events: &[DomainEvent],
    indexed: bool,
) -> Result<Vec<LogPosition>, LogError> {
    // An indexed batch fails after its index instead (see `append`).
    let fail_after =
        crate::test_hooks::kafka_batch_fail_after().filter(|&n| n < events.len() && !indexed);
    let sent = &events[..fail_after.unwrap_or(events.len())];
    let pending = enqueue(producer, topic, partitions, sent, indexed)?;
    let mut positions = Vec::with_capacity(pending.len());
    for delivery in pending {
        match delivery.await {
            Ok(Ok(d)) => positions.push(LogPosition {
                partition: d.partition as u32,
                offset: d.offset as u64,
            }),
            Ok(Err((err, _))) => return Err(produce_error(err)),
            Err(_) => return Err(LogError::Closed),
        }
    }
    if let Some(n) = fail_after {
        return Err(LogError::Unavailable(format!(
            "test hook: the batch failed after {n} of {} events",
            events.len()
        )));
    }
    Ok(positions)
}

/// A transactional producer of the events topic, its transactions initialised.
fn new_transactional(config: &KafkaConfig, id: &str) -> Result<FutureProducer, LogError> {
    let timeout = config.append_timeout.max(Duration::from_secs(1));
    let producer: FutureProducer = base_config(config)
        .set("transactional.id", id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set(
            "transaction.timeout.ms",
            (2 * timeout).as_millis().to_string(),
        )
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .create()
        .map_err(|e| unavailable("creating a transactional Kafka producer", e))?;
    producer
        .init_transactions(timeout)
        .map_err(|e| unavailable("initialising Kafka transactions", e))?;
    Ok(producer)
}
