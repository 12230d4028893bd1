//! Herald's own events to a tenant — `herald.subscription.disabled`,
//! `herald.delivery.dead`, `herald.circuit.opened`, `herald.circuit.closed`
//! — emitted through the same pipeline as any event (durable log, fan-out,
//! signed delivery, stream), so teams subscribe to them like to any other.
//!
//! They are only delivered to subscriptions that name them (`herald.*` or an
//! exact type; `*` does not match them), and a dead delivery of an
//! operational event emits nothing, so a broken endpoint subscribed to
//! `herald.*` cannot feed itself a loop.

use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use crate::{
    ids,
    log::EventLog,
    metrics::Metrics,
    model::{DomainEvent, EventSource},
    store::Store,
};

/// A subscription was disabled (410 Gone, or failing for too long).
pub const SUBSCRIPTION_DISABLED: &str = "herald.subscription.disabled";
/// A delivery used up its retry schedule.
pub const DELIVERY_DEAD: &str = "herald.delivery.dead";
/// An endpoint's circuit opened.
pub const CIRCUIT_OPENED: &str = "herald.circuit.opened";
/// An endpoint's circuit closed again.
pub const CIRCUIT_CLOSED: &str = "herald.circuit.closed";

/// Emits operational events into the event log.
#[derive(Clone)]
pub struct OperationalEvents {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl OperationalEvents {
    /// An emitter writing to `log` and indexing in `store`.
    pub fn new(log: Arc<dyn EventLog>, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            log,
            store,
            metrics,
        }
    }

    /// Emits `event_type` with `payload` to `tenant_id`. Best effort: a
    /// failure is logged, never propagated into the delivery path.
    pub async fn emit(&self, tenant_id: &str, event_type: &'static str, payload: Value) {
        let now = OffsetDateTime::now_utc();
        let event = DomainEvent {
            id: ids::new_id(ids::EVENT),
            tenant_id: tenant_id.to_string(),
            event_type: event_type.to_string(),
            schema_version: 1,
            dedupe_key: None,
            occurred_at: now,
            received_at: now,
            payload: payload.into(),
            source: EventSource::Herald,
            aggregate_type: None,
            aggregate_id: None,
            trace_id: None,
        };
        match self.log.append(std::slice::from_ref(&event)).await {
            Ok(positions) => {
                self.metrics.event_ingested(EventSource::Herald);
                if let Err(e) = self.store.record_event(&event, positions[0], 0).await {
                    tracing::debug!(error = %e, "operational event not indexed yet; fan-out will");
                }
                tracing::info!(tenant_id, event_type, event_id = %event.id, "operational event emitted");
            }
            Err(e) => {
                tracing::error!(error = %e, tenant_id, event_type, "could not emit an operational event")
            }
        }
    }
}
