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

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    ClientContext, Message, Offset, TopicPartitionList,
};

use super::{base_config, blocking, to_record, unavailable};
use crate::{
    config::KafkaConfig,
    log::{LogConsumer, LogError, LogPosition, LogRecord},
};

/// How long the drain of an already-fetched batch waits for the next record.
const DRAIN_WAIT: Duration = Duration::from_millis(2);

/// A group member over every partition of the topic it was given.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Rebalances>>,
    topic: String,
}

/// Logs each change of this member's partitions, so an operator (and the
/// scale-out figures) can see when a rebalance moved what.
struct Rebalances;

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |list: &TopicPartitionList| -> Vec<i32> {
            list.elements().iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            Rebalance::Assign(list) => {
                super::super::assigned();
                tracing::info!(partitions = ?partitions(list), "partitions assigned")
            }
            Rebalance::Revoke(list) => {
                tracing::info!(partitions = ?partitions(list), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
    }
}

impl KafkaConsumer {
    /// Joins `group` on `topic`; a new group starts at the earliest offset.
    pub fn join(config: &KafkaConfig, topic: &str, group: &str) -> Result<Self, LogError> {
        let consumer: StreamConsumer<Rebalances> = base_config(config)
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
            .create_with_context(Rebalances)
            .map_err(|e| unavailable("creating the Kafka consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| unavailable("subscribing to the events topic", e))?;
        tracing::info!(topic, group, "joined the consumer group");
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
        })
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
        let mut out = Vec::new();
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(Err(e)) => return Err(unavailable("consuming the events topic", e)),
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
        let consumer = self.consumer.clone();
        blocking(move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| unavailable("committing consumer offsets", e))
        })
        .await
    }
}
