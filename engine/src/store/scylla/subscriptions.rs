//! Subscriptions, one partition per tenant, newest first. Every change is
//! a lightweight transaction: a create is `IF NOT EXISTS`, and a change
//! (`modify_subscription`) reads the row, applies the change and writes it
//! back `IF revision = <read>`, running the change again on the newer value
//! when another writer got there first, so no concurrent change is lost (a
//! worker's auto-disable survives an API update made at the same time).
//! Rows written before revisions existed are matched on their body instead.
//! Every create, change and delete moves the `subscriptions` version in
//! `meta` (microseconds since the epoch: a new value on every write,
//! whichever process makes it).

use async_trait::async_trait;

use super::{ScyllaStore, TOP};
use crate::{
    model::WebhookSubscription,
    store::{StoreError, SubscriptionChange, SubscriptionStore},
};

/// Attempts of a compare-and-set before giving up.
const CAS_ATTEMPTS: usize = 16;

impl ScyllaStore {
    /// Marks that a subscription changed.
    pub(super) async fn bump_subscriptions_version(&self) -> Result<(), StoreError> {
        let now_us = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64;
        self.exec("UPDATE meta SET v = ? WHERE k = 'subscriptions'", (now_us,))
            .await
    }

    /// The stored body and revision of a subscription.
    async fn stored_sub(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(String, Option<i64>)>, StoreError> {
        self.row(
            "SELECT body, revision FROM subscriptions WHERE tenant_id = ? AND id = ?",
            (tenant_id, id),
        )
        .await
    }

    /// Writes `body` as revision `read + 1` if the row is still at revision
    /// `read` (or, for a row without one, still holds `old_body`).
    async fn write_sub_if(
        &self,
        tenant_id: &str,
        id: &str,
        body: String,
        read: Option<i64>,
        old_body: &str,
    ) -> Result<bool, StoreError> {
        let next = read.unwrap_or(0) + 1;
        let (applied, _) = match read {
            Some(rev) => {
                self.lwt(
                    "UPDATE subscriptions SET body = ?, revision = ? WHERE tenant_id = ? AND id = ? IF revision = ?",
                    (body, next, tenant_id, id, rev),
                )
                .await?
            }
            None => {
                self.lwt(
                    "UPDATE subscriptions SET body = ?, revision = ? WHERE tenant_id = ? AND id = ? IF body = ?",
                    (body, next, tenant_id, id, old_body),
                )
                .await?
            }
        };
        Ok(applied)
    }

    /// Re-seals every subscription holding a plaintext secret or one
    /// sealed under an older key (compare-and-set on the body, so a
    /// concurrent change wins and is already sealed under its writer's key).
    pub(super) async fn reseal_subs(&self) -> Result<(), StoreError> {
        let mut rows = Vec::new();
        self.scan(
            "SELECT tenant_id, id, body FROM subscriptions",
            (),
            |row: (String, String, String)| {
                rows.push(row);
                Ok(())
            },
        )
        .await?;
        let mut stale = Vec::new();
        for (tenant, id, body) in rows {
            self.ensure_tenant_key(&tenant).await?;
            if let Some(new_body) = self.codec.reseal(&body)? {
                stale.push((tenant, id, body, new_body));
            }
        }
        let mut resealed = 0u64;
        for (tenant, id, old, new) in &stale {
            let (applied, _) = self
                .lwt(
                    "UPDATE subscriptions SET body = ? WHERE tenant_id = ? AND id = ? IF body = ?",
                    (new, tenant, id, old),
                )
                .await?;
            resealed += u64::from(applied);
        }
        if resealed > 0 {
            tracing::info!(
                subscriptions = resealed,
                key = self.codec.cipher().ring().primary().id(),
                "signing secrets re-encrypted under the current key"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl SubscriptionStore for ScyllaStore {
    async fn create_subscription(&self, sub: &WebhookSubscription) -> Result<(), StoreError> {
        self.ensure_tenant_key(&sub.tenant_id).await?;
        let body = self.codec.encode(sub)?;
        let create = async {
            let (applied, _) = self
                .lwt(
                    "INSERT INTO subscriptions (tenant_id, id, body, revision) VALUES (?, ?, ?, 1) IF NOT EXISTS",
                    (&sub.tenant_id, &sub.id, body),
                )
                .await?;
            if !applied {
                return Err(StoreError::Conflict(format!(
                    "subscription {:?} already exists",
                    sub.id
                )));
            }
            Ok(())
        };
        self.audited(crate::audit::take_pending(), create, |_| true)
            .await?;
        self.bump_subscriptions_version().await
    }

    async fn modify_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        mut change: SubscriptionChange,
    ) -> Result<Option<(WebhookSubscription, bool)>, StoreError> {
        let audit = crate::audit::take_pending();
        self.ensure_tenant_key(tenant_id).await?;
        for _ in 0..CAS_ATTEMPTS {
            let Some((body, revision)) = self.stored_sub(tenant_id, id).await? else {
                return Ok(None);
            };
            let mut sub = self.decode_sub(&body).await?;
            let before = audit.as_ref().map(|_| serde_json::to_value(&sub));
            if !change(&mut sub) {
                return Ok(Some((sub, false)));
            }
            let new_body = self.codec.encode(&sub)?;
            // Write-ahead, with the fields this attempt changes.
            let record = audit
                .clone()
                .map(|r| crate::audit::with_changed_fields(r, before, &sub));
            let write = self.write_sub_if(tenant_id, id, new_body, revision, &body);
            if self.audited(record, write, |applied| *applied).await? {
                self.bump_subscriptions_version().await?;
                return Ok(Some((sub, true)));
            }
            // Somebody changed (or deleted) it meanwhile: read it again and
            // apply the change to what they wrote.
        }
        Err(StoreError::Unavailable(format!(
            "subscription {id} kept changing under a concurrent writer"
        )))
    }

    async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let delete = async {
            let (applied, _) = self
                .lwt(
                    "DELETE FROM subscriptions WHERE tenant_id = ? AND id = ? IF EXISTS",
                    (tenant_id, id),
                )
                .await?;
            Ok(applied)
        };
        let applied = self
            .audited(crate::audit::take_pending(), delete, |applied| *applied)
            .await?;
        if applied {
            self.bump_subscriptions_version().await?;
        }
        Ok(applied)
    }

    async fn get_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError> {
        match self.stored_sub(tenant_id, id).await? {
            Some((body, _)) => self.decode_sub(&body).await.map(Some),
            None => Ok(None),
        }
    }

    async fn list_subscriptions(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError> {
        let rows: Vec<(String,)> = self
            .rows(
                "SELECT body FROM subscriptions WHERE tenant_id = ? AND id < ? LIMIT ?",
                (
                    tenant_id,
                    before.unwrap_or(TOP),
                    limit.clamp(1, 10_000) as i32,
                ),
            )
            .await?;
        let mut subs = Vec::with_capacity(rows.len());
        for (body,) in &rows {
            subs.push(self.decode_sub(body).await?);
        }
        Ok(subs)
    }

    async fn all_subscriptions(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        let mut bodies = Vec::new();
        self.scan("SELECT body FROM subscriptions", (), |(body,): (String,)| {
            bodies.push(body);
            Ok(())
        })
        .await?;
        let mut subs = Vec::with_capacity(bodies.len());
        for body in &bodies {
            subs.push(self.decode_sub(body).await?);
        }
        subs.sort_by(|a: &WebhookSubscription, b| a.id.cmp(&b.id));
        Ok(subs)
    }

    async fn subscriptions_version(&self) -> Result<u64, StoreError> {
        let row: Option<(Option<i64>,)> = self
            .row("SELECT v FROM meta WHERE k = 'subscriptions'", ())
            .await?;
        Ok(row.and_then(|(v,)| v).unwrap_or(0) as u64)
    }
}
