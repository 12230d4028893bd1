//! The tenant keys of the CQL store, wrapped, in the `tenant_keys` table
//! ([`crate::tenant_keys`]). A process learns a key when it first needs it:
//! at connect (all of them), before it seals a tenant's secret (making the
//! key if there is none: an `IF NOT EXISTS` insert, so two processes racing
//! agree on one key), and when a body does not open under what it knows (a
//! tenant whose key another process made since).

use super::ScyllaStore;
use crate::{
    model::WebhookSubscription,
    store::{secrets::SubscriptionCodec, StoreError},
};

fn unreadable(tenant: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Secrets(format!("cannot decrypt the key of tenant {tenant}: {e}"))
}

impl ScyllaStore {
    /// Learns every stored tenant key; a key wrapped under an older master
    /// key is wrapped again under the current one.
    pub(super) async fn load_tenant_keys(&self) -> Result<(), StoreError> {
        let mut rows = Vec::new();
        self.scan(
            "SELECT tenant_id, wrapped FROM tenant_keys",
            (),
            |row: (String, String)| {
                rows.push(row);
                Ok(())
            },
        )
        .await?;
        for (tenant, wrapped) in rows {
            self.learn_wrapped(&tenant, &wrapped).await?;
        }
        Ok(())
    }

    async fn learn_wrapped(&self, tenant: &str, wrapped: &str) -> Result<(), StoreError> {
        let keys = self.codec.keys();
        if let Some(rewrapped) = keys
            .learn(tenant, wrapped)
            .map_err(|e| unreadable(tenant, e))?
        {
            self.lwt(
                "UPDATE tenant_keys SET wrapped = ? WHERE tenant_id = ? IF wrapped = ?",
                (rewrapped, tenant, wrapped),
            )
            .await?;
        }
        Ok(())
    }

    /// Reads and learns `tenant`'s key; `false` when it has none.
    async fn learn_tenant_key(&self, tenant: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = self
            .row(
                "SELECT wrapped FROM tenant_keys WHERE tenant_id = ?",
                (tenant,),
            )
            .await?;
        match row {
            Some((wrapped,)) => self.learn_wrapped(tenant, &wrapped).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Makes sure `tenant`'s key is known here, making it if it has none.
    pub(super) async fn ensure_tenant_key(&self, tenant: &str) -> Result<(), StoreError> {
        if self.codec.keys().knows(tenant) || self.learn_tenant_key(tenant).await? {
            return Ok(());
        }
        self.lwt(
            "INSERT INTO tenant_keys (tenant_id, wrapped) VALUES (?, ?) IF NOT EXISTS",
            (tenant, self.codec.keys().wrap_new(tenant)),
        )
        .await?;
        // Ours, or the one a racing process inserted first.
        if self.learn_tenant_key(tenant).await? {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "the key of tenant {tenant} was written but does not read back"
            )))
        }
    }

    /// Deletes `tenant`'s key: its secrets, wherever a copy is, no longer
    /// open.
    pub(super) async fn delete_tenant_key(&self, tenant: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM tenant_keys WHERE tenant_id = ?", (tenant,))
            .await?;
        self.codec.keys().forget(tenant);
        Ok(())
    }

    /// Decodes a stored subscription body; when its secrets do not open
    /// under the keys known here, reads its tenant's key once and tries
    /// again.
    pub(super) async fn decode_sub(&self, body: &str) -> Result<WebhookSubscription, StoreError> {
        match self.codec.decode(body) {
            Err(StoreError::Secrets(e)) => {
                let tenant = SubscriptionCodec::owner(body)?;
                if self.learn_tenant_key(&tenant).await? {
                    self.codec.decode(body)
                } else {
                    Err(StoreError::Secrets(e))
                }
            }
            other => other,
        }
    }
}
