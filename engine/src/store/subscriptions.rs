//! Subscriptions. Every change goes through one compare-and-set path:
//! [`create_subscription`](SubscriptionStore::create_subscription) inserts
//! only if absent, and every later change (update, pause, resume, disable,
//! secret rotation) is a [`SubscriptionChange`] applied by
//! [`modify_subscription`](SubscriptionStore::modify_subscription) to the
//! stored value, so a change never overwrites one it did not see (an API
//! update cannot undo a worker's auto-disable). Every write, delete
//! included, moves [`subscriptions_version`](SubscriptionStore::subscriptions_version).

use async_trait::async_trait;

use super::StoreError;
use crate::model::WebhookSubscription;

/// A change to one subscription, applied by
/// [`SubscriptionStore::modify_subscription`] to the stored value; returns
/// whether it changed anything. A store may run it more than once (again on
/// the newer value after losing a race), so it must depend only on the
/// subscription it is given.
pub type SubscriptionChange = Box<dyn FnMut(&mut WebhookSubscription) -> bool + Send>;

/// Subscriptions, and the version that tells processes to reload them.
#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    /// Stores a new subscription; `Conflict` if its id exists.
    async fn create_subscription(&self, sub: &WebhookSubscription) -> Result<(), StoreError>;

    /// Reads, changes and writes one subscription atomically: the write
    /// applies only if nobody changed it since the read (else the change
    /// runs again on the newer value), so no concurrent change is lost.
    /// Returns the subscription after the change and whether it changed, or
    /// `None` if it does not exist (a deleted one is never brought back).
    async fn modify_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        change: SubscriptionChange,
    ) -> Result<Option<(WebhookSubscription, bool)>, StoreError>;

    /// Deletes a subscription of a tenant; `false` if there was none.
    /// Its scheduled deliveries are dropped by the workers when they fall due.
    async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError>;

    /// One subscription of a tenant.
    async fn get_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError>;

    /// A tenant's subscriptions, newest first, with ids before `before`.
    async fn list_subscriptions(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError>;

    /// Every subscription of every tenant (to build the matching index).
    async fn all_subscriptions(&self) -> Result<Vec<WebhookSubscription>, StoreError>;

    /// A number that changes whenever any process creates, changes or
    /// deletes a subscription, so processes sharing the store know when to
    /// reload their index.
    async fn subscriptions_version(&self) -> Result<u64, StoreError>;
}
