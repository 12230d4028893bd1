//! Subscriptions in SQLite. A change is read, applied and written inside
//! one writer transaction (the only writer), so it cannot lose a concurrent
//! one; every create, change and delete bumps the `subscriptions` version
//! in the same transaction.

use async_trait::async_trait;
use rusqlite::{params, types::Value, Connection, OptionalExtension};

use super::{audit::insert_pending, db_err, query_subs, EmbeddedStore};
use crate::{
    model::WebhookSubscription,
    store::{StoreError, SubscriptionChange, SubscriptionStore},
};

/// Moves the version readers compare to know when to reload.
pub(super) fn bump_version(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO versions (name, value) VALUES ('subscriptions', 1)
         ON CONFLICT(name) DO UPDATE SET value = value + 1",
    )
    .and_then(|mut st| st.execute([]))
    .map_err(db_err)?;
    Ok(())
}

const SELECT_ONE: &str = "SELECT body FROM subscriptions WHERE tenant_id = ?1 AND id = ?2";

#[async_trait]
impl SubscriptionStore for EmbeddedStore {
    async fn create_subscription(&self, sub: &WebhookSubscription) -> Result<(), StoreError> {
        self.key_file.ensure(self.codec.keys(), &sub.tenant_id)?;
        let body = self.codec.encode(sub)?;
        let (id, tenant) = (sub.id.clone(), sub.tenant_id.clone());
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO subscriptions (id, tenant_id, body) VALUES (?1, ?2, ?3)",
                    params![id, tenant, body],
                )
                .map_err(db_err)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "subscription {id:?} already exists"
                )));
            }
            insert_pending(conn, &audit)?;
            bump_version(conn)
        })
        .await
    }

    async fn modify_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        mut change: SubscriptionChange,
    ) -> Result<Option<(WebhookSubscription, bool)>, StoreError> {
        let args = vec![
            Value::from(tenant_id.to_string()),
            Value::from(id.to_string()),
        ];
        self.key_file.ensure(self.codec.keys(), tenant_id)?;
        let codec = self.codec.clone();
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let Some(mut sub) = query_subs(conn, &codec, SELECT_ONE, args)?.pop() else {
                return Ok(None);
            };
            let before = audit.as_ref().map(|_| serde_json::to_value(&sub));
            let changed = change(&mut sub);
            if changed {
                if let Some(record) = audit {
                    let record = crate::audit::with_changed_fields(record, before, &sub);
                    super::audit::insert(conn, &record)?;
                }
                let body = codec.encode(&sub)?;
                conn.execute(
                    "UPDATE subscriptions SET body = ?1 WHERE id = ?2",
                    params![body, sub.id],
                )
                .map_err(db_err)?;
                bump_version(conn)?;
            }
            Ok(Some((sub, changed)))
        })
        .await
    }

    async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant_id.to_string(), id.to_string());
        let audit = crate::audit::take_pending();
        self.write(move |conn| {
            let deleted = conn
                .execute(
                    "DELETE FROM subscriptions WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant, id],
                )
                .map_err(db_err)?;
            if deleted > 0 {
                insert_pending(conn, &audit)?;
                bump_version(conn)?;
            }
            Ok(deleted > 0)
        })
        .await
    }

    async fn get_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WebhookSubscription>, StoreError> {
        let args = vec![
            Value::from(tenant_id.to_string()),
            Value::from(id.to_string()),
        ];
        let codec = self.codec.clone();
        self.read(move |conn| query_subs(conn, &codec, SELECT_ONE, args).map(|mut v| v.pop()))
            .await
    }

    async fn list_subscriptions(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError> {
        let mut sql = String::from("SELECT body FROM subscriptions WHERE tenant_id = ?");
        let mut args = vec![Value::from(tenant_id.to_string())];
        if let Some(b) = before {
            sql.push_str(" AND id < ?");
            args.push(Value::from(b.to_string()));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(Value::from(limit as i64));
        let codec = self.codec.clone();
        self.read(move |conn| query_subs(conn, &codec, &sql, args))
            .await
    }

    async fn all_subscriptions(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        let codec = self.codec.clone();
        self.read(move |conn| {
            query_subs(
                conn,
                &codec,
                "SELECT body FROM subscriptions ORDER BY id",
                Vec::new(),
            )
        })
        .await
    }

    async fn subscriptions_version(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT value FROM versions WHERE name = 'subscriptions'")
                .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)).optional())
                .map(|v| v.unwrap_or(0) as u64)
                .map_err(db_err)
        })
        .await
    }
}
