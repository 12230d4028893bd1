//! The stores under test: an embedded store in a temporary directory, or a
//! CQL store in a keyspace of its own (dropped when the test ends; keyspaces
//! an earlier run left behind, after a failure, are dropped by the first
//! test of the next run).

use std::{sync::Arc, time::Duration};

use herald_engine::{
    config::ScyllaConfig,
    encryption::{KeyRing, SecretCipher},
    store::{embedded::EmbeddedStore, scylla::ScyllaStore, Store},
};

/// Prefix of this suite's keyspaces (the API tests use `herald_t_`).
pub const KEYSPACE_PREFIX: &str = "herald_c_";

/// The secret-encryption key of every store the suite opens.
const TEST_KEY: &str = "aGVyYWxkLWNxbC10ZXN0cy1lbmNyeXB0aW9uLWtleSE=";

pub fn cipher() -> SecretCipher {
    SecretCipher::new(KeyRing::parse(TEST_KEY).unwrap(), "TEST_KEY")
}

enum Backing {
    Embedded(tempfile::TempDir),
    Cql(ScyllaConfig),
}

/// One store under test, and the means to open a second handle on it (a
/// second process sharing it).
pub struct Harness {
    /// The store.
    pub store: Arc<dyn Store>,
    backing: Backing,
}

impl Harness {
    /// An embedded store in a new temporary directory.
    pub async fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), cipher()).unwrap();
        Self {
            store: Arc::new(store),
            backing: Backing::Embedded(dir),
        }
    }

    /// A CQL store in a new keyspace named after `tag`.
    pub async fn cql(tag: &str) -> Self {
        sweep_earlier_runs().await;
        let mut config = ScyllaConfig::new(nodes());
        config.keyspace = format!(
            "{KEYSPACE_PREFIX}{}_{}_{}",
            run_id(),
            &tag[..tag.len().min(20)],
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let store = ScyllaStore::connect(&config, cipher()).await.unwrap();
        Self {
            store: Arc::new(store),
            backing: Backing::Cql(config),
        }
    }

    /// Whether the store deletes rows past the retention itself (SQLite);
    /// the CQL store leaves it to the tables' TTL.
    pub fn prunes(&self) -> bool {
        matches!(self.backing, Backing::Embedded(_))
    }

    /// Whether an unscheduled fan-out looks at what the event had before:
    /// a re-read leaves out what was settled since (`FanOutResult::Resumed`)
    /// and skips an event already scheduled (SQLite). The CQL store reads
    /// nothing at an unscheduled fan-out and hands everything over again.
    pub fn resumes(&self) -> bool {
        matches!(self.backing, Backing::Embedded(_))
    }

    /// Another handle on the same store, as a second process would open it.
    pub async fn other(&self) -> Arc<dyn Store> {
        match &self.backing {
            Backing::Embedded(dir) => Arc::new(EmbeddedStore::open(dir.path(), cipher()).unwrap()),
            Backing::Cql(config) => Arc::new(ScyllaStore::connect(config, cipher()).await.unwrap()),
        }
    }

    /// Writes an API key the way Herald did before keys had scopes and an
    /// expiry (no `scopes`, no `expires_at`): the row an upgraded store
    /// finds.
    pub async fn write_key_from_before_scopes(&self, tenant: &str, key_id: &str, hash: [u8; 32]) {
        match &self.backing {
            Backing::Embedded(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute(
                    "INSERT INTO api_keys (hash, tenant_id, created_at, id, name, prefix) \
                     VALUES (?1, ?2, ?3, ?4, 'old', 'hk_old')",
                    rusqlite::params![hash.as_slice(), tenant, crate::fixtures::now(), key_id],
                )
                .unwrap();
            }
            Backing::Cql(config) => {
                let session = session().await;
                let ks = &config.keyspace;
                // The listing body as the old `ApiKey` serialised it.
                let body = serde_json::json!({
                    "id": key_id, "tenant_id": tenant, "name": "old", "prefix": "hk_old",
                    "created_at": "2026-01-02T03:04:05Z", "revoked_at": null,
                })
                .to_string();
                session
                    .query_unpaged(
                        format!("INSERT INTO {ks}.api_keys_by_tenant (tenant_id, key_id, key_hash, body) VALUES (?, ?, ?, ?)"),
                        (tenant, key_id, hash.to_vec(), body),
                    )
                    .await
                    .unwrap();
                session
                    .query_unpaged(
                        format!("INSERT INTO {ks}.api_keys (key_hash, tenant_id, key_id) VALUES (?, ?, ?)"),
                        (hash.to_vec(), tenant, key_id),
                    )
                    .await
                    .unwrap();
            }
        }
    }

    /// Ends the test: drops the keyspace (the directory goes with `self`).
    pub async fn finish(self) {
        if let Backing::Cql(config) = &self.backing {
            let session = session().await;
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", config.keyspace), ())
                .await;
        }
    }
}

pub fn nodes() -> Vec<String> {
    let raw = std::env::var("HERALD_TEST_SCYLLA_NODES").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let nodes: Vec<String> = raw.split(',').map(|s| s.trim().to_string()).collect();
    let first = nodes[0]
        .parse()
        .expect("HERALD_TEST_SCYLLA_NODES: host:port");
    if std::net::TcpStream::connect_timeout(&first, Duration::from_secs(3)).is_err() {
        panic!(
            "no CQL node at {}: start Cassandra with `scripts/services up cassandra` (scripts/test does)",
            nodes[0]
        );
    }
    nodes
}

pub async fn session() -> scylla::client::session::Session {
    scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(nodes())
        // Schema statements only: no metadata of every test keyspace to
        // load, and the agreement after a drop polled often.
        .fetch_schema_metadata(false)
        .schema_agreement_interval(Duration::from_millis(20))
        .refresh_metadata_on_auto_schema_agreement(false)
        .build()
        .await
        .expect("connect to Cassandra")
}

/// This test run's mark in its keyspace names.
pub fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        format!("{secs:08x}{:03x}", rand::random::<u16>() & 0xfff)
    })
}

/// Whether a test keyspace (named `<prefix><run id>_…`) belongs to another
/// run that is over: one started more than two hours ago, or named before
/// run ids carried their start time. A run still going on the same node (a
/// second test command) keeps its keyspaces.
fn is_stale(rest: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    rest.get(..8)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .is_none_or(|started| now.saturating_sub(started) > 2 * 3600)
}

/// Drops, once per run, this suite's keyspaces left by earlier runs (a test
/// that failed did not drop its own): a single small node runs out of heap
/// after a few dozen keyspaces.
async fn sweep_earlier_runs() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let session = session().await;
            let rows = session
                .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
                .await
                .expect("list keyspaces")
                .into_rows_result()
                .expect("rows");
            let mine = format!("{KEYSPACE_PREFIX}{}_", run_id());
            let stale: Vec<String> = rows
                .rows::<(String,)>()
                .expect("keyspace names")
                .filter_map(Result::ok)
                .map(|(ks,)| ks)
                .filter(|ks| {
                    !ks.starts_with(&mine) && ks.strip_prefix(KEYSPACE_PREFIX).is_some_and(is_stale)
                })
                .collect();
            for ks in &stale {
                let _ = session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
                    .await;
            }
        })
        .await;
}
