//! Subscriptions, one partition per tenant, newest first. Changes made by
//! the engine while it runs (`modify_subscription`) are compare-and-set
//! lightweight transactions on the stored body, retried on a race, so no
//! concurrent change is lost.

use super::{ScyllaStore, TOP};
use crate::{
    model::WebhookSubscription,
    store::{StoreError, SubscriptionChange},
};

/// Attempts of a compare-and-set before giving up.
const CAS_ATTEMPTS: usize = 16;

impl ScyllaStore {
    pub(super) async fn put_sub(&self, sub: &WebhookSubscription) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO subscriptions (tenant_id, id, body) VALUES (?, ?, ?)",
            (&sub.tenant_id, &sub.id, self.codec.encode(sub)?),
        )
        .await
    }

    async fn sub_body(&self, tenant_id: &str, id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = self
            .row(
                "SELECT body FROM subscriptions WHERE tenant_id = ? AND id = ?",
                (tenant_id, id),
            )
            .await?;
        Ok(row.map(|(b,)| b))
    }

    pub(super) async fn get_sub(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError> {
        self.sub_body(tenant_id, id)
            .await?
            .map(|b| self.codec.decode(&b))
            .transpose()
    }

    pub(super) async fn modify_sub(
        &self,
        tenant_id: &str,
        id: &str,
        change: SubscriptionChange,
    ) -> Result<Option<(WebhookSubscription, bool)>, StoreError> {
        let Some(mut body) = self.sub_body(tenant_id, id).await? else {
            return Ok(None);
        };
        let mut sub = self.codec.decode(&body)?;
        let before = sub.clone();
        if !change(&mut sub) {
            return Ok(Some((sub, false)));
        }
        let after = sub.clone();
        for _ in 0..CAS_ATTEMPTS {
            let (applied, current) = self
                .lwt(
                    "UPDATE subscriptions SET body = ? WHERE tenant_id = ? AND id = ? IF body = ?",
                    (self.codec.encode(&sub)?, tenant_id, id, &body),
                )
                .await?;
            if applied {
                return Ok(Some((sub, true)));
            }
            // Somebody changed it meanwhile: redo the change on their version
            // (the change ran once; its effect is replayed field by field).
            match current.get("body") {
                Some(::scylla::value::CqlValue::Text(b)) => body = b.clone(),
                _ => return Ok(None),
            }
            sub = self.codec.decode(&body)?;
            if !redo(&before, &after, &mut sub) {
                return Ok(Some((sub, false)));
            }
        }
        Err(StoreError::Unavailable(format!(
            "subscription {id} kept changing under a concurrent writer"
        )))
    }

    pub(super) async fn all_subs(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        let mut subs = Vec::new();
        self.scan("SELECT body FROM subscriptions", (), |(body,): (String,)| {
            subs.push(self.codec.decode(&body)?);
            Ok(())
        })
        .await?;
        subs.sort_by(|a: &WebhookSubscription, b| a.id.cmp(&b.id));
        Ok(subs)
    }

    /// A tenant's subscriptions, newest first, with ids before `before`.
    pub async fn list_subscriptions(
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
        rows.iter().map(|(b,)| self.codec.decode(b)).collect()
    }

    /// Re-seals every subscription holding a plaintext secret or one
    /// sealed under an older key (compare-and-set on the body, so a
    /// concurrent change wins and is already sealed under its writer's key).
    pub(super) async fn reseal_subs(&self) -> Result<(), StoreError> {
        let mut stale = Vec::new();
        self.scan(
            "SELECT tenant_id, id, body FROM subscriptions",
            (),
            |(tenant, id, body): (String, String, String)| {
                if let Some(new_body) = self.codec.reseal(&body)? {
                    stale.push((tenant, id, body, new_body));
                }
                Ok(())
            },
        )
        .await?;
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

    /// Deletes a subscription of a tenant; `false` if there was none.
    pub async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let (applied, _) = self
            .lwt(
                "DELETE FROM subscriptions WHERE tenant_id = ? AND id = ? IF EXISTS",
                (tenant_id, id),
            )
            .await?;
        Ok(applied)
    }
}

/// Re-applies to `target` the fields a change moved from `before` to `after`
/// (the change itself ran once and cannot run again).
fn redo(
    before: &WebhookSubscription,
    after: &WebhookSubscription,
    target: &mut WebhookSubscription,
) -> bool {
    let (Ok(b), Ok(a), Ok(mut t)) = (
        serde_json::to_value(before),
        serde_json::to_value(after),
        serde_json::to_value(&*target),
    ) else {
        return false;
    };
    let (Some(b), Some(a), Some(tm)) = (b.as_object(), a.as_object(), t.as_object_mut()) else {
        return false;
    };
    let mut changed = false;
    for (k, v) in a {
        if b.get(k) != Some(v) && tm.get(k) != Some(v) {
            tm.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    match serde_json::from_value(t) {
        Ok(s) if changed => {
            *target = s;
            true
        }
        _ => false,
    }
}
