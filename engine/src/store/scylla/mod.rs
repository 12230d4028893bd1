//! The CQL store: ScyllaDB in production (Apache Cassandra 5.0 in tests),
//! through the `scylla` driver, for the distributed deployment.
//!
//! What it guarantees, and how:
//! - **Durable before acknowledged**: every write runs at `LOCAL_QUORUM`
//!   and returns only once a quorum of replicas has it.
//! - **Bounded partitions**: every history table (event index, delivery
//!   logs, per-subscription state) is partitioned by day (`day` = unix days
//!   of the row's UUIDv7 id); lists walk the days newest first, each page a
//!   clustering-range read (`id < cursor LIMIT n`) inside one partition.
//! - **Retention by TTL**: history tables carry `default_time_to_live` =
//!   the configured retention (30 days unless set); the dedupe window is a
//!   per-row `USING TTL` equal to the window.
//! - **No lost delivery with several workers**: a delivery is claimed by a
//!   lightweight transaction (`UPDATE .. IF due_at = <seen>`), so two
//!   processes never both win the same due row; the lease is a due time in
//!   the future, so a crashed worker's claims fall due again on their own.
//!   Rows move between due-index buckets new-row-first: a crash leaves a
//!   stale index row (cleaned lazily) but never a delivery without one.
//!   `release_leases` exists for the embedded mode's single process; with
//!   CQL, leases simply expire (the engine does not call it).
//! - **Audit records written ahead**: a change's audit record cannot share
//!   a lightweight transaction with it, so it is written before the change
//!   and deleted if the change is refused (`audit.rs`): a crash may leave a
//!   record of a change that did not happen, never a change without one.
//! - **At least once, never lost**: writes spanning partitions are not
//!   atomic (batches are used only within one partition); each sequence is
//!   ordered so that a crash between two writes repeats work (a possible
//!   duplicate delivery) rather than losing it.
//!
//! Statements are prepared once and cached ([`CachingSession`]); the
//! driver's default load balancing is token-aware, so each statement goes to
//! a replica of its partition.

mod audit;
mod catalogue;
mod events;
mod grouped;
mod held;
mod log_writer;
mod logs;
mod marks;
mod purge;
mod recovery;
mod schedule;
mod subscriptions;
mod tenant_keys;
mod tenants;

use std::{collections::HashMap, sync::Arc, time::Duration};

use ::scylla::{
    client::{
        caching_session::CachingSession, execution_profile::ExecutionProfile,
        session_builder::SessionBuilder,
    },
    deserialize::row::DeserializeRow,
    serialize::row::SerializeRow,
    statement::Consistency,
    value::{CqlValue, Row},
};
use futures::TryStreamExt;

use super::{secrets::SubscriptionCodec, StoreError};
use crate::{config::ScyllaConfig, encryption::SecretCipher};

const DAY_MS: i64 = 86_400_000;

/// The CQL store; one file per role.
pub struct ScyllaStore {
    session: Arc<CachingSession>,
    retention_days: i32,
    /// Audit records' TTL in seconds.
    audit_ttl: i32,
    codec: SubscriptionCodec,
    marks: marks::ReadMarks,
    /// Recovery jobs this process stepped last: `scheduled` as it wrote it.
    recovery_tally: parking_lot::Mutex<HashMap<String, u64>>,
    /// Statements sent, by kind.
    ops: Arc<super::OpCounts>,
    /// Delivery-log rows, written in groups.
    log_writer: log_writer::LogWriter,
    /// Whether the keyspace has `logs_by_event` (made by a version before
    /// `logs_by_event_slot`): lists by event and purges read it too.
    legacy_by_event: bool,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(corrupt)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(corrupt)
}

/// Unix milliseconds inside a UUIDv7 id like `evt_0190f1...` (the first 48 bits).
pub(crate) fn id_ms(id: &str) -> Option<i64> {
    let hex = id.split_once('_').map_or(id, |(_, h)| h);
    i64::from_str_radix(hex.get(..12)?, 16).ok()
}

/// The day bucket of unix milliseconds.
pub(crate) fn day_of_ms(ms: i64) -> i32 {
    ms.div_euclid(DAY_MS) as i32
}

/// The day bucket of an id (today's for ids without a time).
fn id_day(id: &str) -> i32 {
    day_of_ms(id_ms(id).unwrap_or_else(crate::clock::now_ms))
}

/// Milliseconds of events whose attempts share a `logs_by_event_slot` partition.
const EVENT_SLOT_MS: i64 = 10_000;

/// The `logs_by_event_slot` partition of an event's attempts (the slot of
/// now for ids without a time, like [`id_day`]).
fn event_slot(event_id: &str) -> i64 {
    id_ms(event_id)
        .unwrap_or_else(crate::clock::now_ms)
        .div_euclid(EVENT_SLOT_MS)
}

/// Sorts after every id (`~` is above hex digits), the cursor of a first page.
const TOP: &str = "~";

impl ScyllaStore {
    /// Connects to the cluster, creates the keyspace (with the configured
    /// replication) and the tables if missing, and applies the retention to
    /// the history tables. Signing secrets are sealed with `cipher`;
    /// subscriptions holding plaintext secrets (written before encryption)
    /// or secrets sealed under an older key are re-sealed under the current
    /// key before this returns, and a secret that does not decrypt fails
    /// the connect, naming the key.
    pub async fn connect(config: &ScyllaConfig, cipher: SecretCipher) -> Result<Self, StoreError> {
        config.validate().map_err(StoreError::Unavailable)?;
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .request_timeout(Some(Duration::from_secs(15)))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .connection_timeout(Duration::from_secs(10))
            // The schema statements below each wait for the nodes to agree
            // on the schema: poll for it often (the driver's 200 ms was most
            // of a new keyspace's 5 s), and reload the cluster's metadata
            // once at the end rather than after each statement.
            .schema_agreement_interval(Duration::from_millis(20))
            .refresh_metadata_on_auto_schema_agreement(false)
            .build()
            .await
            .map_err(|e| {
                unavailable(format!(
                    "cannot reach the CQL nodes {:?}: {e}",
                    config.nodes
                ))
            })?;
        let ks = &config.keyspace;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {} AND durable_writes = true",
                    config.replication.trim()
                ),
                (),
            )
            .await
            .map_err(unavailable)?;
        session.use_keyspace(ks, false).await.map_err(unavailable)?;
        let retention = config.retention.as_secs().max(1);
        for statement in schema_statements() {
            let statement = statement.replace("{retention}", &retention.to_string());
            session
                .query_unpaged(statement, ())
                .await
                .map_err(unavailable)?;
        }
        // Columns added since a table was first created.
        for (table, column, kind) in ADDED_COLUMNS {
            let present = schema_has(
                &session,
                "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
                (ks, table, column),
            )
            .await?;
            if !present {
                session
                    .query_unpaged(format!("ALTER TABLE {table} ADD {column} {kind}"), ())
                    .await
                    .map_err(unavailable)?;
            }
        }
        let legacy_by_event = schema_has(
            &session,
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'logs_by_event'",
            (ks,),
        )
        .await?;
        // Tables created by an earlier run keep the retention configured now.
        let legacy = legacy_by_event.then_some("logs_by_event");
        for table in HISTORY_TABLES.into_iter().chain(legacy) {
            session
                .query_unpaged(
                    format!("ALTER TABLE {table} WITH default_time_to_live = {retention}"),
                    (),
                )
                .await
                .map_err(unavailable)?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(unavailable)?;
        // One metadata reload for all the statements above, so token-aware
        // routing knows a keyspace created just now.
        session.refresh_metadata().await.map_err(unavailable)?;
        let session = Arc::new(CachingSession::from(session, 256));
        let ops = Arc::new(super::OpCounts::default());
        let store = Self {
            log_writer: log_writer::LogWriter::start(session.clone(), ops.clone()),
            session,
            retention_days: (retention / 86_400).max(1) as i32,
            audit_ttl: config
                .audit_retention
                .as_secs()
                .clamp(3600, 20 * 365 * 86_400) as i32,
            codec: SubscriptionCodec::new(cipher),
            marks: marks::ReadMarks::default(),
            recovery_tally: Default::default(),
            ops,
            legacy_by_event,
        };
        store.load_tenant_keys().await?;
        store.reseal_subs().await?;
        Ok(store)
    }

    /// Runs a statement, ignoring any rows.
    async fn exec(&self, cql: &'static str, values: impl SerializeRow) -> Result<(), StoreError> {
        self.ops.write();
        self.session
            .execute_unpaged(cql, values)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Runs a bounded query (a key lookup or a `LIMIT`ed range) and decodes its rows.
    async fn rows<R>(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.ops.read();
        let result = self
            .session
            .execute_unpaged(cql, values)
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?;
        result
            .rows::<R>()
            .map_err(corrupt)?
            .collect::<Result<Vec<R>, _>>()
            .map_err(corrupt)
    }

    /// The first row of a bounded query.
    async fn row<R>(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        Ok(self.rows(cql, values).await?.into_iter().next())
    }

    /// Runs an unbounded query page by page (the driver's paging state),
    /// calling `each` per row.
    async fn scan<R>(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
        mut each: impl FnMut(R) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.ops.read();
        let mut stream = self
            .session
            .execute_iter(cql, values)
            .await
            .map_err(unavailable)?
            .rows_stream::<R>()
            .map_err(corrupt)?;
        while let Some(row) = stream.try_next().await.map_err(unavailable)? {
            each(row)?;
        }
        Ok(())
    }

    /// Runs a lightweight transaction: whether it applied, and the current
    /// values by column name when it did not.
    async fn lwt(
        &self,
        cql: &'static str,
        values: impl SerializeRow,
    ) -> Result<(bool, HashMap<String, CqlValue>), StoreError> {
        self.ops.conditional();
        let result = self
            .session
            .execute_unpaged(cql, values)
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?;
        let names: Vec<String> = result
            .column_specs()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let row = result
            .maybe_first_row::<Row>()
            .map_err(corrupt)?
            .ok_or_else(|| corrupt("a conditional write returned no row"))?;
        let mut applied = false;
        let mut current = HashMap::new();
        for (name, value) in names.into_iter().zip(row.columns) {
            if name == "[applied]" {
                applied = matches!(value, Some(CqlValue::Boolean(true)));
            } else if let Some(v) = value {
                current.insert(name, v);
            }
        }
        Ok((applied, current))
    }

    /// Walks day partitions newest first from the day of `before` (or today)
    /// back to the retention horizon, reading pages of `(id, a, b, body)`
    /// rows with `id < cursor`, keeping the `(id, body)` of those `keep`
    /// accepts, until `limit` (a body is null in the delivery log's tables
    /// of keys). `cql` takes the `prefix` key values, then `day`, the cursor
    /// and a limit.
    async fn walk_days(
        &self,
        cql: &'static str,
        prefix: &[&str],
        before: Option<&str>,
        limit: usize,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let today = day_of_ms(crate::clock::now_ms());
        let days = (today, today - self.retention_days - 1);
        self.walk_days_between(cql, prefix, before, limit, days, |_, a, b| keep(a, b))
            .await
    }

    /// [`walk_days`](Self::walk_days) from day `newest` back to day
    /// `oldest` (both included); `keep` also sees each row's id.
    async fn walk_days_between(
        &self,
        cql: &'static str,
        prefix: &[&str],
        before: Option<&str>,
        limit: usize,
        (newest, oldest): (i32, i32),
        keep: impl Fn(&str, &str, &str) -> bool,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut day = before.map_or(newest, id_day).min(newest);
        let mut cursor = before.unwrap_or(TOP).to_string();
        let page = (limit.max(1) * 2).clamp(20, 1000) as i32;
        let mut out = Vec::new();
        while out.len() < limit && day >= oldest {
            let mut values: Vec<CqlValue> = prefix
                .iter()
                .map(|p| CqlValue::Text(p.to_string()))
                .collect();
            values.push(CqlValue::Int(day));
            values.push(CqlValue::Text(cursor.clone()));
            values.push(CqlValue::Int(page));
            let rows: Vec<DayRow> = self.rows(cql, values).await?;
            let full = rows.len() == page as usize;
            for (id, a, b, body) in rows {
                cursor.clone_from(&id);
                if keep(&id, a.as_deref().unwrap_or(""), b.as_deref().unwrap_or("")) {
                    out.push((id, body));
                    if out.len() == limit {
                        break;
                    }
                }
            }
            if !full {
                day -= 1;
                cursor = TOP.to_string();
            }
        }
        Ok(out)
    }
}

/// A row of a day walk: id, two columns `keep` looks at, the body (null in
/// the delivery log's tables of keys).
type DayRow = (String, Option<String>, Option<String>, Option<String>);

/// Whether a query of `system_schema` finds a row (a table or column that exists).
async fn schema_has(
    session: &::scylla::client::session::Session,
    cql: &'static str,
    values: impl SerializeRow,
) -> Result<bool, StoreError> {
    Ok(session
        .query_unpaged(cql, values)
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(corrupt)?
        .rows::<(String,)>()
        .map_err(corrupt)?
        .next()
        .is_some())
}

/// Columns `schema.cql` has that tables created by an older version lack:
/// `(table, column, type)`.
const ADDED_COLUMNS: [(&str, &str, &str); 5] = [
    ("subscriptions", "revision", "bigint"),
    ("api_keys", "scopes", "text"),
    ("api_keys", "expires_at", "bigint"),
    ("tenants", "quotas", "text"),
    ("tenants", "state", "text"),
];

/// Tables whose rows expire after the retention.
const HISTORY_TABLES: [&str; 6] = [
    "events",
    "events_by_day",
    "logs_by_tenant",
    "logs_by_subscription",
    "logs_by_event_slot",
    "sub_event_state",
];

/// The statements of `schema.cql`, comments removed.
fn schema_statements() -> Vec<String> {
    include_str!("schema.cql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_give_their_day() {
        let id = crate::ids::new_id(crate::ids::EVENT);
        let ms = id_ms(&id).unwrap();
        let now = crate::clock::now_ms();
        assert!((now - ms).abs() < 5_000, "{ms} vs {now}");
        assert_eq!(id_day(&id), day_of_ms(now));
        assert_eq!(day_of_ms(-1), -1);
        assert!(id_ms("evt_zz").is_none());
        assert!(TOP > id.as_str());
    }

    #[test]
    fn schema_splits_into_statements() {
        let statements = schema_statements();
        assert!(statements.len() >= 18, "{}", statements.len());
        assert!(statements
            .iter()
            .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS")));
        for table in HISTORY_TABLES {
            let def = statements
                .iter()
                .find(|s| s.contains(&format!("EXISTS {table} (")))
                .unwrap();
            assert!(
                def.contains("default_time_to_live = {retention}"),
                "{table}"
            );
        }
    }
}
