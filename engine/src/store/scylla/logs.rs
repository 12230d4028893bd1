//! The delivery log, written three ways so each list is one partition walk:
//! by tenant and day, by subscription and day, and by event (an event's
//! attempts are few). Each attempt also moves the latest outcome of its
//! `(subscription, event)` in `sub_event_state`, which a recovery reads.
//! Rows expire with the tables' default TTL (the retention).

use async_trait::async_trait;

use super::{decode, encode, id_day, ScyllaStore};
use crate::{
    model::{ScheduledDelivery, WebhookDeliveryLog},
    store::{DeliveryLogStore, LogFilter, StoreError},
};

impl ScyllaStore {
    /// Records one attempt in every log table (concurrently; idempotent by id).
    pub(super) async fn write_log(&self, a: &WebhookDeliveryLog) -> Result<(), StoreError> {
        let body = encode(a)?;
        let outcome = a.outcome.as_str();
        let day = id_day(&a.id);
        let by_tenant = self.exec(
            "INSERT INTO logs_by_tenant (tenant_id, day, id, subscription_id, outcome, body) VALUES (?, ?, ?, ?, ?, ?)",
            (&a.tenant_id, day, &a.id, &a.subscription_id, outcome, &body),
        );
        let by_subscription = self.exec(
            "INSERT INTO logs_by_subscription (tenant_id, subscription_id, day, id, outcome, body) VALUES (?, ?, ?, ?, ?, ?)",
            (&a.tenant_id, &a.subscription_id, day, &a.id, outcome, &body),
        );
        let by_event = self.exec(
            "INSERT INTO logs_by_event (tenant_id, event_id, id, subscription_id, outcome, body) VALUES (?, ?, ?, ?, ?, ?)",
            (&a.tenant_id, &a.event_id, &a.id, &a.subscription_id, outcome, &body),
        );
        let latest = self.exec(
            "INSERT INTO sub_event_state (tenant_id, subscription_id, day, event_id, delivery_id, outcome) VALUES (?, ?, ?, ?, ?, ?)",
            (
                &a.tenant_id,
                &a.subscription_id,
                id_day(&a.event_id),
                &a.event_id,
                &a.delivery_id,
                outcome,
            ),
        );
        futures::try_join!(by_tenant, by_subscription, by_event, latest)?;
        Ok(())
    }
}

#[async_trait]
impl DeliveryLogStore for ScyllaStore {
    async fn record_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError> {
        self.write_log(&attempt).await?;
        self.settle(&attempt.delivery_id, next).await
    }

    /// Only the log: the delivery has no schedule row (no read, no delete).
    async fn record_unscheduled_attempt(
        &self,
        attempt: WebhookDeliveryLog,
    ) -> Result<(), StoreError> {
        self.write_log(&attempt).await
    }

    async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryLog>, StoreError> {
        let outcome = filter.outcome.clone();
        let subscription = filter.subscription_id.clone();
        let keep = |sub: &str, out: &str| {
            outcome.as_deref().is_none_or(|o| o == out)
                && subscription.as_deref().is_none_or(|s| s == sub)
        };
        let before = filter.before.as_deref();
        let bodies = if let Some(event_id) = &filter.event_id {
            // One partition per event: no day walk.
            let rows: Vec<(String, String, String)> = self
                .rows(
                    "SELECT subscription_id, outcome, body FROM logs_by_event WHERE tenant_id = ? AND event_id = ? AND id < ?",
                    (tenant_id, event_id, before.unwrap_or(super::TOP)),
                )
                .await?;
            rows.into_iter()
                .filter(|(s, o, _)| keep(s, o))
                .take(limit)
                .map(|(_, _, b)| b)
                .collect()
        } else if let Some(sub) = &filter.subscription_id {
            self.walk_days(
                "SELECT id, subscription_id, outcome, body FROM logs_by_subscription WHERE tenant_id = ? AND subscription_id = ? AND day = ? AND id < ? LIMIT ?",
                &[tenant_id, sub],
                before,
                limit,
                keep,
            )
            .await?
        } else {
            self.walk_days(
                "SELECT id, subscription_id, outcome, body FROM logs_by_tenant WHERE tenant_id = ? AND day = ? AND id < ? LIMIT ?",
                &[tenant_id],
                before,
                limit,
                keep,
            )
            .await?
        };
        bodies.iter().map(|b| decode(b)).collect()
    }
}
