//! The event log: Herald's outbox. An event is acknowledged to its emitter
//! only once the log has made it durable, and workers consume the log in
//! partition order, committing their position only past events whose
//! deliveries are durably scheduled (at-least-once end to end).
//!
//! The model is Kafka's: a fixed number of partitions, a tenant always maps to
//! the same partition (so one tenant's events keep their order), offsets per
//! partition, consumer groups with committed positions. [`embedded`] implements
//! it on local disk, [`kafka`] on an Apache Kafka topic; nothing outside
//! this module asks which one is running.

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::model::{DomainEvent, ScheduledDelivery};

/// Partition assignments this process's consumers were given.
static ASSIGNMENTS: AtomicU64 = AtomicU64::new(0);

/// How many times this process's consumers were assigned partitions (a
/// rebalance moved some to it): what another member left behind may be
/// this one's now. Zero on the embedded log, whose one consumer has every
/// partition.
pub fn assignments() -> u64 {
    ASSIGNMENTS.load(Ordering::Relaxed)
}

/// Counts an assignment (see [`assignments`]).
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
fn assigned() {
    ASSIGNMENTS.fetch_add(1, Ordering::Relaxed);
}

/// Where a record sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogPosition {
    /// Partition number.
    pub partition: u32,
    /// Offset within the partition, from 0.
    pub offset: u64,
}

/// One event read back from the log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Where it sits.
    pub position: LogPosition,
    /// When the log accepted it.
    pub appended_at: OffsetDateTime,
    /// The event.
    pub event: DomainEvent,
    /// Its appender indexed it in the store before it became readable
    /// ([`EventLog::append_all_indexed`]): fan-out need not index it again.
    pub indexed: bool,
}

/// The store's side of an [`EventLog::append_all_indexed`]: the index of
/// the events being appended, written while they are not readable yet.
#[async_trait]
pub trait AppendIndex: Send + Sync {
    /// Indexes the events (every record written, none readable yet).
    async fn index(&self) -> Result<(), String>;

    /// Removes what [`index`](Self::index) wrote: the append was aborted,
    /// and none of its records will ever be read.
    async fn unindex(&self);
}

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The disk refused a read or write (full, failing, permissions).
    #[error("event log I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A record could not be decoded.
    #[error("event log record at partition {partition} offset {offset} is corrupt: {reason}")]
    Corrupt {
        /// Partition of the record.
        partition: u32,
        /// Offset of the record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The partition or offset does not exist.
    #[error("no such position: partition {partition} offset {offset}")]
    OutOfRange {
        /// Partition asked for.
        partition: u32,
        /// Offset asked for.
        offset: u64,
    },
    /// The log is shutting down.
    #[error("event log closed")]
    Closed,
    /// The log's servers cannot be reached or did not acknowledge in time.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The log refused the record for good (too large, malformed).
    #[error("event log rejected the record: {0}")]
    Rejected(String),
}

impl LogError {
    /// Whether retrying later may succeed (the caller should answer 503).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LogError::Io(_) | LogError::Closed | LogError::Unavailable(_)
        )
    }
}

/// The durable, partitioned event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Number of partitions.
    fn partitions(&self) -> u32;

    /// The partition that holds `tenant_id`'s events.
    fn partition_for(&self, tenant_id: &str) -> u32 {
        partition_for(tenant_id, self.partitions())
    }

    /// Appends events, each to its tenant's partition, in the given order.
    /// Returns only once every event is durable (fsync'd, or acknowledged by
    /// all in-sync replicas); on error none of them may be considered
    /// appended by the caller (some may still be, so appends must be safe to
    /// repeat: consumers deduplicate by event id).
    async fn append(&self, events: &[DomainEvent]) -> Result<Vec<LogPosition>, LogError>;

    /// Appends events all or nothing: on error none of them is ever read
    /// (the batch emit's contract). By default one [`append`](Self::append)
    /// (the embedded log writes a tenant's batch in one write to one
    /// partition file, a torn tail cut at restart); Kafka uses a transaction.
    async fn append_all(&self, events: &[DomainEvent]) -> Result<Vec<LogPosition>, LogError> {
        self.append(events).await
    }

    /// [`append_all`](Self::append_all) with the events indexed inside it:
    /// `index` runs once every record is written and before any is
    /// readable, a failure of it aborts the append, and an aborted append
    /// is unindexed (only when the abort is certain: an abort that fails
    /// may leave the records to be committed, and leaves their index).
    /// Records so appended are read with [`LogRecord::indexed`] set.
    /// `None` when the log cannot hold records unreadable (no
    /// transactions): nothing was appended, the caller appends and indexes
    /// as usual.
    async fn append_all_indexed(
        &self,
        _events: &[DomainEvent],
        _index: &dyn AppendIndex,
    ) -> Option<Result<Vec<LogPosition>, LogError>> {
        None
    }

    /// Reads up to `max` records of `partition` starting at `offset`.
    async fn read(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, LogError>;

    /// The offset the next append to `partition` will get.
    async fn end_offset(&self, partition: u32) -> Result<u64, LogError>;

    /// The first offset of `partition` appended at or after `at` (the end
    /// offset if none), for replays by time.
    async fn offset_for_time(&self, partition: u32, at: OffsetDateTime) -> Result<u64, LogError>;

    /// The committed position of consumer group `group` per partition (a
    /// missing partition has committed nothing), or `None` when the backend
    /// does not report it here (the broker's own tooling does). Feeds the
    /// consumer-lag metric.
    async fn committed(
        &self,
        _group: &str,
    ) -> Result<Option<std::collections::BTreeMap<u32, u64>>, LogError> {
        Ok(None)
    }

    /// A receiver whose value changes after every durable append (any
    /// partition), to wake readers instead of polling. `None` when the
    /// backend cannot tell; readers then poll.
    fn appends(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// A consumer in group `group` over every partition, starting at the
    /// group's committed positions.
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError>;

    /// A consumer in group `group` that also keeps its partitions' pending
    /// deliveries in a schedule changelog, when the backend has one: each
    /// partition assigned to it is restored into `sink` before any of its
    /// records is read, and its offsets are committed atomically with what
    /// the returned [`ScheduleLog`] kept since the last commit. The default
    /// has no changelog: a plain [`consumer`](Self::consumer) and `None`.
    async fn consumer_keeping(
        &self,
        group: &str,
        _sink: Arc<dyn PendingSink>,
    ) -> Result<(Box<dyn LogConsumer>, Option<Arc<dyn ScheduleLog>>), LogError> {
        Ok((self.consumer(group).await?, None))
    }

    /// Deletes what the log keeps past its retention: records appended
    /// before `before_ms` that every consumer group has committed past.
    /// Returns the records deleted. The default deletes nothing (Kafka
    /// deletes by the topic's `retention.ms`).
    async fn drop_before(&self, _before_ms: i64) -> Result<u64, LogError> {
        Ok(0)
    }
}

/// A group member reading the log.
#[async_trait]
pub trait LogConsumer: Send {
    /// The next batch of at most `max` records, waiting until at least one
    /// is there or `wait` has passed (then the batch may be empty).
    async fn poll(
        &mut self,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<LogRecord>, LogError>;

    /// Durably records that every record before `positions` (exclusive, per
    /// partition) is processed. After a restart the group resumes there.
    async fn commit(&mut self, positions: &[LogPosition]) -> Result<(), LogError>;
}

/// A delivery kept by a schedule changelog: a retry waiting for its due
/// time, with the event it carries (so restoring it reads nothing else).
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The delivery, its next attempt and due time.
    pub delivery: ScheduledDelivery,
    /// Its event.
    pub event: DomainEvent,
}

/// The schedule changelog of a [`EventLog::consumer_keeping`] consumer: a
/// compacted log, co-partitioned with the events, of the deliveries the
/// consumer's process keeps in memory. What it is given becomes durable
/// with the consumer's offsets, in one transaction.
#[async_trait]
pub trait ScheduleLog: Send + Sync + 'static {
    /// Keeps `pending` (replacing what the delivery's id kept before);
    /// returns once it is durable (its transaction committed).
    async fn keep(&self, pending: &Pending) -> Result<(), LogError>;

    /// Forgets a delivery (finished, or moved to the store's schedule);
    /// returns once that is durable.
    async fn forget(&self, tenant_id: &str, delivery_id: &str) -> Result<(), LogError>;
}

/// Where a [`EventLog::consumer_keeping`] consumer restores its partitions'
/// pending deliveries.
pub trait PendingSink: Send + Sync + 'static {
    /// `partition` was assigned to this process: what its changelog keeps.
    fn restored(&self, partition: u32, pending: Vec<Pending>);

    /// `partition` went to another process, which restores it from the
    /// changelog: forget its pending deliveries here.
    fn revoked(&self, partition: u32);
}

/// How far consumer group `group` is behind the end of each partition of
/// `log` (records not committed past), or `Ok(None)` when the log does not
/// report the group's positions ([`EventLog::committed`]).
pub async fn consumer_lag(log: &dyn EventLog, group: &str) -> Result<Option<Vec<u64>>, LogError> {
    let progress = consumer_progress(log, group).await?;
    Ok(progress.map(|p| p.iter().map(Progress::lag).collect()))
}

/// Where a consumer group stands in one partition ([`consumer_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The offset the group committed past (its next record).
    pub committed: u64,
    /// The partition's end offset.
    pub end: u64,
}

impl Progress {
    /// Records the group has not committed past.
    pub fn lag(&self) -> u64 {
        self.end.saturating_sub(self.committed)
    }
}

/// Consumer group `group`'s committed offset and the end of each partition
/// of `log`, or `Ok(None)` when the log does not report the group's
/// positions ([`EventLog::committed`]).
pub async fn consumer_progress(
    log: &dyn EventLog,
    group: &str,
) -> Result<Option<Vec<Progress>>, LogError> {
    let Some(committed) = log.committed(group).await? else {
        return Ok(None);
    };
    let mut progress = Vec::with_capacity(log.partitions() as usize);
    for partition in 0..log.partitions() {
        progress.push(Progress {
            committed: committed.get(&partition).copied().unwrap_or(0),
            end: log.end_offset(partition).await?,
        });
    }
    Ok(Some(progress))
}

/// The partition of a tenant: a stable hash (CRC-32 of the id) modulo the
/// partition count, identical in every process and across versions.
pub fn partition_for(tenant_id: &str, partitions: u32) -> u32 {
    crc32fast::hash(tenant_id.as_bytes()) % partitions.max(1)
}
