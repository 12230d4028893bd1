//! A member of a consumer group on the events topic.
//!
//! Assignment is `cooperative-sticky` (a rebalance moves only the partitions
//! that must move; the others keep flowing) and auto-commit is off: the only
//! offsets ever committed are the ones the fan-out passes to
//! [`LogConsumer::commit`], which it does only after the store made the
//! batch's deliveries durable. A member that dies loses nothing: its
//! partitions go to another member after the session timeout, which resumes
//! at the last committed offset (re-reading, and skipping as already fanned
//! out, what the dead member had finished but not committed).
//!
//! A member that keeps a schedule changelog ([`super::changelog`]) returns
//! no record of a partition it is assigned before it restored the
//! partition's pending deliveries, and commits its offsets in the
//! changelog's transaction.
//!
//! A member that stalled, its group without a coordinator or its
//! partitions without their committed offsets for 30 s (librdkafka's
//! statistics say so, [`super::stall`]), is given a new consumer, which
//! bootstraps afresh.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    ClientContext, Message, Offset, Statistics, TopicPartitionList,
};

use super::{
    base_config, blocking,
    changelog::Changelog,
    stall::{StallWatch, STALLED_AFTER, STATS_EVERY},
    to_record, unavailable,
};
use crate::{
    config::KafkaConfig,
    log::{LogConsumer, LogError, LogPosition, LogRecord, PendingSink},
};

/// How long the drain of an already-fetched batch waits for the next record.
const DRAIN_WAIT: Duration = Duration::from_millis(2);
/// How long the broker holds a fetch that finds no records.
const FETCH_WAIT_MAX: Duration = Duration::from_millis(100);

/// A group member over every partition of the topic it was given.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Rebalances>>,
    config: KafkaConfig,
    topic: String,
    group: String,
    keeping: Option<Keeping>,
    /// Records read but not returned because their partitions' restore
    /// failed: the next poll returns them once it succeeds.
    held: Vec<LogRecord>,
}

/// A member's schedule changelog and where it restores it.
struct Keeping {
    changelog: Arc<Changelog>,
    sink: Arc<dyn PendingSink>,
    config: KafkaConfig,
}

/// Logs each change of this member's partitions, so an operator (and the
/// scale-out figures) can see when a rebalance moved what; with a
/// changelog, marks what it was assigned to be restored (and wakes the
/// poll to do it) and tells the sink what it lost.
struct Rebalances {
    to_restore: Arc<parking_lot::Mutex<BTreeSet<i32>>>,
    /// Woken when partitions wait to be restored, so a poll that was
    /// waiting for records returns and the next restores them at once.
    assigned: Arc<tokio::sync::Notify>,
    sink: Option<Arc<dyn PendingSink>>,
    /// The changelog, told what this member owns.
    changelog: Option<Arc<Changelog>>,
    /// Says when the consumer stalled; the next poll replaces it.
    stalled: StallWatch,
    /// A replaced consumer's: its rebalances (the revoke of its close) are
    /// not passed on, as its successor owns the partitions now.
    retired: AtomicBool,
}

impl Rebalances {
    /// A context sharing `self`'s restore queue, wake-up, sink and
    /// changelog (for the consumer that replaces `self`'s).
    fn successor(&self) -> Self {
        Self {
            to_restore: self.to_restore.clone(),
            assigned: self.assigned.clone(),
            sink: self.sink.clone(),
            changelog: self.changelog.clone(),
            stalled: Default::default(),
            retired: Default::default(),
        }
    }
}

impl ClientContext for Rebalances {
    /// Feeds the statistics to the stall watch (see [`super::stall`]).
    fn stats(&self, statistics: Statistics) {
        if !self.retired.load(Ordering::Relaxed) {
            self.stalled.observe(&statistics);
        }
    }
}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let partitions = |list: &TopicPartitionList| -> Vec<i32> {
            list.elements().iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            Rebalance::Assign(list) => {
                super::super::assigned();
                tracing::info!(partitions = ?partitions(list), "partitions assigned");
                if let Some(changelog) = &self.changelog {
                    changelog.assigned(&partitions(list));
                }
                if self.sink.is_some() && list.count() > 0 {
                    // Nothing of them leaves `poll` before their schedule is
                    // restored. They are not paused meanwhile: librdkafka
                    // does not wake its fetcher when a partition it already
                    // started is resumed, which left the first fetch of a
                    // new owner up to a second late.
                    self.to_restore.lock().extend(partitions(list));
                    self.assigned.notify_one();
                }
            }
            Rebalance::Revoke(list) => self.revoked(&partitions(list)),
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
    }
}

impl Rebalances {
    /// This member lost `partitions`: the changelog and the sink are told.
    fn revoked(&self, partitions: &[i32]) {
        tracing::info!(?partitions, "partitions revoked");
        if let Some(changelog) = &self.changelog {
            changelog.revoked(partitions);
        }
        if let Some(sink) = &self.sink {
            let mut to_restore = self.to_restore.lock();
            for &p in partitions {
                to_restore.remove(&p);
                sink.revoked(p.max(0) as u32);
            }
        }
    }
}

impl KafkaConsumer {
    /// Joins `group` on `topic`; a new group starts at the earliest offset.
    pub fn join(config: &KafkaConfig, topic: &str, group: &str) -> Result<Self, LogError> {
        Self::join_keeping(config, topic, group, None)
    }

    /// Joins `group` on `topic`, keeping the schedule in `keeping`'s
    /// changelog and restoring it into its sink, when given.
    pub(super) fn join_keeping(
        config: &KafkaConfig,
        topic: &str,
        group: &str,
        keeping: Option<(Arc<Changelog>, Arc<dyn PendingSink>)>,
    ) -> Result<Self, LogError> {
        let context = Rebalances {
            to_restore: Default::default(),
            assigned: Default::default(),
            sink: keeping.as_ref().map(|(_, sink)| sink.clone()),
            changelog: keeping.as_ref().map(|(changelog, _)| changelog.clone()),
            stalled: Default::default(),
            retired: Default::default(),
        };
        let consumer = Arc::new(create(config, topic, group, context)?);
        tracing::info!(topic, group, "joined the consumer group");
        let keeping = keeping.map(|(changelog, sink)| {
            fence_with(&changelog, &consumer);
            Keeping {
                changelog,
                sink,
                config: config.clone(),
            }
        });
        Ok(Self {
            consumer,
            config: config.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            keeping,
            held: Vec::new(),
        })
    }

    /// Replaces a consumer that stalled ([`super::stall`]) by a
    /// new one under the same group (and `--worker-id`), which bootstraps
    /// afresh; the old one closes on a thread of its own (without a
    /// coordinator its close may take long), its rebalances ignored.
    fn replace_if_stalled(&mut self) -> Result<(), LogError> {
        let context = self.consumer.context();
        if !context.stalled.take() {
            return Ok(());
        }
        let fresh = create(&self.config, &self.topic, &self.group, context.successor())?;
        let old = std::mem::replace(&mut self.consumer, Arc::new(fresh));
        // What the old one still holds is let go of here, as a revoke
        // would; its own rebalances are muted from now on.
        let held: Vec<i32> = old
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        old.context().retired.store(true, Ordering::Relaxed);
        if !held.is_empty() {
            old.context().revoked(&held);
        }
        if let Some(k) = &self.keeping {
            fence_with(&k.changelog, &self.consumer);
        }
        std::thread::spawn(move || drop(old));
        tracing::warn!(
            group = %self.group,
            stalled_s = STALLED_AFTER.as_secs(),
            "the consumer group found no coordinator, or no committed offsets, for a while; joined again with a new consumer"
        );
        Ok(())
    }
}

/// Reads the group metadata for the changelog's fence from `consumer`.
fn fence_with(changelog: &Changelog, consumer: &Arc<StreamConsumer<Rebalances>>) {
    let member = Arc::downgrade(consumer);
    changelog.fence_with(Box::new(move || {
        member.upgrade().and_then(|c| c.group_metadata())
    }));
}

/// A consumer of `topic` in `group`, subscribed, with `context`.
fn create(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
    context: Rebalances,
) -> Result<StreamConsumer<Rebalances>, LogError> {
    let mut settings = base_config(config);
    if let Some(id) = &config.worker_id {
        // A static member: restarted under the same id, it takes its
        // partitions back without waiting for its old session to end.
        settings.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<Rebalances> = settings
        .set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Never the records of an aborted batch (the default, said).
        .set("isolation.level", "read_committed")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "1000")
        // A partition that becomes fetchable (assigned, its offset
        // looked up) joins the fetches after the one in flight; the
        // broker holds an empty fetch this long (500 ms by default,
        // which delayed a new owner's first records by up to a second).
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX.as_millis().to_string())
        .set(
            "statistics.interval.ms",
            STATS_EVERY.as_millis().to_string(),
        )
        .create_with_context(context)
        .map_err(|e| unavailable("creating the Kafka consumer", e))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| unavailable("subscribing to the events topic", e))?;
    Ok(consumer)
}

impl KafkaConsumer {
    /// Restores the changelog of every partition assigned and not restored
    /// yet into the sink.
    async fn restore_assigned(&self, k: &Keeping) -> Result<(), LogError> {
        let to_restore = self.consumer.context().to_restore.clone();
        let asked: Vec<u32> = to_restore.lock().iter().map(|&p| p.max(0) as u32).collect();
        if asked.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (config, topic) = (k.config.clone(), k.changelog.topic().to_string());
        let restored = blocking(move || super::changelog::restore(&config, &topic, &asked)).await?;
        let (mut partitions, mut pending) = (0, 0);
        for (p, kept) in restored {
            // Revoked meanwhile: its next owner restores it.
            if !to_restore.lock().remove(&(p as i32)) {
                continue;
            }
            partitions += 1;
            pending += kept.len();
            k.sink.restored(p, kept);
        }
        tracing::info!(
            partitions,
            pending,
            took_ms = started.elapsed().as_millis() as u64,
            "restored the partitions' schedule from the changelog"
        );
        Ok(())
    }

    /// The error a failed receive is reported as: a fatal one (the group
    /// fenced this static member) says what to fix.
    fn failed(&self, e: rdkafka::error::KafkaError) -> LogError {
        match self.consumer.client().fatal_error() {
            Some((code, reason)) => LogError::Unavailable(format!(
                "the Kafka consumer stopped for good ({code}: {reason}); with --worker-id \
                 set, another worker runs with the same id: give each its own and restart this one"
            )),
            None => unavailable("consuming the events topic", e),
        }
    }

    fn push(&self, out: &mut Vec<LogRecord>, m: &impl Message) {
        let partition = m.partition().max(0) as u32;
        match to_record(m, partition) {
            Ok(r) => out.push(r),
            // Only Herald writes this topic; a record it cannot read is a bug
            // or a stranger's write. Say so loudly, and do not stall the partition.
            Err(e) => {
                tracing::error!(error = %e, topic = %self.topic, "skipping an unreadable record")
            }
        }
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>, LogError> {
        self.replace_if_stalled()?;
        if let Some(k) = &self.keeping {
            self.restore_assigned(k).await?;
        }
        let mut out = std::mem::take(&mut self.held);
        if !out.is_empty() {
            return Ok(out);
        }
        let assigned = self.consumer.context().assigned.clone();
        // Partitions assigned while waiting: restore them now, while
        // librdkafka looks up their offsets and fetches.
        let first = tokio::select! {
            first = tokio::time::timeout(wait, self.consumer.recv()) => first,
            () = assigned.notified() => return Ok(out),
        };
        match first {
            Err(_) => return Ok(out),
            Ok(Err(e)) => return Err(self.failed(e)),
            Ok(Ok(m)) => self.push(&mut out, &m),
        }
        while out.len() < max {
            match tokio::time::timeout(DRAIN_WAIT, self.consumer.recv()).await {
                Ok(Ok(m)) => self.push(&mut out, &m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error after a partial batch");
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(k) = &self.keeping {
            // Records of partitions assigned during this poll wait for their
            // schedule (kept here, not dropped, if the restore fails).
            if let Err(e) = self.restore_assigned(k).await {
                self.held = out;
                return Err(e);
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, positions: &[LogPosition]) -> Result<(), LogError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            tpl.add_partition_offset(
                &self.topic,
                p.partition as i32,
                Offset::Offset(p.offset as i64),
            )
            .map_err(|e| unavailable("building a commit", e))?;
        }
        if let Some(k) = &self.keeping {
            let group = self.consumer.group_metadata().ok_or_else(|| {
                LogError::Unavailable("the consumer has no group metadata".into())
            })?;
            return k.changelog.commit(Some((tpl, group))).await;
        }
        let consumer = self.consumer.clone();
        blocking(move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| unavailable("committing consumer offsets", e))
        })
        .await
    }
}
