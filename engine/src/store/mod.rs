//! The store: tenants and hashed API keys, subscriptions, the event index,
//! the dedupe window, the durable delivery schedule and the delivery log.
//!
//! Every write method returns only once its change is durable. The schedule
//! is the engine's memory of work to do: fan-out writes a row per delivery
//! in the same transaction that marks the event fanned out, and a row leaves
//! the schedule only in the transaction that records its final attempt. A
//! crash therefore loses no delivery and no retry (DESIGN §3).
//!
//! [`embedded`] keeps all of it in SQLite; [`scylla`] keeps it in ScyllaDB
//! (or Cassandra) for the distributed deployment.

pub mod embedded;
pub mod scylla;
pub mod secrets;

use async_trait::async_trait;

use crate::{
    log::LogPosition,
    model::{DomainEvent, ScheduledDelivery, WebhookDeliveryLog, WebhookSubscription},
    resources::{ApiKey, EventTypeSchema, RecoveryCandidate, RecoveryJob},
};

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

/// Filters of the event list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this event type (exact) or family (`prefix.*`).
    pub event_type: Option<String>,
    /// Only events with ids before this one (the page cursor; newest first).
    pub before: Option<String>,
}

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
}

/// What [`Store::fan_out`] did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOutResult {
    /// Its deliveries are scheduled.
    Scheduled,
    /// It was fanned out before (a re-read after a crash): nothing new.
    AlreadyDone,
    /// Another event holds its dedupe key: dropped.
    Duplicate,
}

/// What a recovery job looks for (issue 3's recovery jobs).
#[derive(Debug, Clone)]
pub struct RecoveryScope {
    /// Owning tenant.
    pub tenant_id: String,
    /// The subscription recovered.
    pub subscription_id: String,
    /// Events whose ids sort at or after this one (the id of `since`).
    pub from_event_id: String,
    /// Events whose ids sort before this one (the id of `until`).
    pub to_event_id: String,
    /// Only events whose latest delivery there is `failed` or `dead`.
    pub only_failed: bool,
}

/// A change to one subscription, applied atomically by
/// [`Store::modify_subscription`]; returns whether it changed anything.
pub type SubscriptionChange = Box<dyn FnOnce(&mut WebhookSubscription) -> bool + Send>;

/// The durable state of the engine.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a tenant with its first API key (stored as a SHA-256 hash).
    /// `Conflict` if the tenant exists.
    async fn create_tenant(
        &self,
        tenant_id: &str,
        first_key: &ApiKey,
        key_hash: [u8; 32],
    ) -> Result<(), StoreError>;

    /// The tenant an API key hash belongs to, unless the key is revoked.
    async fn tenant_for_key(&self, key_hash: [u8; 32]) -> Result<Option<String>, StoreError>;

    /// Inserts or replaces a subscription.
    async fn put_subscription(&self, sub: &WebhookSubscription) -> Result<(), StoreError>;

    /// Reads, changes and writes one subscription atomically (no lost
    /// update against a concurrent change). Returns the subscription after
    /// the change and whether it changed, or `None` if it doesn't exist.
    async fn modify_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        change: SubscriptionChange,
    ) -> Result<Option<(WebhookSubscription, bool)>, StoreError>;

    /// One subscription of a tenant.
    async fn get_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError>;

    /// Every subscription of every tenant (to build the matching index).
    async fn all_subscriptions(&self) -> Result<Vec<WebhookSubscription>, StoreError>;

    /// A number that changes whenever any process writes a subscription, so
    /// processes sharing the store know when to reload their index.
    async fn subscriptions_version(&self) -> Result<u64, StoreError>;

    /// Indexes an event just appended to the log and claims its dedupe key
    /// until `dedupe_until_ms` (if nobody holds it). Idempotent.
    async fn record_event(
        &self,
        event: &DomainEvent,
        position: LogPosition,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError>;

    /// [`record_event`](Store::record_event) for a batch just appended to
    /// the log, in one write where the store can; a failure leaves the
    /// batch to be indexed by fan-out.
    async fn record_events(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        let writes = events
            .iter()
            .map(|(event, position)| self.record_event(event, *position, dedupe_until_ms));
        futures::future::try_join_all(writes).await.map(|_| ())
    }

    /// The live event holding `(tenant, dedupe_key)`, if any.
    async fn event_by_dedupe_key(
        &self,
        tenant_id: &str,
        dedupe_key: &str,
        now_ms: i64,
    ) -> Result<Option<DomainEvent>, StoreError>;

    /// One event of a tenant.
    async fn get_event(&self, tenant_id: &str, id: &str)
        -> Result<Option<DomainEvent>, StoreError>;

    /// A tenant's events, newest first.
    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError>;

    /// Atomically, per event: index it, drop it if another event holds its
    /// dedupe key, skip it if it was fanned out before, else schedule its
    /// deliveries and mark it fanned out.
    async fn fan_out(
        &self,
        batch: Vec<FanOut>,
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<FanOutResult>, StoreError>;

    /// Adds deliveries to the schedule (replays).
    async fn schedule(&self, deliveries: Vec<ScheduledDelivery>) -> Result<(), StoreError>;

    /// Takes up to `limit` deliveries due at `now_ms` and leases them until
    /// `lease_until_ms` (after a crash they fall due again then), each with
    /// its event.
    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(ScheduledDelivery, DomainEvent)>, StoreError>;

    /// Records an attempt and, in the same transaction, either reschedules
    /// the delivery (`next`) or removes it from the schedule.
    async fn record_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError>;

    /// Makes every leased delivery due at `now_ms`. Called at start-up by the
    /// only process that uses this schedule (embedded mode): leases held by
    /// a crashed predecessor end at once instead of when they expire.
    async fn release_leases(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Holds a claimed delivery of a paused subscription: its lease ends,
    /// it is due again only at `recheck_at_ms` (in case a resume is missed:
    /// a crash between the resume and [`release_held`](Store::release_held),
    /// or a process that still saw the subscription paused), and it is
    /// listed as held for its subscription. No attempt is recorded.
    async fn hold(
        &self,
        delivery: &ScheduledDelivery,
        recheck_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Makes every held delivery of `subscription_id` that is not leased due
    /// at `now_ms`, in event order (`seq`), and unlists it; returns how many
    /// it moved. Called when the subscription is resumed.
    async fn release_held(&self, subscription_id: &str, now_ms: i64) -> Result<u64, StoreError>;

    /// The earliest due time in the schedule (unix ms), if any; a store may
    /// leave out due times more than a second away (the scheduler naps less).
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// Deliveries waiting in the schedule. Reads every waiting delivery's
    /// index entry: for a gauge refreshed now and then, not for a probe.
    async fn schedule_backlog(&self) -> Result<u64, StoreError>;

    /// Whether the store answers: one cheap round trip (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// A tenant's delivery attempts, newest first.
    async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryLog>, StoreError>;

    /// Removes dedupe claims that expired before `now_ms`; returns how many.
    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError>;

    // ---- subscriptions management ----

    /// A tenant's subscriptions, newest first, with ids before `before`.
    async fn list_subscriptions(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError>;

    /// Deletes a subscription of a tenant; `false` if there was none.
    /// Its scheduled deliveries are dropped by the workers when they fall due.
    async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError>;

    // ---- API keys ----

    /// Whether the tenant exists.
    async fn tenant_exists(&self, tenant_id: &str) -> Result<bool, StoreError>;

    /// Adds an API key (stored as its SHA-256 hash) to an existing tenant.
    async fn create_api_key(&self, key: &ApiKey, key_hash: [u8; 32]) -> Result<(), StoreError>;

    /// A tenant's API keys (without the keys), in id order (oldest first).
    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes a key of a tenant at `at_ms`; `None` if there is no such key.
    /// From the moment this returns the key no longer authenticates.
    async fn revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<Option<ApiKey>, StoreError>;

    // ---- event-type catalogue ----

    /// Registers a schema version. `Ok(false)` when that version exists with
    /// the same schema (nothing changes), `Conflict` when it exists with another.
    async fn put_event_type(&self, schema: &EventTypeSchema) -> Result<bool, StoreError>;

    /// Every registered schema of every tenant (to build the validators).
    async fn all_event_types(&self) -> Result<Vec<EventTypeSchema>, StoreError>;

    // ---- recovery jobs ----

    /// Stores a new recovery job.
    async fn create_recovery(&self, job: &RecoveryJob) -> Result<(), StoreError>;

    /// One recovery job of a tenant, with `done` counted now.
    async fn get_recovery(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<RecoveryJob>, StoreError>;

    /// Jobs still scheduling, each with the last event id it handled.
    async fn unfinished_recoveries(&self)
        -> Result<Vec<(RecoveryJob, Option<String>)>, StoreError>;

    /// Takes or renews, for `owner`, the lease on stepping recovery job `id`
    /// until `until_ms`: granted when nobody holds it, `owner` already does,
    /// or the holder's lease ended before `now_ms`. Processes sharing a store
    /// step a job one at a time, so its rate holds and no page is scheduled
    /// twice; a dead holder's job is taken over once its lease ends.
    async fn lease_recovery(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Counts the events in scope.
    async fn count_recovery_candidates(&self, scope: &RecoveryScope) -> Result<u64, StoreError>;

    /// Up to `limit` events in scope with ids after `after`, in id order,
    /// each with its latest delivery to the subscription.
    async fn recovery_candidates(
        &self,
        scope: &RecoveryScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecoveryCandidate>, StoreError>;

    /// Atomically: schedules `deliveries` for job `job`, records them as the
    /// job's, moves its cursor to `cursor` and adds them to `scheduled`,
    /// marking the job completed when `finished`.
    async fn advance_recovery(
        &self,
        job: &RecoveryJob,
        deliveries: Vec<ScheduledDelivery>,
        cursor: Option<String>,
        finished: bool,
    ) -> Result<(), StoreError>;
}
