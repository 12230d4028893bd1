//! The engine facade: the operations the API exposes, over the log, the
//! store, fan-out, the scheduler and the shards. Each responsibility has a
//! file of its own: `backends` chooses the log and store once, `wiring` starts the tasks, then `tenants`, `deletion`, `subscribe`,
//! `manage`, `emit`, `batch`, `quotas`, `query`, `replay`, `recovery`, `catalogue`
//! and `stream` serve the API. Input rules live in [`crate::input`].

mod audit;
mod backends;
mod batch;
mod catalogue;
mod deletion;
mod destination;
mod emit;
mod intake;
mod manage;
mod query;
mod quotas;
mod recovery;
mod replay;
mod retention;
mod stream;
mod subscribe;
mod tenants;
mod wiring;

pub use crate::catalogue::{Catalogue, PreparedSchema};
pub use audit::AuditPage;
pub use backends::{Backends, LogBackend, StoreBackend};
pub use batch::MAX_BATCH_EVENTS;
pub use catalogue::EventTypePage;
pub use intake::{BacklogFull, MIN_WAIT_BOUND};
pub use manage::{NewApiKey, SubscriptionPage, SubscriptionUpdate, API_KEY};
pub use query::{EventPage, LogPage};
pub use recovery::RECOVERY;
pub use replay::ReplayedDelivery;
pub use stream::{decode_cursor, encode_cursor, StreamBatch, StreamFrame};
pub use subscribe::Rotation;

use std::sync::Arc;

use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    config::EngineConfig, delivery::worker::Shards, error::EngineError, log::EventLog,
    metrics::Metrics, ssrf::TargetGuard, store::Store, subscriptions::SubscriptionIndex,
};

/// The running engine.
pub struct Engine {
    config: EngineConfig,
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    subscriptions: Arc<SubscriptionIndex>,
    guard: TargetGuard,
    shards: Option<Arc<Shards>>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
    relay: Option<Arc<crate::relay::RelayStats>>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    emit_locks: Vec<AsyncMutex<()>>,
    metrics: Arc<Metrics>,
    catalogue: Arc<crate::catalogue::Catalogue>,
    recovery_wake: Arc<Notify>,
    /// Serialise read-modify-write changes of one subscription (striped by id),
    /// so a concurrent delete is never undone by an update.
    subscription_locks: Vec<AsyncMutex<()>>,
    /// Tenants' quotas as enforced, and their rate limiters.
    quotas: quotas::QuotaCache,
    /// The grants of live API keys seen lately.
    keys: tenants::KeyCache,
    /// Tenants deleted or being deleted: their events are refused.
    gone: Arc<crate::gone::GoneTenants>,
    /// Accepted events not yet delivered, followed where emits are taken
    /// and bounded (`None` otherwise).
    backlog: Option<Arc<intake::Backlog>>,
    /// Cancels the background tasks when the engine is dropped without a
    /// [`Engine::shutdown`] (a panicking caller): the relay's blocking loop
    /// would otherwise keep its runtime from ever shutting down.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Engine {
    /// Stops fan-out and scheduling, lets attempts in flight finish and be
    /// recorded, then returns.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The CDC relay's counters, when this process runs the relay.
    pub fn relay_stats(&self) -> Option<&crate::relay::RelayStats> {
        self.relay.as_deref()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether the log and the store answer (for `/readyz`).
    pub async fn ready(&self) -> Result<(), EngineError> {
        let partition = self.log.partition_for("readyz");
        self.log.end_offset(partition).await?;
        self.store.ping().await?;
        Ok(())
    }

    /// Deliveries waiting in the durable schedule.
    pub async fn backlog(&self) -> Result<u64, EngineError> {
        Ok(self.store.schedule_backlog().await?)
    }

    /// The engine's metrics (served on `/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Subscriptions of all tenants.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Deliveries currently being attempted.
    pub fn in_flight(&self) -> usize {
        self.shards.as_ref().map_or(0, |s| s.in_flight())
    }
}
