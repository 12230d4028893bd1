//! The delivery log in SQLite; attempts are written in combined jobs
//! (`attempts`) with the schedule change each one makes.

use async_trait::async_trait;
use rusqlite::types::Value;
use tokio::sync::oneshot;

use super::{
    attempts::{self, ScheduleChange},
    json_err, query_bodies, EmbeddedStore,
};
use crate::{
    model::{ScheduledDelivery, WebhookDeliveryLog},
    store::{DeliveryLogStore, LogFilter, StoreError},
};

#[async_trait]
impl DeliveryLogStore for EmbeddedStore {
    async fn record_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError> {
        let change = match next {
            Some(next) => ScheduleChange::Reschedule(next),
            None => ScheduleChange::Remove,
        };
        self.queue_attempt(attempt, change).await
    }

    async fn log_attempt(&self, attempt: WebhookDeliveryLog) -> Result<(), StoreError> {
        self.queue_attempt(attempt, ScheduleChange::Keep).await
    }

    async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryLog>, StoreError> {
        let mut sql = String::from("SELECT body FROM delivery_logs WHERE tenant_id = ?");
        let mut args = vec![Value::from(tenant_id.to_string())];
        for (column, value) in [
            ("subscription_id", &filter.subscription_id),
            ("event_id", &filter.event_id),
            ("outcome", &filter.outcome),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(Value::from(v.clone()));
            }
        }
        if let Some(before) = &filter.before {
            sql.push_str(" AND id < ?");
            args.push(Value::from(before.clone()));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(Value::from(limit as i64));
        self.read(move |conn| query_bodies(conn, &sql, args)).await
    }
}

impl EmbeddedStore {
    /// Queues an attempt for the writer's next combined job; returns once
    /// the commit holding it is done.
    async fn queue_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        change: ScheduleChange,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(&attempt).map_err(json_err)?;
        let (reply, answer) = oneshot::channel();
        let first = self.attempts.push(attempts::Pending {
            attempt,
            body,
            change,
            reply,
        });
        if first && self.writer.send(self.attempts.job()).await.is_err() {
            self.attempts.refuse("store is shutting down");
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }
}
