//! An event log that fails, stalls or loses acknowledgements on chosen calls.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use herald_engine::{
    log::{EventLog, LogConsumer, LogError, LogPosition, LogRecord},
    model::DomainEvent,
};
use time::OffsetDateTime;

use super::plan::{Effect, Plan};

/// Wraps a log; `plan` says which calls of `append`, `poll` and `commit` misbehave.
pub struct FaultyLog {
    inner: Arc<dyn EventLog>,
    plan: Arc<Plan>,
}

impl FaultyLog {
    pub fn new(inner: Arc<dyn EventLog>, plan: Arc<Plan>) -> Self {
        Self { inner, plan }
    }
}

fn injected(op: &str) -> LogError {
    LogError::Unavailable(format!("injected fault in {op}"))
}

#[async_trait]
impl EventLog for FaultyLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    async fn append(&self, events: &[DomainEvent]) -> Result<Vec<LogPosition>, LogError> {
        match self.plan.next("append").await {
            Effect::Pass => self.inner.append(events).await,
            Effect::Fail => Err(injected("append")),
            Effect::FailAfter => {
                self.inner.append(events).await?;
                Err(injected("append (after writing)"))
            }
        }
    }

    async fn append_all(&self, events: &[DomainEvent]) -> Result<Vec<LogPosition>, LogError> {
        match self.plan.next("append").await {
            Effect::Pass => self.inner.append_all(events).await,
            Effect::Fail => Err(injected("append_all")),
            Effect::FailAfter => {
                self.inner.append_all(events).await?;
                Err(injected("append_all (after writing)"))
            }
        }
    }

    async fn read(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        self.inner.read(partition, offset, max).await
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        self.inner.end_offset(partition).await
    }

    async fn offset_for_time(&self, partition: u32, at: OffsetDateTime) -> Result<u64, LogError> {
        self.inner.offset_for_time(partition, at).await
    }

    fn appends(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.appends()
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let inner = self.inner.consumer(group).await?;
        Ok(Box::new(FaultyConsumer {
            inner,
            plan: self.plan.clone(),
        }))
    }
}

struct FaultyConsumer {
    inner: Box<dyn LogConsumer>,
    plan: Arc<Plan>,
}

#[async_trait]
impl LogConsumer for FaultyConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>, LogError> {
        match self.plan.next("poll").await {
            Effect::Pass => self.inner.poll(max, wait).await,
            Effect::Fail | Effect::FailAfter => Err(injected("poll")),
        }
    }

    async fn commit(&mut self, positions: &[LogPosition]) -> Result<(), LogError> {
        match self.plan.next("commit").await {
            Effect::Pass => self.inner.commit(positions).await,
            Effect::Fail => Err(injected("commit")),
            Effect::FailAfter => {
                self.inner.commit(positions).await?;
                Err(injected("commit (after writing)"))
            }
        }
    }
}
