//! Which event log and store a process runs on: decided once, at start-up,
//! from the configuration ([`Backends::choose`]). Nothing else in the engine
//! asks whether Kafka or the CQL store is configured; it asks the
//! [`Backends`] what that means (is the store shared, does this process own
//! the schedule, does it run the relay).

use std::{path::PathBuf, sync::Arc};

use crate::{
    clock::now_ms,
    config::{EngineConfig, KafkaConfig, Role, ScyllaConfig, FANOUT_GROUP},
    encryption::{self, KeyRing, SecretCipher},
    error::EngineError,
    log::{
        embedded::{EmbeddedLog, LogFiles},
        EventLog,
    },
    store::{embedded::EmbeddedStore, ScheduleStore, Store, StoreError},
};

/// The event log of a deployment.
#[derive(Debug, Clone)]
pub enum LogBackend {
    /// The embedded log under the data dir, with this many partitions.
    Embedded {
        /// Its directory.
        dir: PathBuf,
        /// Its partitions.
        partitions: u32,
        /// Its segment files.
        files: LogFiles,
    },
    /// A Kafka topic.
    Kafka(KafkaConfig),
}

/// The store of a deployment.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// SQLite under the data dir.
    Embedded {
        /// Its directory.
        dir: PathBuf,
    },
    /// A CQL cluster (ScyllaDB or Cassandra).
    Cql(ScyllaConfig),
}

/// The backends a process runs on, and what they imply.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The event log.
    pub log: LogBackend,
    /// The store.
    pub store: StoreBackend,
    role: Role,
}

impl Backends {
    /// The backends `config` asks for: Kafka when `kafka` is set, else the
    /// embedded log; the CQL store when `scylla` is set, else SQLite.
    pub fn choose(config: &EngineConfig) -> Self {
        let log = match &config.kafka {
            Some(k) => LogBackend::Kafka(k.clone()),
            None => LogBackend::Embedded {
                dir: config.data_dir.join("log"),
                partitions: config.log_partitions,
                files: LogFiles {
                    segment_bytes: config.log_segment_bytes,
                },
            },
        };
        let store = match &config.scylla {
            Some(s) => StoreBackend::Cql(s.clone()),
            None => StoreBackend::Embedded {
                dir: config.data_dir.join("store"),
            },
        };
        Self {
            log,
            store,
            role: config.role,
        }
    }

    /// Whether other processes change the subscriptions and the schedule
    /// this one reads (the Kafka deployment: api, worker and relay
    /// processes share one store), so this one follows the store.
    pub fn shared(&self) -> bool {
        matches!(self.log, LogBackend::Kafka(_))
    }

    /// Whether this process alone uses its schedule (embedded log and
    /// store, every role in one process): then what a crashed run had
    /// claimed is due at once, instead of when its lease ends.
    pub fn owns_schedule(&self) -> bool {
        !self.shared()
            && matches!(self.store, StoreBackend::Embedded { .. })
            && self.role == Role::All
    }

    /// The Kafka settings of the CDC relay, when this process runs it.
    pub fn relay(&self, role: Role) -> Option<&KafkaConfig> {
        match &self.log {
            LogBackend::Kafka(k) if role.runs_relay() => Some(k),
            _ => None,
        }
    }

    /// The fan-out's consumer group: `herald-fanout`, or `<prefix>-fanout`
    /// for another Kafka topic prefix (so deployments sharing a cluster
    /// don't share a group).
    pub fn fanout_group(&self) -> String {
        match &self.log {
            LogBackend::Kafka(k) => format!("{}-fanout", k.topic_prefix),
            LogBackend::Embedded { .. } => FANOUT_GROUP.to_string(),
        }
    }

    /// `kafka` or `embedded`, for logs.
    pub fn log_name(&self) -> &'static str {
        match self.log {
            LogBackend::Kafka(_) => "kafka",
            LogBackend::Embedded { .. } => "embedded",
        }
    }

    /// `cql` or `embedded`, for logs.
    pub fn store_name(&self) -> &'static str {
        match self.store {
            StoreBackend::Cql(_) => "cql",
            StoreBackend::Embedded { .. } => "embedded",
        }
    }

    /// Opens the log and the store. Signing secrets are sealed with the
    /// configured keys, or (embedded store only) a key file in the data dir.
    ///
    /// Several processes (an `api` and `worker`s) may share one data dir's
    /// SQLite store: WAL mode lets them, and every write waits its turn.
    pub async fn open(
        &self,
        config: &EngineConfig,
    ) -> Result<(Arc<dyn EventLog>, Arc<dyn Store>), EngineError> {
        let log: Arc<dyn EventLog> = match &self.log {
            #[cfg(feature = "kafka")]
            LogBackend::Kafka(k) => {
                Arc::new(crate::log::kafka::KafkaLog::connect(k.clone()).await?)
            }
            #[cfg(not(feature = "kafka"))]
            LogBackend::Kafka(_) => return Err(not_built("HERALD_KAFKA_BROKERS", "kafka")),
            LogBackend::Embedded {
                dir,
                partitions,
                files,
            } => Arc::new(EmbeddedLog::open_with(dir, *partitions, *files)?),
        };
        let (cipher, key_file) = secret_cipher(config, &self.store)?;
        tracing::info!(
            key_id = cipher.ring().primary().id(),
            keys = cipher.ring().ids().len(),
            source = cipher.source(),
            "signing secrets are encrypted at rest (AES-256-GCM)"
        );
        let store: Arc<dyn Store> = match &self.store {
            // Several processes may share a CQL schedule: a crashed run's
            // claims are not released here, they fall due when their lease ends.
            #[cfg(not(feature = "cql"))]
            StoreBackend::Cql(_) => return Err(not_built("HERALD_SCYLLA_NODES", "cql")),
            #[cfg(feature = "cql")]
            StoreBackend::Cql(scylla) => {
                let scylla = &crate::config::ScyllaConfig {
                    audit_retention: config.audit_retention,
                    ..scylla.clone()
                };
                let store = crate::store::scylla::ScyllaStore::connect(scylla, cipher)
                    .await
                    .map_err(key_error)?;
                tracing::info!(nodes = ?scylla.nodes, keyspace = %scylla.keyspace, "store: CQL");
                Arc::new(store)
            }
            StoreBackend::Embedded { dir } => {
                let store = EmbeddedStore::open(dir, cipher).map_err(key_error)?;
                if let Some(path) = key_file {
                    // Opening re-sealed everything under the configured key.
                    tracing::warn!(
                        path = %path.display(),
                        "signing secrets are encrypted with the configured key now; \
                         the generated key file is no longer needed: delete it"
                    );
                }
                if self.owns_schedule() {
                    let released = store.release_leases(now_ms()).await?;
                    if released > 0 {
                        tracing::info!(
                            released,
                            "deliveries claimed before a restart are due again"
                        );
                    }
                }
                Arc::new(store)
            }
        };
        Ok((log, store))
    }
}

/// A backend this build was compiled without.
#[cfg(not(all(feature = "kafka", feature = "cql")))]
fn not_built(setting: &'static str, feature: &str) -> EngineError {
    EngineError::invalid(
        setting,
        format!(
            "is set, but this herald was built without the `{feature}` feature; \
             rebuild with default features (or `--features {feature}`), or unset it"
        ),
    )
}

/// A store that cannot open for want of the right key is a configuration
/// error: say so, not "internal error".
fn key_error(e: StoreError) -> EngineError {
    match e {
        StoreError::Secrets(m) => EngineError::invalid("secret-encryption key", m),
        other => other.into(),
    }
}

/// Name of the generated key file in the data dir (embedded store only).
pub const SECRET_KEY_FILE: &str = "secret.key";

/// The cipher for signing secrets: the configured keys; or, for the
/// embedded store, the key kept in `<data_dir>/secret.key` (generated on
/// first start). The CQL store needs configured keys: a key on one node's
/// local disk would not reach the others. Also returns the key file when
/// keys are configured but the data dir still holds a generated key, which
/// then opens (only) what it sealed, so the store migrates to the
/// configured key.
fn secret_cipher(
    config: &EngineConfig,
    store: &StoreBackend,
) -> Result<(SecretCipher, Option<PathBuf>), EngineError> {
    const FLAG: &str = "--secret-encryption-key / HERALD_SECRET_ENCRYPTION_KEY";
    let path = config.data_dir.join(SECRET_KEY_FILE);
    let file_error = |e: std::io::Error| {
        EngineError::Unavailable(format!(
            "the secret-encryption key file {}: {e} (or set {FLAG})",
            path.display()
        ))
    };
    let cql = matches!(store, StoreBackend::Cql(_));
    match (&config.secret_keys, cql) {
        (Some(ring), true) => Ok((SecretCipher::new(ring.clone(), FLAG), None)),
        (None, true) => Err(EngineError::invalid(
            "HERALD_SECRET_ENCRYPTION_KEY",
            format!(
                "not set; the CQL store (HERALD_SCYLLA_NODES) needs {FLAG}, the same on every \
                 process: 32 random bytes in base64, e.g. from `openssl rand -base64 32` \
                 (a key generated on one node's local disk would not reach the others)"
            ),
        )),
        (Some(ring), false) => match path.try_exists() {
            Ok(true) => {
                let (file_key, _) =
                    encryption::load_or_create_key_file(&path).map_err(file_error)?;
                if ring.contains(&file_key) {
                    Ok((SecretCipher::new(ring.clone(), FLAG), None))
                } else {
                    let source = format!("{FLAG}, and {}", path.display());
                    let ring = ring.clone().with_fallback(file_key);
                    Ok((SecretCipher::new(ring, source), Some(path)))
                }
            }
            _ => Ok((SecretCipher::new(ring.clone(), FLAG), None)),
        },
        (None, false) => {
            let (key, created) = encryption::load_or_create_key_file(&path).map_err(file_error)?;
            if created {
                tracing::info!(
                    path = %path.display(),
                    key_id = key.id(),
                    "generated the key that encrypts signing secrets at rest; back it up \
                     with the data dir, or set {FLAG} to manage it yourself"
                );
            }
            let source = path.display().to_string();
            Ok((SecretCipher::new(KeyRing::single(key), source), None))
        }
    }
}
