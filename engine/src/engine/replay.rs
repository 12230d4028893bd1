//! Replaying one event: new deliveries linked to the ones they replay.

use crate::audit::{self, action, AuditRecord};
use crate::{
    clock::now_ms,
    error::EngineError,
    ids,
    model::{Ordering, ScheduledDelivery},
    store::LogFilter,
};

use super::Engine;

/// A delivery created by a replay.
#[derive(Debug, Clone)]
pub struct ReplayedDelivery {
    /// The new delivery.
    pub delivery_id: String,
    /// Where it goes.
    pub subscription_id: String,
    /// The delivery it replays, if the event went there before.
    pub replay_of: Option<String>,
}

impl Engine {
    /// Delivers an event again: to one subscription of the tenant, or to
    /// every subscription that matches it now and takes deliveries (active,
    /// or paused: held until resumed). Each replay is a new
    /// delivery (same `webhook-id`) whose attempts link to the one it replays.
    pub async fn replay(
        &self,
        tenant_id: &str,
        event_id: &str,
        subscription_id: Option<&str>,
    ) -> Result<Vec<ReplayedDelivery>, EngineError> {
        let event = self
            .store
            .get_event(tenant_id, event_id)
            .await?
            .ok_or(EngineError::NotFound("event"))?;
        let targets = match subscription_id {
            Some(id) => vec![self.subscription(tenant_id, id).await?],
            None => self
                .subscriptions
                .matching_event(&event)
                .iter()
                .map(|s| (**s).clone())
                .collect(),
        };
        let now = now_ms();
        let mut replayed = Vec::with_capacity(targets.len());
        let mut scheduled = Vec::with_capacity(targets.len());
        for sub in targets {
            let filter = LogFilter {
                event_id: Some(event.id.clone()),
                subscription_id: Some(sub.id.clone()),
                ..Default::default()
            };
            let previous = self.store.list_delivery_logs(tenant_id, &filter, 1).await?;
            let replay_of = previous.into_iter().next().map(|l| l.delivery_id);
            let delivery_id = ids::new_id(ids::DELIVERY);
            scheduled.push(ScheduledDelivery {
                delivery_id: delivery_id.clone(),
                tenant_id: tenant_id.to_string(),
                event_id: event.id.clone(),
                subscription_id: sub.id.clone(),
                attempt: 1,
                replay_of: replay_of.clone(),
                is_replay: true,
                due_at_ms: now,
                // Replays queue behind everything pending for an ordered subscription.
                seq: i64::MAX,
                ordered: sub.ordering == Ordering::Strict,
            });
            replayed.push(ReplayedDelivery {
                delivery_id,
                subscription_id: sub.id,
                replay_of,
            });
        }
        let mut record = AuditRecord::new(tenant_id, action::REPLAY_REQUESTED)
            .target(event_id)
            .detail("deliveries", scheduled.len());
        if let Some(id) = subscription_id {
            record = record.subscription(id);
        }
        audit::recorded(record, self.store.schedule(scheduled)).await?;
        self.wake.notify_one();
        Ok(replayed)
    }
}
