//! Emitting one event: validated, durable in the log, then indexed.

use crate::{
    clock::now_ms,
    error::EngineError,
    input::{build_event, NewEvent},
    model::{DomainEvent, EventSource},
};

use super::Engine;

impl Engine {
    /// Emits an event: durable in the log before this returns. With a
    /// `dedupe_key` already used in the window, returns the original event
    /// and `false` (nothing new is delivered).
    pub async fn emit(
        &self,
        tenant_id: &str,
        new: NewEvent,
    ) -> Result<(DomainEvent, bool), EngineError> {
        let event = build_event(tenant_id, new, EventSource::Api)?;
        self.check_payload(
            tenant_id,
            &event.event_type,
            event.schema_version,
            &event.payload,
        )?;
        self.admit_events(tenant_id, std::slice::from_ref(&event))
            .await?;
        let _guard = match &event.dedupe_key {
            Some(key) => {
                let stripe = self.dedupe_stripe(tenant_id, key);
                let guard = self.emit_locks[stripe].lock().await;
                if let Some(original) = self
                    .store
                    .event_by_dedupe_key(tenant_id, key, now_ms())
                    .await?
                {
                    return Ok((original, false));
                }
                Some(guard)
            }
            None => None,
        };
        let position = self.log.append(std::slice::from_ref(&event)).await?[0];
        self.metrics.event_ingested(event.source);
        let until = now_ms() + self.config.dedupe_window.as_millis() as i64;
        if let Err(e) = self.store.record_event(&event, position, until).await {
            // The event is durable in the log; fan-out will index it.
            tracing::warn!(error = %e, event_id = %event.id, "could not index an emitted event yet");
            return Ok((event, true));
        }
        if let Some(key) = &event.dedupe_key {
            // The key may have been claimed between the check above and the
            // claim just made: by fan-out, for an earlier append of this same
            // emit whose acknowledgement was lost. That event is the one
            // delivered (this one is dropped as its duplicate): answer it.
            if let Some(holder) = self
                .store
                .event_by_dedupe_key(tenant_id, key, now_ms())
                .await?
                .filter(|holder| holder.id != event.id)
            {
                return Ok((holder, false));
            }
        }
        Ok((event, true))
    }
}
