//! Start-up: the backends, the tasks a role runs, and the signing-secret cipher.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::now_ms,
    config::{EngineConfig, Role},
    delivery::{
        client::DeliveryClient,
        retry::RetryPolicy,
        scheduler,
        worker::{Shards, WorkerContext},
    },
    encryption::{self, KeyRing, SecretCipher},
    error::EngineError,
    fanout,
    log::{embedded::EmbeddedLog, kafka::KafkaLog, EventLog},
    metrics::{self, Metrics},
    operational::OperationalEvents,
    ssrf::TargetGuard,
    store::{embedded::EmbeddedStore, scylla::ScyllaStore, Store},
    subscriptions::SubscriptionIndex,
};

use super::{catalogue, recovery, Engine};

impl Engine {
    /// Opens the log (Kafka when `config.kafka` is set, else the embedded
    /// log under `config.data_dir`) and the store (the CQL store when
    /// `config.scylla` is set, else the embedded SQLite store there), and
    /// starts the tasks of `config.role`.
    ///
    /// Several processes (an `api` and `worker`s) may share one data dir's
    /// SQLite store: WAL mode lets them, and every write waits its turn.
    pub async fn start(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let log: Arc<dyn EventLog> = match &config.kafka {
            Some(k) => Arc::new(KafkaLog::connect(k.clone()).await?),
            None => Arc::new(EmbeddedLog::open(
                &config.data_dir.join("log"),
                config.log_partitions,
            )?),
        };
        let (cipher, key_file) = secret_cipher(&config)?;
        tracing::info!(
            key_id = cipher.ring().primary().id(),
            keys = cipher.ring().ids().len(),
            source = cipher.source(),
            "signing secrets are encrypted at rest (AES-256-GCM)"
        );
        let store: Arc<dyn Store> = match &config.scylla {
            // Several processes may share a CQL schedule: a crashed run's
            // claims are not released here, they fall due when their lease ends.
            Some(scylla) => {
                let store = ScyllaStore::connect(scylla, cipher)
                    .await
                    .map_err(key_error)?;
                tracing::info!(nodes = ?scylla.nodes, keyspace = %scylla.keyspace, "store: CQL");
                Arc::new(store)
            }
            None => {
                let store = EmbeddedStore::open(&config.data_dir.join("store"), cipher)
                    .map_err(key_error)?;
                if let Some(path) = key_file {
                    // Opening re-sealed everything under the configured key.
                    tracing::warn!(
                        path = %path.display(),
                        "signing secrets are encrypted with the configured key now; \
                         the generated key file is no longer needed: delete it"
                    );
                }
                // Only the embedded single process owns the schedule outright: then
                // what a crashed run had claimed is due now. With Kafka other workers
                // may hold live leases on the same schedule, so claims are left to expire.
                if config.kafka.is_none() && config.role == Role::All {
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
        Self::start_with(config, log, store).await
    }

    /// Starts the engine on the given log and store backends, with the tasks
    /// `config.role` asks for.
    pub async fn start_with(
        config: EngineConfig,
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, EngineError> {
        let subscriptions = Arc::new(SubscriptionIndex::new(store.all_subscriptions().await?));
        let catalogue = catalogue::Catalogue::load(store.all_event_types().await?);
        let guard = TargetGuard::new(config.allow_targets.clone());
        let cancel = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new());
        let mut tasks = Vec::new();
        let shards = if config.role.runs_workers() {
            let d = &config.delivery;
            let client = DeliveryClient::new(
                guard.clone(),
                d.connect_timeout,
                d.request_timeout,
                d.response_body_limit,
            );
            let ctx = Arc::new(WorkerContext {
                store: store.clone(),
                subscriptions: subscriptions.clone(),
                client,
                retry: RetryPolicy::new(config.retry_schedule.clone(), d.retry_jitter),
                config: d.clone(),
                in_flight: Default::default(),
                wake: wake.clone(),
                operational: OperationalEvents::new(log.clone(), store.clone(), metrics.clone()),
                metrics: metrics.clone(),
            });
            let (shards, shard_tasks) = Shards::start(ctx, cancel.clone());
            tasks.extend(shard_tasks);
            let shards = Arc::new(shards);
            tasks.push(tokio::spawn(fanout::run(
                log.clone(),
                store.clone(),
                subscriptions.clone(),
                shards.clone(),
                fanout::Settings {
                    group: config.fanout_group(),
                    dedupe_window: config.dedupe_window,
                    follow_store: config.kafka.is_some(),
                    lease: d.lease(),
                    handoff_limit: d.handoff_limit,
                },
                wake.clone(),
                cancel.clone(),
            )));
            tasks.push(tokio::spawn(scheduler::run(
                store.clone(),
                shards.clone(),
                wake.clone(),
                d.lease(),
                cancel.clone(),
            )));
            if config.kafka.is_some() {
                // API processes change subscriptions in the shared store.
                tasks.push(tokio::spawn(follow_subscriptions(
                    store.clone(),
                    subscriptions.clone(),
                    cancel.clone(),
                )));
            }
            Some(shards)
        } else {
            None
        };
        tasks.push(tokio::spawn(metrics::run_refresher(
            metrics.clone(),
            log.clone(),
            store.clone(),
            config.fanout_group(),
            cancel.clone(),
        )));
        let recovery_wake = Arc::new(Notify::new());
        tasks.push(tokio::spawn(recovery::run(
            store.clone(),
            log.clone(),
            config.recovery_rate,
            wake.clone(),
            recovery_wake.clone(),
            cancel.clone(),
        )));
        let relay = match &config.kafka {
            Some(kafka) if config.role.runs_relay() => {
                let stats = Arc::new(crate::relay::RelayStats::default());
                tasks.push(tokio::spawn(crate::relay::run(
                    crate::relay::RelaySettings {
                        kafka: kafka.clone(),
                        partitions: log.partitions(),
                    },
                    stats.clone(),
                    cancel.clone(),
                )));
                tasks.push(tokio::spawn(crate::relay::report(
                    stats.clone(),
                    metrics.clone(),
                    cancel.clone(),
                )));
                Some(stats)
            }
            _ => None,
        };
        tracing::info!(
            data_dir = %config.data_dir.display(),
            role = ?config.role,
            log = if config.kafka.is_some() { "kafka" } else { "embedded" },
            partitions = log.partitions(),
            subscriptions = subscriptions.len(),
            "engine started"
        );
        Ok(Arc::new(Self {
            config,
            log,
            store,
            subscriptions,
            guard,
            shards,
            wake,
            cancel: cancel.clone(),
            relay,
            tasks: parking_lot::Mutex::new(tasks),
            emit_locks: (0..64).map(|_| AsyncMutex::new(())).collect(),
            metrics,
            catalogue,
            recovery_wake,
            subscription_locks: (0..64).map(|_| AsyncMutex::new(())).collect(),
            _stop_on_drop: cancel.drop_guard(),
        }))
    }
}

/// How often a worker sharing the store with API processes checks for
/// changed subscriptions between batches (a rotated secret reaches its
/// deliveries within this; fan-out checks before every batch anyway).
const SUBSCRIPTION_REFRESH: Duration = Duration::from_secs(1);

/// Keeps `index` equal to the store's subscriptions until `cancel`.
async fn follow_subscriptions(
    store: Arc<dyn Store>,
    index: Arc<SubscriptionIndex>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SUBSCRIPTION_REFRESH) => {}
            () = cancel.cancelled() => return,
        }
        crate::subscriptions::refresh(store.as_ref(), &index).await;
    }
}

/// A store that cannot open for want of the right key is a configuration
/// error: say so, not "internal error".
fn key_error(e: crate::store::StoreError) -> EngineError {
    match e {
        crate::store::StoreError::Secrets(m) => EngineError::invalid("secret-encryption key", m),
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
) -> Result<(SecretCipher, Option<std::path::PathBuf>), EngineError> {
    const FLAG: &str = "--secret-encryption-key / HERALD_SECRET_ENCRYPTION_KEY";
    let path = config.data_dir.join(SECRET_KEY_FILE);
    let file_error = |e: std::io::Error| {
        EngineError::Unavailable(format!(
            "the secret-encryption key file {}: {e} (or set {FLAG})",
            path.display()
        ))
    };
    match (&config.secret_keys, &config.scylla) {
        (Some(ring), Some(_)) => Ok((SecretCipher::new(ring.clone(), FLAG), None)),
        (None, Some(_)) => Err(EngineError::invalid(
            "HERALD_SECRET_ENCRYPTION_KEY",
            format!(
                "not set; the CQL store (HERALD_SCYLLA_NODES) needs {FLAG}, the same on every \
                 process: 32 random bytes in base64, e.g. from `openssl rand -base64 32` \
                 (a key generated on one node's local disk would not reach the others)"
            ),
        )),
        (Some(ring), None) => match path.try_exists() {
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
        (None, None) => {
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
