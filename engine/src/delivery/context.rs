//! What the delivery shards and the attempts they send share: the job a
//! shard is handed, the context every shard reads, and what an attempt
//! reports back.

use std::{
    collections::HashSet,
    ops::Deref,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{
    decide::Sent, destination::Destinations, handoff::Settle, retries::Retries, retry::RetryPolicy,
};
use crate::{
    config::DeliveryConfig,
    metrics::Metrics,
    model::{DomainEvent, PayloadForm, ScheduledDelivery},
    operational::OperationalEvents,
    store::Store,
    subscriptions::SubscriptionIndex,
};

/// The `user-agent` of every delivery.
pub const USER_AGENT: &str = concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION"));

/// A delivery handed to a shard.
#[derive(Debug)]
pub struct Job {
    /// What to deliver.
    pub delivery: ScheduledDelivery,
    /// The event it carries, shared with the event's other deliveries.
    pub event: Arc<SharedEvent>,
    /// Set when fan-out handed it over without scheduling it: settled once
    /// the delivery is recorded or scheduled (see [`super::handoff`]).
    pub settle: Option<Settle>,
    /// Set when the schedule changelog keeps it (a retry, see
    /// [`super::retries`]) rather than the store's schedule: forgotten
    /// there once it is recorded or moved to the store.
    pub kept: bool,
}

impl Job {
    /// A delivery from the schedule (or scheduled already).
    pub fn scheduled(delivery: ScheduledDelivery, event: Arc<SharedEvent>) -> Self {
        Self {
            delivery,
            event,
            settle: None,
            kept: false,
        }
    }

    /// A retry the schedule changelog keeps.
    pub fn kept(delivery: ScheduledDelivery, event: Arc<SharedEvent>) -> Self {
        Self {
            delivery,
            event,
            settle: None,
            kept: true,
        }
    }

    /// Whether the store's schedule has no row of it (fan-out handed it
    /// over unscheduled, or the changelog keeps it).
    pub fn unscheduled(&self) -> bool {
        self.settle.is_some() || self.kept
    }
}

/// An event as its deliveries carry it: one per event, shared by the
/// deliveries fan-out hands over together, with each request body encoded
/// once, by the first delivery that sends it. (Fan-out to 100 subscriptions
/// encoded the same 1 KiB envelope 100 times: 3 % of the server's CPU.)
#[derive(Debug)]
pub struct SharedEvent {
    event: DomainEvent,
    full: OnceLock<Bytes>,
    thin: OnceLock<Bytes>,
}

impl SharedEvent {
    /// The request body a subscription with `form` receives
    /// ([`DomainEvent::body`]), encoded on first use.
    pub fn body(&self, form: PayloadForm) -> Bytes {
        let cell = match form {
            PayloadForm::Full => &self.full,
            PayloadForm::Thin => &self.thin,
        };
        cell.get_or_init(|| Bytes::from(self.event.body(form)))
            .clone()
    }
}

impl From<DomainEvent> for SharedEvent {
    fn from(event: DomainEvent) -> Self {
        Self {
            event,
            full: OnceLock::new(),
            thin: OnceLock::new(),
        }
    }
}

impl Deref for SharedEvent {
    type Target = DomainEvent;

    fn deref(&self) -> &DomainEvent {
        &self.event
    }
}

/// Everything the shards share (read-only or internally synchronised).
pub struct WorkerContext {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Subscriptions by id.
    pub subscriptions: Arc<SubscriptionIndex>,
    /// The HTTP client and the Kafka producers.
    pub destinations: Destinations,
    /// Retry decisions.
    pub retry: RetryPolicy,
    /// Tuning.
    pub config: DeliveryConfig,
    /// Deliveries currently in a shard (so a re-claim after a lease does not double-send).
    pub in_flight: Mutex<HashSet<String>>,
    /// Endpoints the shards keep state for (those with work, an open
    /// circuit or parked deliveries): the hand-off budget's fair share of
    /// each is the budget over these.
    pub endpoints: std::sync::atomic::AtomicUsize,
    /// Rings the scheduler (an ordered subscription's next delivery may go).
    pub wake: Arc<Notify>,
    /// Herald's own events to tenants.
    pub operational: OperationalEvents,
    /// Where attempts and breaker states are counted.
    pub metrics: Arc<Metrics>,
    /// Subscriptions whose circuit is open (or half-open) in this process's
    /// shards: fan-out parks their new deliveries at once.
    pub open_circuits: Mutex<HashSet<String>>,
    /// Retries kept in the schedule changelog, when the log keeps one.
    pub retries: Arc<Retries>,
    /// Per subscription, this process's first failure since its last
    /// success (see [`super::decide::failing_grace`]).
    pub failing_here: Mutex<std::collections::HashMap<String, time::OffsetDateTime>>,
}

/// What an attempt tells its shard.
pub struct Finished {
    /// The subscription (endpoint) attempted.
    pub subscription_id: String,
    /// How the endpoint answered, as the shard's breaker and limits read it.
    pub sent: Sent,
    /// Whether it was the half-open breaker's probe.
    pub probe: bool,
    /// From the request's start to its answer (or its failure).
    pub latency: std::time::Duration,
}
