//! The tenant keys of the embedded store, wrapped, in a SQLite file of
//! their own (`tenant-keys.db` beside `herald.db`), so a copy of the store
//! without it opens no tenant's secrets, and deleting a tenant's key
//! crypto-shreds its secrets in every copy ([`crate::tenant_keys`]).
//!
//! The file has no write-ahead log (a rollback journal, deleted at each
//! commit) and `secure_delete` on, so a deleted key is overwritten in place,
//! not left in a free page. A key is committed here before any secret sealed
//! under it is written to the store, and deleted only after the tenant's
//! subscriptions are gone from it.

use std::{path::Path, sync::Arc};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use super::db_err;
use crate::{store::StoreError, tenant_keys::TenantKeys};

/// The file's name in the data dir.
pub const FILE_NAME: &str = "tenant-keys.db";

/// The open key file.
pub(super) struct KeyFile {
    conn: Mutex<Connection>,
}

fn unreadable(tenant: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Secrets(format!("cannot decrypt the key of tenant {tenant}: {e}"))
}

impl KeyFile {
    /// Opens (or creates) the key file in `dir` and teaches `keys` every key
    /// in it; a key wrapped under an older master key is wrapped again
    /// under the current one. A key that does not unwrap fails the open.
    pub(super) fn open(dir: &Path, keys: &TenantKeys) -> Result<Self, StoreError> {
        let conn = Connection::open(dir.join(FILE_NAME)).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; PRAGMA secure_delete=ON;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS tenant_keys (
                 tenant_id TEXT PRIMARY KEY,
                 wrapped TEXT NOT NULL
             );",
        )
        .map_err(db_err)?;
        let rows = conn
            .prepare("SELECT tenant_id, wrapped FROM tenant_keys")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db_err)?;
        for (tenant, wrapped) in rows {
            if let Some(rewrapped) = keys
                .learn(&tenant, &wrapped)
                .map_err(|e| unreadable(&tenant, e))?
            {
                conn.execute(
                    "UPDATE tenant_keys SET wrapped = ?1 WHERE tenant_id = ?2",
                    params![rewrapped, tenant],
                )
                .map_err(db_err)?;
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Lets `keys` read a key another process sharing the file made.
    pub(super) fn load_for(self: &Arc<Self>, keys: &TenantKeys) {
        let file = Arc::downgrade(self);
        keys.set_loader(Box::new(move |tenant| {
            let file = file.upgrade()?;
            let conn = file.conn.lock();
            conn.query_row(
                "SELECT wrapped FROM tenant_keys WHERE tenant_id = ?1",
                [tenant],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or_else(|e| {
                tracing::warn!(tenant, error = %e, "reading a tenant key");
                None
            })
        }));
    }

    /// Makes `tenant`'s key unless `keys` knows it already; durable when
    /// this returns.
    pub(super) fn ensure(&self, keys: &TenantKeys, tenant: &str) -> Result<(), StoreError> {
        if keys.knows(tenant) {
            return Ok(());
        }
        let conn = self.conn.lock();
        conn.execute(
            "INSERT OR IGNORE INTO tenant_keys (tenant_id, wrapped) VALUES (?1, ?2)",
            params![tenant, keys.wrap_new(tenant)],
        )
        .map_err(db_err)?;
        let wrapped: String = conn
            .query_row(
                "SELECT wrapped FROM tenant_keys WHERE tenant_id = ?1",
                [tenant],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        keys.learn(tenant, &wrapped)
            .map_err(|e| unreadable(tenant, e))?;
        Ok(())
    }

    /// Deletes `tenant`'s key, here and from `keys`: whatever it sealed no
    /// longer opens. Returns whether there was one.
    pub(super) fn delete(&self, keys: &TenantKeys, tenant: &str) -> Result<bool, StoreError> {
        let conn = self.conn.lock();
        let had = conn
            .query_row(
                "SELECT 1 FROM tenant_keys WHERE tenant_id = ?1",
                [tenant],
                |_| Ok(()),
            )
            .optional()
            .map_err(db_err)?
            .is_some();
        conn.execute("DELETE FROM tenant_keys WHERE tenant_id = ?1", [tenant])
            .map_err(db_err)?;
        keys.forget(tenant);
        Ok(had)
    }
}
