//! The embedded store: SQLite in WAL mode with group-committed writes.
//!
//! All writes go to one writer thread. It takes every write waiting in its
//! queue, runs each inside its own savepoint of one transaction (so one
//! failing write does not sink its neighbours), commits once with
//! `synchronous=FULL`, and only then answers the callers: durable before
//! acknowledged, one fsync for many writes. Reads use a small pool of
//! read-only connections, which WAL lets run beside the writer.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, types::Value, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

mod attempts;
mod held;
mod manage;

use super::{
    secrets::SubscriptionCodec, EventFilter, FanOut, FanOutResult, LogFilter, RecoveryScope, Store,
    StoreError, SubscriptionChange,
};
use crate::{
    encryption::SecretCipher,
    log::LogPosition,
    model::{DomainEvent, ScheduledDelivery, WebhookDeliveryLog, WebhookSubscription},
    resources::{ApiKey, EventTypeSchema, RecoveryCandidate, RecoveryJob},
};

/// Writes gathered into one transaction at most.
const MAX_BATCH: usize = 1024;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// The SQLite-backed [`Store`].
pub struct EmbeddedStore {
    /// Dropped with the store: ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
    writer: mpsc::Sender<Job>,
    attempts: attempts::AttemptQueue,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: std::path::PathBuf,
    codec: SubscriptionCodec,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(ref f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(Box::new(other)),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the database `herald.db` under `dir`; signing
    /// secrets are sealed with `cipher`. Subscriptions whose secrets are
    /// stored in plaintext (written before encryption) or under an older
    /// key are re-sealed under the current key before this returns; a
    /// secret that does not decrypt fails the open, naming the key.
    pub fn open(dir: &Path, cipher: SecretCipher) -> Result<Self, StoreError> {
        let codec = SubscriptionCodec::new(cipher);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let path = dir.join("herald.db");
        let conn = Connection::open(&path).map_err(db_err)?;
        conn.execute_batch(
            // cache_size and wal_autocheckpoint are for speed only (docs/performance.md):
            // a group commit of ~1000 writes must not spill dirty pages to the WAL
            // mid-transaction (the 2 MiB default cache did, writing pages many
            // times). Checkpoints run on their own thread (`run_checkpointer`), not
            // inside a commit that callers wait for; the writer checkpoints only
            // if that thread falls 256 MiB behind.
            // temp_store=MEMORY keeps each job's savepoint journal off the disk
            // (it was a pwrite per page per job; the WAL alone makes a commit durable).
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;
             PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=65536; PRAGMA temp_store=MEMORY;",
        )
        .map_err(db_err)?;
        // Room for every statement the writer prepares (rusqlite keeps 16 by
        // default, fewer than the writer uses, so some were parsed again).
        conn.set_prepared_statement_cache_capacity(128);
        migrate(&conn)?;
        reseal_subscriptions(&conn, &codec)?;
        let checkpoints = Connection::open(&path).map_err(db_err)?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("herald-store-checkpoint".into())
            .spawn(move || run_checkpointer(checkpoints, stopped))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Job>(8192);
        std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || run_writer(conn, rx))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            _stop_checkpoints: stop_checkpoints,
            writer: tx,
            attempts: attempts::AttemptQueue::default(),
            readers: Arc::new(Mutex::new(Vec::new())),
            path,
            codec,
        })
    }

    /// Runs `f` in the writer's next transaction; returns after the commit.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |conn| {
            let result = savepoint(conn, f);
            Box::new(move |commit| {
                let out = match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Unavailable(e)),
                };
                let _ = tx.send(out);
            })
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    /// Runs `f` on a read connection in the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match readers.lock().pop() {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(db_err)?;
                    c.busy_timeout(std::time::Duration::from_secs(5))
                        .map_err(db_err)?;
                    c
                }
            };
            let out = f(&conn);
            let mut pool = readers.lock();
            if pool.len() < 8 {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

/// Brings the schema to the current version: v1 on an empty database, then
/// each later step once, in its own transaction.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version < 1 {
        conn.execute_batch(include_str!("schema.sql"))
            .map_err(db_err)?;
    }
    for (step, sql) in [
        (2, include_str!("schema_v2.sql")),
        (3, include_str!("schema_v3.sql")),
        (4, include_str!("schema_v4.sql")),
    ] {
        if version < step {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql} COMMIT;"))
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Re-seals, in one transaction, every subscription holding a plaintext
/// secret or one sealed under an older key; returns how many. When
/// plaintext was replaced, the old bytes are overwritten (`secure_delete`)
/// and the WAL is truncated, so no copy of it stays in the database files.
fn reseal_subscriptions(conn: &Connection, codec: &SubscriptionCodec) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
    let result = (|| {
        let mut st = conn
            .prepare("SELECT id, body FROM subscriptions")
            .map_err(db_err)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let mut resealed = Vec::new();
        let mut had_plaintext = false;
        for (id, body) in rows {
            if let Some(new_body) = codec.reseal(&body)? {
                had_plaintext |= body.contains("\"whsec_");
                resealed.push((id, new_body));
            }
        }
        if had_plaintext {
            conn.execute_batch("PRAGMA secure_delete = ON")
                .map_err(db_err)?;
        }
        for (id, body) in &resealed {
            conn.execute(
                "UPDATE subscriptions SET body = ?1 WHERE id = ?2",
                params![body, id],
            )
            .map_err(db_err)?;
        }
        Ok((resealed.len(), had_plaintext))
    })();
    let (count, had_plaintext) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    };
    conn.execute_batch("COMMIT").map_err(db_err)?;
    if had_plaintext {
        conn.execute_batch("PRAGMA secure_delete = OFF")
            .map_err(db_err)?;
        // Moves the new pages into the database file and empties the WAL,
        // which held the plaintext versions.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(db_err)?;
    }
    if count > 0 {
        tracing::info!(
            subscriptions = count,
            key = codec.cipher().ring().primary().id(),
            "signing secrets re-encrypted under the current key"
        );
    }
    Ok(())
}

fn savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Prepared once: a group commit runs these around every one of its jobs.
    let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([]));
    run("SAVEPOINT job").map_err(db_err)?;
    let out = f(conn);
    if out.is_err() {
        run("ROLLBACK TO job").map_err(db_err)?;
    }
    run("RELEASE job").map_err(db_err)?;
    out
}

/// How often the WAL is copied into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies committed WAL frames into the database file beside the writer
/// (a passive checkpoint never blocks it), so no commit waits for a
/// checkpoint; ends when the store is dropped.
fn run_checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints if the WAL grows");
        }
    }
}

fn run_writer(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = e.to_string();
            for job in jobs {
                // Run nothing; tell every caller.
                let reply = job_reply_only(job, &conn);
                reply(Err(msg.clone()));
            }
            continue;
        }
        let replies: Vec<Reply> = jobs.into_iter().map(|job| job(&conn)).collect();
        let commit = conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = %e, "store commit failed; the batch is refused");
            e.to_string()
        });
        for reply in replies {
            reply(commit.clone());
        }
    }
}

/// A job whose transaction could not even begin: run it inside a savepoint
/// that is rolled back, only to obtain its reply.
fn job_reply_only(job: Job, conn: &Connection) -> Reply {
    let _ = conn.execute_batch("SAVEPOINT doomed");
    let reply = job(conn);
    let _ = conn.execute_batch("ROLLBACK TO doomed; RELEASE doomed");
    reply
}

fn insert_event(
    conn: &Connection,
    event: &DomainEvent,
    position: LogPosition,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(event).map_err(json_err)?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO events (id, tenant_id, event_type, state, partition, log_offset, body)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            event.id,
            event.tenant_id,
            event.event_type,
            position.partition,
            position.offset as i64,
            body
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// Claims `(tenant, dedupe_key)` for the event unless a live claim exists;
/// returns the event id holding it afterwards.
fn claim_dedupe(
    conn: &Connection,
    event: &DomainEvent,
    key: &str,
    until_ms: i64,
    now_ms: i64,
) -> Result<String, StoreError> {
    conn.prepare_cached(
        "DELETE FROM dedupe WHERE tenant_id = ?1 AND dedupe_key = ?2 AND expires_at <= ?3",
    )
    .and_then(|mut st| st.execute(params![event.tenant_id, key, now_ms]))
    .map_err(db_err)?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO dedupe (tenant_id, dedupe_key, event_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![event.tenant_id, key, event.id, until_ms]))
    .map_err(db_err)?;
    conn.prepare_cached("SELECT event_id FROM dedupe WHERE tenant_id = ?1 AND dedupe_key = ?2")
        .and_then(|mut st| st.query_row(params![event.tenant_id, key], |r| r.get(0)))
        .map_err(db_err)
}

/// Adds a delivery to the schedule, due at its time, or leased until
/// `lease_until_ms` (handed to a shard by the caller).
fn insert_schedule(
    conn: &Connection,
    d: &ScheduledDelivery,
    lease_until_ms: Option<i64>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO schedule
         (delivery_id, tenant_id, event_id, subscription_id, attempt, is_replay, replay_of, due_at, seq, ordered, leased)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut st| {
        st.execute(params![
            d.delivery_id,
            d.tenant_id,
            d.event_id,
            d.subscription_id,
            d.attempt,
            d.is_replay,
            d.replay_of,
            lease_until_ms.unwrap_or(d.due_at_ms),
            d.seq,
            d.ordered,
            lease_until_ms.is_some()
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(json_err)
}

/// Runs a query whose single column is a stored subscription and decodes
/// each row, opening its secrets.
fn query_subs(
    conn: &Connection,
    codec: &SubscriptionCodec,
    sql: &str,
    args: Vec<Value>,
) -> Result<Vec<WebhookSubscription>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(db_err)?;
    let rows = st
        .query_map(params_from_iter(args), |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(codec.decode(&row.map_err(db_err)?)?);
    }
    Ok(out)
}

/// Runs a query whose single column is a JSON body and decodes each row.
fn query_bodies<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    args: Vec<Value>,
) -> Result<Vec<T>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(db_err)?;
    let rows = st
        .query_map(params_from_iter(args), |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(decode(&row.map_err(db_err)?)?);
    }
    Ok(out)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_tenant(
        &self,
        tenant_id: &str,
        first_key: &ApiKey,
        key_hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let tenant = tenant_id.to_string();
        let key = first_key.clone();
        self.write(move |conn| {
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO tenants (id, created_at) VALUES (?1, ?2)",
                    params![tenant, crate::clock::now_ms()],
                )
                .map_err(db_err)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "tenant {tenant:?} already exists"
                )));
            }
            manage::insert_key(conn, &key, key_hash)
        })
        .await
    }

    async fn tenant_for_key(&self, key_hash: [u8; 32]) -> Result<Option<String>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT tenant_id FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut st| st.query_row([key_hash.as_slice()], |r| r.get(0)).optional())
            .map_err(db_err)
        })
        .await
    }

    async fn put_subscription(&self, sub: &WebhookSubscription) -> Result<(), StoreError> {
        let body = self.codec.encode(sub)?;
        let (id, tenant) = (sub.id.clone(), sub.tenant_id.clone());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO subscriptions (id, tenant_id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![id, tenant, body],
            )
            .map_err(db_err)?;
            conn.execute(
                "INSERT INTO versions (name, value) VALUES ('subscriptions', 1)
                 ON CONFLICT(name) DO UPDATE SET value = value + 1",
                [],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn modify_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        change: SubscriptionChange,
    ) -> Result<Option<(WebhookSubscription, bool)>, StoreError> {
        let args = vec![
            Value::from(tenant_id.to_string()),
            Value::from(id.to_string()),
        ];
        let codec = self.codec.clone();
        self.write(move |conn| {
            let Some(mut sub) = query_subs(
                conn,
                &codec,
                "SELECT body FROM subscriptions WHERE tenant_id = ?1 AND id = ?2",
                args,
            )?
            .pop() else {
                return Ok(None);
            };
            let changed = change(&mut sub);
            if changed {
                let body = codec.encode(&sub)?;
                conn.execute(
                    "UPDATE subscriptions SET body = ?1 WHERE id = ?2",
                    params![body, sub.id],
                )
                .map_err(db_err)?;
            }
            Ok(Some((sub, changed)))
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
        self.read(move |conn| {
            query_subs(
                conn,
                &codec,
                "SELECT body FROM subscriptions WHERE tenant_id = ?1 AND id = ?2",
                args,
            )
            .map(|mut v| v.pop())
        })
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

    async fn record_event(
        &self,
        event: &DomainEvent,
        position: LogPosition,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.record_events(vec![(event.clone(), position)], dedupe_until_ms)
            .await
    }

    async fn record_events(
        &self,
        events: Vec<(DomainEvent, LogPosition)>,
        dedupe_until_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            for (event, position) in &events {
                insert_event(conn, event, *position)?;
                if let Some(key) = &event.dedupe_key {
                    claim_dedupe(conn, event, key, dedupe_until_ms, crate::clock::now_ms())?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn event_by_dedupe_key(
        &self,
        tenant_id: &str,
        dedupe_key: &str,
        now_ms: i64,
    ) -> Result<Option<DomainEvent>, StoreError> {
        let args = vec![
            Value::from(tenant_id.to_string()),
            Value::from(dedupe_key.to_string()),
            Value::from(now_ms),
        ];
        self.read(move |conn| {
            query_bodies(
                conn,
                "SELECT e.body FROM dedupe d JOIN events e ON e.id = d.event_id
                 WHERE d.tenant_id = ?1 AND d.dedupe_key = ?2 AND d.expires_at > ?3",
                args,
            )
            .map(|mut v| v.pop())
        })
        .await
    }

    async fn get_event(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<DomainEvent>, StoreError> {
        let args = vec![
            Value::from(tenant_id.to_string()),
            Value::from(id.to_string()),
        ];
        self.read(move |conn| {
            query_bodies(
                conn,
                "SELECT body FROM events WHERE tenant_id = ?1 AND id = ?2 AND state != 2",
                args,
            )
            .map(|mut v| v.pop())
        })
        .await
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let mut sql = String::from("SELECT body FROM events WHERE tenant_id = ? AND state != 2");
        let mut args = vec![Value::from(tenant_id.to_string())];
        if let Some(before) = &filter.before {
            sql.push_str(" AND id < ?");
            args.push(Value::from(before.clone()));
        }
        if let Some(t) = &filter.event_type {
            if let Some(prefix) = t.strip_suffix('*') {
                sql.push_str(" AND substr(event_type, 1, ?) = ?");
                args.push(Value::from(prefix.len() as i64));
                args.push(Value::from(prefix.to_string()));
            } else {
                sql.push_str(" AND event_type = ?");
                args.push(Value::from(t.clone()));
            }
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(Value::from(limit as i64));
        self.read(move |conn| query_bodies(conn, &sql, args)).await
    }

    async fn fan_out(
        &self,
        batch: Vec<FanOut>,
        dedupe_until_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<FanOutResult>, StoreError> {
        self.write(move |conn| {
            let mut results = Vec::with_capacity(batch.len());
            for item in &batch {
                // Usually indexed at emit already: encode the body only if not.
                let state: i64 = match conn
                    .prepare_cached("SELECT state FROM events WHERE id = ?1")
                    .and_then(|mut st| st.query_row([&item.event.id], |r| r.get(0)).optional())
                    .map_err(db_err)?
                {
                    Some(state) => state,
                    None => {
                        insert_event(conn, &item.event, item.position)?;
                        0
                    }
                };
                if state != 0 {
                    results.push(FanOutResult::AlreadyDone);
                    continue;
                }
                if let Some(key) = &item.event.dedupe_key {
                    let holder = claim_dedupe(conn, &item.event, key, dedupe_until_ms, now_ms)?;
                    if holder != item.event.id {
                        conn.prepare_cached("UPDATE events SET state = 2 WHERE id = ?1")
                            .and_then(|mut st| st.execute([&item.event.id]))
                            .map_err(db_err)?;
                        results.push(FanOutResult::Duplicate);
                        continue;
                    }
                }
                for d in &item.deliveries {
                    insert_schedule(conn, d, item.lease_until_ms.filter(|_| !d.ordered))?;
                }
                conn.prepare_cached("UPDATE events SET state = 1 WHERE id = ?1")
                    .and_then(|mut st| st.execute([&item.event.id]))
                    .map_err(db_err)?;
                results.push(FanOutResult::Scheduled);
            }
            Ok(results)
        })
        .await
    }

    async fn schedule(&self, deliveries: Vec<ScheduledDelivery>) -> Result<(), StoreError> {
        self.write(move |conn| {
            deliveries
                .iter()
                .try_for_each(|d| insert_schedule(conn, d, None))
        })
        .await
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(ScheduledDelivery, DomainEvent)>, StoreError> {
        self.write(move |conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT s.delivery_id, s.tenant_id, s.event_id, s.subscription_id, s.attempt,
                            s.is_replay, s.replay_of, s.due_at, s.seq, s.ordered, e.body
                     FROM schedule s JOIN events e ON e.id = s.event_id
                     WHERE s.due_at <= ?1
                       AND (s.ordered = 0 OR NOT EXISTS (
                             SELECT 1 FROM schedule o
                             WHERE o.subscription_id = s.subscription_id
                               AND (o.seq < s.seq OR (o.seq = s.seq AND o.delivery_id < s.delivery_id))))
                     ORDER BY s.due_at LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map(params![now_ms, limit as i64], |r| {
                    Ok((
                        ScheduledDelivery {
                            delivery_id: r.get(0)?,
                            tenant_id: r.get(1)?,
                            event_id: r.get(2)?,
                            subscription_id: r.get(3)?,
                            attempt: r.get(4)?,
                            is_replay: r.get(5)?,
                            replay_of: r.get(6)?,
                            due_at_ms: r.get(7)?,
                            seq: r.get(8)?,
                            ordered: r.get(9)?,
                        },
                        r.get::<_, String>(10)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (d, body) = row.map_err(db_err)?;
                out.push((d, decode::<DomainEvent>(&body)?));
            }
            let mut lease = conn
                .prepare_cached(
                    "UPDATE schedule SET due_at = ?1, leased = 1, held = 0 WHERE delivery_id = ?2",
                )
                .map_err(db_err)?;
            for (d, _) in &out {
                lease
                    .execute(params![lease_until_ms, d.delivery_id])
                    .map_err(db_err)?;
            }
            Ok(out)
        })
        .await
    }

    async fn record_attempt(
        &self,
        attempt: WebhookDeliveryLog,
        next: Option<ScheduledDelivery>,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(&attempt).map_err(json_err)?;
        let (reply, answer) = oneshot::channel();
        let first = self.attempts.push(attempts::Pending {
            attempt,
            body,
            next,
            reply,
        });
        if first && self.writer.send(self.attempts.job()).await.is_err() {
            self.attempts.refuse("store is shutting down");
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    async fn release_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE schedule SET due_at = ?1, leased = 0 WHERE leased = 1",
                [now_ms],
            )
            .map(|n| n as u64)
            .map_err(db_err)
        })
        .await
    }

    async fn hold(
        &self,
        delivery: &ScheduledDelivery,
        recheck_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.h_hold(delivery, recheck_at_ms).await
    }

    async fn release_held(&self, subscription_id: &str, now_ms: i64) -> Result<u64, StoreError> {
        self.h_release_held(subscription_id, now_ms).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT min(due_at) FROM schedule", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map_err(db_err)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await
    }

    async fn schedule_backlog(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM schedule", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }

    async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<WebhookDeliveryLog>, StoreError> {
        let mut sql = String::from("SELECT body FROM delivery_logs WHERE tenant_id = ?");
        let mut args = vec![Value::from(tenant_id.to_string())];
        for (column, value) in [
            ("subscription_id", &filter.subscription_id),
            ("event_id", &filter.event_id),
            ("outcome", &filter.outcome),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(Value::from(v.clone()));
            }
        }
        if let Some(before) = &filter.before {
            sql.push_str(" AND id < ?");
            args.push(Value::from(before.clone()));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(Value::from(limit as i64));
        self.read(move |conn| query_bodies(conn, &sql, args)).await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            conn.execute("DELETE FROM dedupe WHERE expires_at <= ?1", [now_ms])
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }

    async fn list_subscriptions(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, StoreError> {
        self.m_list_subscriptions(tenant_id, before, limit).await
    }

    async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<bool, StoreError> {
        self.m_delete_subscription(tenant_id, id).await
    }

    async fn tenant_exists(&self, tenant_id: &str) -> Result<bool, StoreError> {
        self.m_tenant_exists(tenant_id).await
    }

    async fn create_api_key(&self, key: &ApiKey, key_hash: [u8; 32]) -> Result<(), StoreError> {
        self.m_create_api_key(key, key_hash).await
    }

    async fn list_api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        self.m_list_api_keys(tenant_id).await
    }

    async fn revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        at_ms: i64,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.m_revoke_api_key(tenant_id, key_id, at_ms).await
    }

    async fn put_event_type(&self, schema: &EventTypeSchema) -> Result<bool, StoreError> {
        self.m_put_event_type(schema).await
    }

    async fn all_event_types(&self) -> Result<Vec<EventTypeSchema>, StoreError> {
        self.m_all_event_types().await
    }

    async fn create_recovery(&self, job: &RecoveryJob) -> Result<(), StoreError> {
        self.m_create_recovery(job).await
    }

    async fn get_recovery(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<RecoveryJob>, StoreError> {
        self.m_get_recovery(tenant_id, id).await
    }

    async fn unfinished_recoveries(
        &self,
    ) -> Result<Vec<(RecoveryJob, Option<String>)>, StoreError> {
        self.m_unfinished_recoveries().await
    }

    async fn lease_recovery(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.m_lease_recovery(id, owner, now_ms, until_ms).await
    }

    async fn count_recovery_candidates(&self, scope: &RecoveryScope) -> Result<u64, StoreError> {
        self.m_count_recovery_candidates(scope).await
    }

    async fn recovery_candidates(
        &self,
        scope: &RecoveryScope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecoveryCandidate>, StoreError> {
        self.m_recovery_candidates(scope, after, limit).await
    }

    async fn advance_recovery(
        &self,
        job: &RecoveryJob,
        deliveries: Vec<ScheduledDelivery>,
        cursor: Option<String>,
        finished: bool,
    ) -> Result<(), StoreError> {
        self.m_advance_recovery(job, deliveries, cursor, finished)
            .await
    }
}
