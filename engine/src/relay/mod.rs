//! The CDC relay: Debezium's outbox topic in, DomainEvents in the event log
//! out (DESIGN §3 step 2).
//!
//! An application writes its change and a `herald_outbox` row in one
//! PostgreSQL transaction; Debezium streams committed rows to the CDC topic
//! (`<prefix>.cdc.outbox` by default). The relay consumes that topic in the
//! group `<prefix>-relay` and, for every batch, in **one Kafka transaction**:
//! produces each row's DomainEvent to `<prefix>.events` (the record format of
//! [`crate::log::kafka::record`], keyed and partitioned by tenant like every
//! other append), produces every record it cannot use to the dead-letter
//! topic `<prefix>.cdc.dead-letter`, and commits the consumed offsets
//! (`send_offsets_to_transaction`).
//!
//! What that guarantees:
//! - **No loss, no duplicate across relay crashes.** The events, the dead
//!   letters and the consumer position commit atomically: after a kill -9 the
//!   open transaction is aborted (by the transaction coordinator when the
//!   restarted relay, with the same `transactional.id`, fences it, or at the
//!   transaction timeout) and the group resumes at the last committed
//!   offsets. Consumers of the events topic that read `read_committed` (Herald's
//!   fan-out does) see each relayed row exactly once. The relay reads the CDC
//!   topic `read_committed` too.
//! - **The same row, the same event id** ([`map::event_id`]), so a connector
//!   that re-sends rows (a new snapshot) produces events fan-out deduplicates.
//! - **Nothing is dropped silently.** Inserts and snapshot reads are relayed;
//!   deletes, truncates and tombstones are skipped on purpose (counted); an
//!   update, an unparseable record or a row a REST emit would refuse goes to
//!   the dead-letter topic unchanged (key, value, headers) plus headers
//!   `herald-dlq-reason`, `herald-dlq-topic`, `herald-dlq-partition`,
//!   `herald-dlq-offset`, and is counted in [`RelayStats::dead_lettered`].
//! - **Dedupe across paths.** Events keep their `(tenant, dedupe_key)`; the
//!   fan-out drops an event whose key another event already holds, whether it
//!   came from REST or CDC.
//!
//! On any Kafka error the transaction is aborted, both clients are dropped
//! and rebuilt after a pause, and the group resumes at its committed offsets;
//! a transactional call that does not return in time counts as such an error
//! (its producer is left to it, and fenced by the next one), and a consumer
//! that stalled ([`crate::log::kafka::stall`]) ends its session the same way.

pub mod map;
pub mod parse;
#[cfg(feature = "kafka")]
mod run;

use std::sync::{atomic::AtomicBool, atomic::AtomicU64, Arc};

use tokio_util::sync::CancellationToken;

#[cfg(feature = "kafka")]
pub use run::{run, RelaySettings};

/// Counters of what the relay did, since the process started.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Outbox rows appended to the events topic (committed).
    pub relayed: AtomicU64,
    /// Records skipped on purpose: deletes, truncates, tombstones (committed).
    pub skipped: AtomicU64,
    /// Records sent to the dead-letter topic (committed).
    pub dead_lettered: AtomicU64,
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Transactions aborted (each one followed by a restart of the clients).
    pub aborted: AtomicU64,
    /// Whether a transaction is open right now (begun, not yet committed).
    pub in_transaction: AtomicBool,
    /// Records the open transaction has produced, not yet committed (0
    /// outside that window); with the commit-delay test hook
    /// ([`crate::test_hooks::RELAY_COMMIT_DELAY`]) they are flushed to the
    /// broker before this is set.
    pub uncommitted: AtomicU64,
}

/// Copies the relay's committed counters into `metrics`, once a second,
/// until `cancel`.
pub async fn report(
    stats: Arc<RelayStats>,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        metrics.relay_progress(
            stats.relayed.load(Relaxed),
            stats.dead_lettered.load(Relaxed),
        );
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            () = cancel.cancelled() => return,
        }
    }
}
