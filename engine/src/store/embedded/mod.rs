//! The embedded store: SQLite in WAL mode with group-committed writes.
//!
//! All writes go to one writer thread. It takes every write waiting in its
//! queue, runs each inside its own savepoint of one transaction (so one
//! failing write does not sink its neighbours), commits once with
//! `synchronous=FULL`, and only then answers the callers: durable before
//! acknowledged, one fsync for many writes. Reads use a small pool of
//! read-only connections, which WAL lets run beside the writer.

use std::{path::Path, sync::Arc};

use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, types::Value, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

mod attempts;
mod audit;
mod catalogue;
mod delivery_log;
mod events;
mod held;
mod purge;
mod recovery;
mod schedule;
mod subscriptions;
mod tenant_keys;
mod tenants;

pub use tenant_keys::FILE_NAME as TENANT_KEYS_FILE;

use super::{secrets::SubscriptionCodec, StoreError};
use crate::{encryption::SecretCipher, model::WebhookSubscription};

/// Writes gathered into one transaction at most.
const MAX_BATCH: usize = 1024;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// The SQLite-backed [`Store`](super::Store); one file per role.
pub struct EmbeddedStore {
    /// Dropped with the store: ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
    writer: mpsc::Sender<Job>,
    attempts: attempts::AttemptQueue,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: std::path::PathBuf,
    codec: SubscriptionCodec,
    key_file: Arc<tenant_keys::KeyFile>,
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
        let key_file = Arc::new(tenant_keys::KeyFile::open(dir, codec.keys())?);
        key_file.load_for(codec.keys());
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
        reseal_subscriptions(&conn, &codec, &key_file)?;
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
            key_file,
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

/// The schema version [`EmbeddedStore::open`] brings a database to (its
/// `PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 10;

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
        (5, include_str!("schema_v5.sql")),
        (6, include_str!("schema_v6.sql")),
        (7, include_str!("schema_v7.sql")),
        (8, include_str!("schema_v8.sql")),
        (9, include_str!("schema_v9.sql")),
        (SCHEMA_VERSION, include_str!("schema_v10.sql")),
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
fn reseal_subscriptions(
    conn: &Connection,
    codec: &SubscriptionCodec,
    key_file: &tenant_keys::KeyFile,
) -> Result<(), StoreError> {
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
            key_file.ensure(codec.keys(), &SubscriptionCodec::owner(&body)?)?;
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
    query_text(conn, sql, args, |raw| codec.decode(raw))
}

/// Runs a query whose single column is a JSON body and decodes each row.
fn query_bodies<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    args: Vec<Value>,
) -> Result<Vec<T>, StoreError> {
    query_text(conn, sql, args, decode)
}

/// Runs a query whose single column is text and decodes each row with `decode`.
fn query_text<T>(
    conn: &Connection,
    sql: &str,
    args: Vec<Value>,
    decode: impl Fn(&str) -> Result<T, StoreError>,
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
