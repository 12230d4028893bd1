//! Recovery jobs: redeliveries of a subscription's events over a time
//! range, stepped a page at a time under a lease.

use async_trait::async_trait;

use super::StoreError;
use crate::{
    model::ScheduledDelivery,
    resources::{RecoveryCandidate, RecoveryJob},
};

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

/// Recovery jobs.
#[async_trait]
pub trait RecoveryStore: Send + Sync + 'static {
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
