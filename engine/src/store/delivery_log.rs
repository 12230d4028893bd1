//! The delivery log: one record per attempt, written in the same step that
//! settles the delivery in the schedule.

use async_trait::async_trait;

use super::StoreError;
use crate::model::{ScheduledDelivery, WebhookDeliveryLog};

/// Filters of the delivery log list.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only attempts to this subscription.
    pub subscription_id: Option<String>,
    /// Only attempts for this event.
    pub event_id: Option<String>,
    /// Only attempts with this outcome (`delivered`, `failed`, `dead`).
    pub outcome: Option<String>,
    /// Only attempts with ids before this one (the page cursor; newest first).
    pub before: Option<String>,
}

/// Delivery attempts.
#[async_trait]
pub trait DeliveryLogStore: Send + Sync + 'static {
    /// Records an attempt and, in the same transaction, either reschedules
    /// the delivery (`next`) or removes it from the schedule.
    async fn record_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError>;

    /// Records an attempt of a delivery fan-out handed over without writing
    /// it to the schedule ([`crate::delivery::handoff`]): there is no
    /// schedule entry to read, settle or remove. Stores without such
    /// hand-offs record it as a final attempt.
    async fn record_unscheduled_attempt(
        &self,
        attempt: WebhookDeliveryLog,
    ) -> Result<(), StoreError> {
        self.record_attempt(attempt, None).await
    }

    /// A tenant's delivery attempts, newest first.
    async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryLog>, StoreError>;
}
