//! The durable delivery schedule: fan-out writes it, schedulers claim from
//! it under leases, and a delivery leaves it only when its final attempt is
//! recorded ([`DeliveryLogStore::record_attempt`](super::DeliveryLogStore::record_attempt)).

use async_trait::async_trait;

use super::StoreError;
use crate::{
    log::LogPosition,
    model::{DomainEvent, ScheduledDelivery},
};

/// One event's fan-out: the event, where it sits in the log, and the
/// deliveries its matching subscriptions need.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// The event.
    pub event: DomainEvent,
    /// Its log position.
    pub position: LogPosition,
    /// One delivery per matching subscription.
    pub deliveries: Vec<ScheduledDelivery>,
    /// When set, the unordered deliveries are scheduled already leased until
    /// then: the caller hands them to its shards right after the commit,
    /// instead of a scheduler claiming them (a crash makes them due again
    /// like any other lease).
    pub lease_until_ms: Option<i64>,
    /// Set (with `lease_until_ms`, all deliveries unordered) when the caller
    /// hands the deliveries over without scheduling them and keeps the
    /// event's log offset uncommitted until each is settled
    /// ([`crate::delivery::handoff`]): the store then writes no schedule
    /// rows, only indexes the event and claims its dedupe key, and fans the
    /// event out again when the log is re-read (its offset not committed).
    pub unscheduled: bool,
    /// Deliveries parked from the start, held (as [`ScheduleStore::hold`]
    /// leaves them) until their `due_at_ms`, the re-check, unless released
    /// first: the caller's shard has the subscription's circuit open, so
    /// they would only be refused. Written with the event's other
    /// deliveries; never set with `unscheduled`.
    pub parked: Vec<ScheduledDelivery>,
    /// The event's appender indexed it before its record became readable
    /// ([`crate::log::LogRecord::indexed`]): a store that indexes blind at
    /// fan-out need not write its index again.
    pub indexed: bool,
}

/// What [`ScheduleStore::fan_out`] did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanOutResult {
    /// Its deliveries are scheduled (or, unscheduled, left to the caller).
    Scheduled,
    /// It was fanned out unscheduled before and is read again (its log
    /// offset was not committed: a restart, a lost commit): the deliveries
    /// to these subscriptions were settled since (a final attempt recorded,
    /// or an entry in the schedule) and are left out; the others are as
    /// [`Scheduled`](Self::Scheduled). A store that does not look (the CQL
    /// store reads nothing at fan-out) answers `Scheduled`, and the
    /// settled deliveries are sent again: a duplicate, never a loss.
    Resumed(Vec<String>),
    /// It was fanned out before (a re-read after a crash): nothing new.
    AlreadyDone,
    /// Another event holds its dedupe key: dropped.
    Duplicate,
}

/// The delivery schedule.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Atomically, per event: index it, drop it if another event holds its
    /// dedupe key, skip it if it was fanned out before, else schedule its
    /// deliveries and mark it fanned out.
    async fn fan_out(
        &self,
        batch: Vec<FanOut>,
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<FanOutResult>, StoreError>;

    /// Adds deliveries to the schedule (replays); a delivery id already
    /// scheduled is left as it is.
    async fn schedule(&self, deliveries: Vec<ScheduledDelivery>) -> Result<(), StoreError>;

    /// Takes up to `limit` deliveries due at `now_ms` and leases them until
    /// `lease_until_ms` (after a crash they fall due again then), each with
    /// its event. A leased delivery is not claimed again before its lease
    /// ends; of a strictly ordered subscription only the head is claimed.
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(ScheduledDelivery, DomainEvent)>, StoreError>;

    /// Makes every leased delivery due at `now_ms`. Called at start-up by the
    /// only process that uses this schedule (embedded mode): leases held by
    /// a crashed predecessor end at once instead of when they expire.
    async fn release_leases(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Holds a claimed delivery of a paused subscription: its lease ends,
    /// it is due again only at `recheck_at_ms` (in case a resume is missed:
    /// a crash between the resume and
    /// [`release_held`](ScheduleStore::release_held), or a process that
    /// still saw the subscription paused), and it is listed as held for its
    /// subscription. No attempt is recorded.
    async fn hold(
        &self,
        delivery: &ScheduledDelivery,
        recheck_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Holds several claimed deliveries at once, as [`hold`](ScheduleStore::hold)
    /// does each: a worker parks what its endpoint's queue has no room for.
    async fn hold_all(
        &self,
        deliveries: &[ScheduledDelivery],
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        for d in deliveries {
            self.hold(d, recheck_at_ms).await?;
        }
        Ok(())
    }

    /// Makes the first `limit` (in event order, `seq`) held deliveries of
    /// `subscription_id` that are not leased due at `now_ms` (or at the
    /// time each is written, if later), and unlists them; returns how many
    /// it moved. Called with no limit
    /// (`usize::MAX`) when the subscription is resumed, and a chunk at a
    /// time as a worker's endpoint queue drains.
    async fn release_held(
        &self,
        subscription_id: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// The earliest due time in the schedule (unix ms), if any; a store may
    /// leave out due times more than a second away (the scheduler naps less).
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// Deliveries waiting in the schedule. Reads every waiting delivery's
    /// index entry: for a gauge refreshed now and then, not for a probe.
    async fn schedule_backlog(&self) -> Result<u64, StoreError>;

    /// Whether the store answers: one cheap round trip (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The statements this store sent to its database, when it counts them.
    fn op_counts(&self) -> Option<&super::OpCounts> {
        None
    }
}
