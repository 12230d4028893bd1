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

    /// Records an attempt and leaves the schedule as it is: the delivery has
    /// no entry there (fan-out handed it over unscheduled,
    /// [`crate::delivery::handoff`]), or another write moves its entry (a
    /// delivery the open circuit refused is parked next).
    async fn log_attempt(&self, attempt: WebhookDeliveryLog) -> Result<(), StoreError>;

    /// A tenant's delivery attempts, newest first.
    async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryLog>, StoreError>;
}
