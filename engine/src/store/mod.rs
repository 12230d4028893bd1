//! The store: tenants and hashed API keys, subscriptions, the event index,
//! the dedupe window, the durable delivery schedule, the delivery log, the
//! event-type catalogue and recovery jobs.
//!
//! Every write method returns only once its change is durable. The schedule
//! is the engine's memory of work to do: fan-out writes a row per delivery
//! in the same transaction that marks the event fanned out, and a row leaves
//! the schedule only in the transaction that records its final attempt. A
//! crash therefore loses no delivery and no retry (DESIGN §3).
//!
//! The contract is split by role, one trait per file: [`TenantStore`],
//! [`SubscriptionStore`], [`EventStore`], [`ScheduleStore`],
//! [`DeliveryLogStore`], [`CatalogueStore`], [`RecoveryStore`],
//! [`AuditStore`] and [`TenantPurgeStore`]. [`Store`]
//! is all of them; a part of the engine that needs one role can hold just
//! that trait. [`embedded`] keeps all of it in SQLite; [`scylla`] keeps it
//! in ScyllaDB (or Cassandra) for the distributed deployment. The contract
//! tests in `engine/tests/contract` run the same assertions on both.

mod audit;
mod catalogue;
mod delivery_log;
pub mod embedded;
mod events;
mod purge;
mod recovery;
mod schedule;
#[cfg(feature = "cql")]
pub mod scylla;
pub mod secrets;
mod subscriptions;
mod tenants;

pub use audit::AuditStore;
pub use catalogue::CatalogueStore;
pub use delivery_log::{DeliveryLogStore, LogFilter};
pub use events::{id_floor, EventFilter, EventStore, PruneCursor, Pruned};
pub use purge::{TenantPurgeStore, TenantState};
pub use recovery::{RecoveryScope, RecoveryStore};
pub use schedule::{FanOut, FanOutResult, ScheduleStore};
pub use subscriptions::{SubscriptionChange, SubscriptionStore};
pub use tenants::TenantStore;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A resource the write depends on does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique resource already exists.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot take writes right now (disk full, locked, shutting down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A stored signing secret cannot be decrypted (wrong or missing
    /// encryption key, or an altered value); the message names the key.
    #[error("{0}")]
    Secrets(String),
    /// The database reported an error.
    #[error("database error")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Statements a store sent to its database since it opened, by kind. The
/// CQL store counts them (`herald_store_operations_total{kind}`), so the
/// cost of a delivery in round trips can be measured; SQLite does not.
#[derive(Debug, Default)]
pub struct OpCounts {
    reads: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    conditional: std::sync::atomic::AtomicU64,
}

impl OpCounts {
    /// Kinds, as [`OpCounts::snapshot`] names them.
    pub const KINDS: [&'static str; 3] = ["read", "write", "conditional_write"];

    /// Counts one read (a query or one paged scan).
    pub fn read(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one plain write (insert, update or delete).
    pub fn write(&self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one conditional write (a lightweight transaction).
    pub fn conditional(&self) {
        self.conditional
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counts so far, by kind.
    pub fn snapshot(&self) -> [(&'static str, u64); 3] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            (Self::KINDS[0], self.reads.load(Relaxed)),
            (Self::KINDS[1], self.writes.load(Relaxed)),
            (Self::KINDS[2], self.conditional.load(Relaxed)),
        ]
    }
}

/// The durable state of the engine: every role of the store. Implemented
/// for every type that implements all the role traits.
pub trait Store:
    TenantStore
    + SubscriptionStore
    + EventStore
    + ScheduleStore
    + DeliveryLogStore
    + CatalogueStore
    + RecoveryStore
    + AuditStore
    + TenantPurgeStore
{
}

impl<T> Store for T where
    T: TenantStore
        + SubscriptionStore
        + EventStore
        + ScheduleStore
        + DeliveryLogStore
        + CatalogueStore
        + RecoveryStore
        + AuditStore
        + TenantPurgeStore
{
}
