//! The delivery log, written three ways so each list is one partition walk:
//! by tenant and day, by subscription and day, and by event (an event's
//! attempts are one clustering slice of its ten-second slot). Each attempt
//! also moves the latest outcome of its `(subscription, event)` in
//! `sub_event_state`, which a recovery reads.
//! An attempt's body is written once, to `logs_by_tenant`: the other two
//! tables hold its keys and outcome, and a list by subscription or event
//! reads the bodies of its page from `logs_by_tenant` (one `IN` query per
//! day). Rows written before that carry their body and are read as they are.
//! Rows expire with the tables' default TTL (the retention). Attempts
//! recorded together are written together (`log_writer`).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::{decode, id_day, ScyllaStore};
use crate::{
    model::{ScheduledDelivery, WebhookDeliveryLog},
    store::{DeliveryLogStore, LogFilter, StoreError},
};

#[async_trait]
impl DeliveryLogStore for ScyllaStore {
    async fn record_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError> {
        self.log_writer.write(&attempt).await?;
        self.settle(&attempt.delivery_id, next).await
    }

    /// Only the log: no schedule read, no delete.
    async fn log_attempt(&self, attempt: WebhookDeliveryLog) -> Result<(), StoreError> {
        self.log_writer.write(&attempt).await
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
        let rows = if let Some(event_id) = &filter.event_id {
            // One slice of one partition: no day walk.
            let before = before.unwrap_or(super::TOP);
            let mut rows: Vec<(String, String, String, Option<String>)> = self
                .rows(
                    "SELECT id, subscription_id, outcome, body FROM logs_by_event_slot WHERE tenant_id = ? AND slot = ? AND event_id = ? AND id < ?",
                    (tenant_id, super::event_slot(event_id), event_id, before),
                )
                .await?;
            if self.legacy_by_event {
                // Attempts recorded by an older version, until they expire.
                rows.extend(
                    self.rows::<(String, String, String, Option<String>)>(
                        "SELECT id, subscription_id, outcome, body FROM logs_by_event WHERE tenant_id = ? AND event_id = ? AND id < ?",
                        (tenant_id, event_id, before),
                    )
                    .await?,
                );
                rows.sort_unstable_by(|a, b| b.0.cmp(&a.0));
                rows.dedup_by(|a, b| a.0 == b.0);
            }
            rows.into_iter()
                .filter(|(_, s, o, _)| keep(s, o))
                .take(limit)
                .map(|(id, _, _, b)| (id, b))
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
        self.with_bodies(tenant_id, rows)
            .await?
            .iter()
            .map(|b| decode(b))
            .collect()
    }
}

impl ScyllaStore {
    /// The bodies of `rows` (`(id, body)`, in order), those missing read
    /// from `logs_by_tenant`. A row whose body is not there is left out:
    /// its attempt's write failed part-way (the writer reports such a write
    /// failed, and the delivery is attempted again).
    async fn with_bodies(
        &self,
        tenant_id: &str,
        rows: Vec<(String, Option<String>)>,
    ) -> Result<Vec<String>, StoreError> {
        let mut days: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        for (id, _) in rows.iter().filter(|(_, b)| b.is_none()) {
            days.entry(id_day(id)).or_default().push(id);
        }
        let mut found = HashMap::new();
        for (day, ids) in days {
            let bodies: Vec<(String, String)> = self
                .rows(
                    "SELECT id, body FROM logs_by_tenant WHERE tenant_id = ? AND day = ? AND id IN ?",
                    (tenant_id, day, ids),
                )
                .await?;
            found.extend(bodies);
        }
        Ok(rows
            .into_iter()
            .filter_map(|(id, body)| body.or_else(|| found.remove(&id)))
            .collect())
    }
}
