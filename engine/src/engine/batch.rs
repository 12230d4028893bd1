//! Batched emit: many events in one request, atomic per batch.
//!
//! Every item is validated before anything is written — its fields and
//! its payload against the catalogue's schema, as a single emit's — and one
//! invalid item refuses the whole batch and names its index (schema
//! violations point into the batch body: `/events/<i>/payload/...`). The new events go to the
//! log in one [`EventLog::append_all`](crate::log::EventLog::append_all): on
//! the embedded log one durable group commit, on Kafka one transaction, so a
//! failure midway (503) leaves none of them readable or delivered. The call
//! returns only once all are durable. On Kafka with the CQL store the
//! events are indexed inside that transaction, so that fan-out need not
//! write their index again (`append_and_index`). Dedupe keys are honoured per item: a key
//! already live in the window, or used by an earlier item of the same batch,
//! answers the original event and nothing new is delivered for it.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use super::Engine;
use crate::input::{build_event, NewEvent};
use crate::{
    clock::now_ms,
    error::{EngineError, SchemaIssue},
    log::AppendIndex,
    model::{DomainEvent, EventSource},
    store::Store,
};

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Where an item of a batch comes from: a new event, or the original of a
/// dedupe key (already stored, or earlier in the same batch).
enum Slot {
    New(usize),
    Stored(Box<DomainEvent>),
    SameAs(usize),
}

impl Engine {
    /// Emits `items` atomically: all durable in the log before this returns,
    /// or none written. Answers one `(event, created)` per item, in order;
    /// `created` is `false` for an item whose dedupe key was already used.
    /// An invalid item fails the batch with [`EngineError::Invalid`] on
    /// field `events`, its message naming the index and the item's field.
    pub async fn emit_batch(
        &self,
        tenant_id: &str,
        items: Vec<NewEvent>,
    ) -> Result<Vec<(DomainEvent, bool)>, EngineError> {
        if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
            return Err(EngineError::invalid(
                "events",
                format!("give 1 to {MAX_BATCH_EVENTS} events (got {})", items.len()),
            ));
        }
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let event = build_event(tenant_id, item, EventSource::Api)
                .and_then(|event| {
                    self.check_payload(
                        tenant_id,
                        &event.event_type,
                        event.schema_version,
                        &event.payload,
                    )?;
                    Ok(event)
                })
                .map_err(|e| match e {
                    EngineError::Invalid { field, message } => {
                        EngineError::invalid("events", format!("events[{i}].{field}: {message}"))
                    }
                    // Point into the batch body: /events/<i>/payload/...
                    EngineError::SchemaViolation {
                        event_type,
                        schema_version,
                        errors,
                    } => EngineError::SchemaViolation {
                        event_type,
                        schema_version,
                        errors: errors
                            .into_iter()
                            .map(|issue| SchemaIssue {
                                instance_path: format!(
                                    "/events/{i}/payload{}",
                                    issue.instance_path
                                ),
                                message: issue.message,
                            })
                            .collect(),
                    },
                    other => other,
                })?;
            events.push(event);
        }
        self.admit_events(tenant_id, &events).await?;

        // Hold the dedupe stripes of every key of the batch, in stripe order
        // (no deadlock with other batches), for the check-then-append.
        let mut stripes: Vec<usize> = events
            .iter()
            .filter_map(|e| e.dedupe_key.as_deref())
            .map(|key| self.dedupe_stripe(tenant_id, key))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut _guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            _guards.push(self.emit_locks[s].lock().await);
        }

        let mut slots = Vec::with_capacity(events.len());
        let mut fresh: Vec<DomainEvent> = Vec::with_capacity(events.len());
        let mut first_of_key: HashMap<String, usize> = HashMap::new();
        let now = now_ms();
        for event in events {
            if let Some(key) = event.dedupe_key.clone() {
                if let Some(&j) = first_of_key.get(&key) {
                    slots.push(Slot::SameAs(j));
                    continue;
                }
                if let Some(original) = self.store.event_by_dedupe_key(tenant_id, &key, now).await?
                {
                    slots.push(Slot::Stored(Box::new(original)));
                    continue;
                }
                first_of_key.insert(key, fresh.len());
            }
            slots.push(Slot::New(fresh.len()));
            fresh.push(event);
        }

        if !fresh.is_empty() {
            self.append_and_index(&fresh).await?;
        }

        // Each new event moves into its answer; an item that repeats an
        // earlier item's key (always after it) copies that answer.
        let mut fresh: Vec<Option<DomainEvent>> = fresh.into_iter().map(Some).collect();
        let mut answered_at = vec![0; fresh.len()];
        let mut answers: Vec<(DomainEvent, bool)> = Vec::with_capacity(slots.len());
        for slot in slots {
            let answer = match slot {
                Slot::New(j) => {
                    answered_at[j] = answers.len();
                    (
                        fresh[j].take().expect("each new event is answered once"),
                        true,
                    )
                }
                Slot::Stored(original) => (*original, false),
                Slot::SameAs(j) => (answers[answered_at[j]].0.clone(), false),
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    /// The emit lock stripe guarding `(tenant, dedupe_key)`.
    pub(super) fn dedupe_stripe(&self, tenant_id: &str, key: &str) -> usize {
        crc32fast::hash(format!("{tenant_id}\0{key}").as_bytes()) as usize % self.emit_locks.len()
    }
}

/// The store's index of a batch, written inside its log append.
struct StoreIndex<'a> {
    store: &'a dyn Store,
    events: &'a [DomainEvent],
    /// The store refused the index (the append was then aborted).
    failed: AtomicBool,
}

#[async_trait::async_trait]
impl AppendIndex for StoreIndex<'_> {
    async fn index(&self) -> Result<(), String> {
        self.store.index_events(self.events).await.map_err(|e| {
            self.failed.store(true, Ordering::Relaxed);
            e.to_string()
        })
    }

    async fn unindex(&self) {
        if let Err(e) = self.store.unindex_events(self.events).await {
            // Listed, never delivered: the append was aborted.
            tracing::warn!(error = %e, events = self.events.len(), "could not unindex an aborted batch");
        }
    }
}

impl Engine {
    /// Appends a batch's new events all or nothing and indexes them: inside
    /// the append where the store and the log can
    /// ([`EventStore::indexes_in_append`](crate::store::EventStore::indexes_in_append)),
    /// so that fan-out need not index them again; otherwise after it. A
    /// store that refuses the index does not refuse the batch: its aborted
    /// append is made again without it, and fan-out indexes the events.
    async fn append_and_index(&self, fresh: &[DomainEvent]) -> Result<(), EngineError> {
        let index = StoreIndex {
            store: &*self.store,
            events: fresh,
            failed: AtomicBool::new(false),
        };
        let in_append = if self.store.indexes_in_append() {
            match self.log.append_all_indexed(fresh, &index).await {
                Some(Err(e)) if index.failed.load(Ordering::Relaxed) => {
                    tracing::warn!(error = %e, events = fresh.len(), "appending a batch without its index");
                    None
                }
                appended => appended,
            }
        } else {
            None
        };
        let indexed = in_append.is_some();
        let positions = match in_append {
            Some(appended) => appended?,
            None => self.log.append_all(fresh).await?,
        };
        for e in fresh {
            self.metrics.event_ingested(e.source);
        }
        let until = now_ms() + self.config.dedupe_window.as_millis() as i64;
        let recorded = if indexed {
            // Indexed already: only the events with a key have work left.
            let keyed: Vec<_> = fresh
                .iter()
                .zip(positions)
                .filter(|(e, _)| e.dedupe_key.is_some())
                .map(|(e, p)| (e.clone(), p))
                .collect();
            if keyed.is_empty() {
                Ok(())
            } else {
                self.store.claim_dedupe_keys(keyed, until).await
            }
        } else {
            let appended: Vec<_> = fresh.iter().cloned().zip(positions).collect();
            self.store.record_events(appended, until).await
        };
        if let Err(e) = recorded {
            // The events are durable in the log; fan-out will index them
            // (or claim their keys).
            tracing::warn!(error = %e, events = fresh.len(), "could not index emitted events yet");
        }
        Ok(())
    }
}
