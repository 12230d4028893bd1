//! The engine: wires the log, the store, fan-out, the scheduler and the
//! shards, and offers the operations the API exposes. Validation lives here
//! so every front end (REST, CLI, relay) refuses the same bad input.

mod catalogue;
mod manage;
mod recovery;
mod stream;

pub use catalogue::{Catalogue, EventTypePage, PreparedSchema};
pub use manage::{SubscriptionPage, SubscriptionUpdate, API_KEY};
pub use recovery::RECOVERY;
pub use stream::{decode_cursor, encode_cursor, StreamBatch, StreamFrame};

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio_util::sync::CancellationToken;

mod batch;

pub use batch::MAX_BATCH_EVENTS;

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
    fanout, ids,
    log::{embedded::EmbeddedLog, kafka::KafkaLog, EventLog},
    metrics::{self, Metrics},
    model::{
        DomainEvent, EventSource, Ordering, ScheduledDelivery, SecretEntry, SubscriptionStatus,
        WebhookDeliveryLog, WebhookSubscription, OPERATIONAL_PREFIX,
    },
    operational::OperationalEvents,
    signing::SigningSecret,
    ssrf::TargetGuard,
    store::{embedded::EmbeddedStore, scylla::ScyllaStore, EventFilter, LogFilter, Store},
    subscriptions::{validate_filter, SubscriptionIndex},
};

/// Largest accepted payload, in bytes of JSON.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Default grace period of a rotated secret.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Headers a subscription may not override.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
];

/// A new subscription, as asked for. `Debug` redacts the secret.
#[derive(Clone, Default)]
pub struct NewSubscription {
    /// Endpoint URL.
    pub url: String,
    /// Event type filters.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// A chosen secret (`whsec_…`); generated when absent.
    pub secret: Option<String>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second.
    pub rate_limit: Option<u32>,
    /// Delivery order.
    pub ordering: Ordering,
    /// Concurrent requests, 1 to [`MAX_IN_FLIGHT_LIMIT`].
    pub max_in_flight: Option<u32>,
    /// Attempt timeout in seconds, 1 to [`MAX_TIMEOUT_SECONDS`].
    pub timeout_seconds: Option<u32>,
}

impl std::fmt::Debug for NewSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSubscription")
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("description", &self.description)
            .field("secret", &crate::signing::redacted(&self.secret))
            .field("headers", &self.headers)
            .field("rate_limit", &self.rate_limit)
            .field("ordering", &self.ordering)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout_seconds", &self.timeout_seconds)
            .finish()
    }
}

/// Largest per-subscription in-flight limit.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 256;
/// Largest per-subscription attempt timeout, in seconds.
pub const MAX_TIMEOUT_SECONDS: u32 = 60;
/// Largest per-subscription rate limit, deliveries per second.
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// A new event, as emitted.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// Dotted event type.
    pub event_type: String,
    /// JSON object.
    pub payload: serde_json::Value,
    /// Idempotency key.
    pub dedupe_key: Option<String>,
    /// Payload schema version (default 1).
    pub schema_version: Option<u32>,
    /// When it happened (default: now).
    pub occurred_at: Option<OffsetDateTime>,
    /// Trace id for lineage.
    pub trace_id: Option<String>,
}

/// The result of a secret rotation.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new current secret.
    pub secret: SigningSecret,
    /// Until when the previous secret keeps signing.
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

/// A delivery created by a replay.
#[derive(Debug, Clone)]
pub struct ReplayedDelivery {
    /// The new delivery.
    pub delivery_id: String,
    /// Where it goes.
    pub subscription_id: String,
    /// The delivery it replays, if the event went there before.
    pub replay_of: Option<String>,
}

/// A page of events.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// The events, newest first.
    pub data: Vec<DomainEvent>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// A page of delivery attempts.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// The attempts, newest first.
    pub data: Vec<WebhookDeliveryLog>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

/// The running engine.
pub struct Engine {
    config: EngineConfig,
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    subscriptions: Arc<SubscriptionIndex>,
    guard: TargetGuard,
    shards: Option<Arc<Shards>>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
    relay: Option<Arc<crate::relay::RelayStats>>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    emit_locks: Vec<AsyncMutex<()>>,
    metrics: Arc<Metrics>,
    catalogue: catalogue::Catalogue,
    recovery_wake: Arc<Notify>,
    /// Serialise read-modify-write changes of one subscription (striped by id),
    /// so a concurrent delete is never undone by an update.
    subscription_locks: Vec<AsyncMutex<()>>,
    /// Cancels the background tasks when the engine is dropped without a
    /// [`Engine::shutdown`] (a panicking caller): the relay's blocking loop
    /// would otherwise keep its runtime from ever shutting down.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

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
                tasks.push(tokio::spawn(metrics::follow_relay(
                    metrics.clone(),
                    stats.clone(),
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

    /// Stops fan-out and scheduling, lets attempts in flight finish and be
    /// recorded, then returns.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The CDC relay's counters, when this process runs the relay.
    pub fn relay_stats(&self) -> Option<&crate::relay::RelayStats> {
        self.relay.as_deref()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether the log and the store answer (for `/readyz`).
    pub async fn ready(&self) -> Result<(), EngineError> {
        let partition = self.log.partition_for("readyz");
        self.log.end_offset(partition).await?;
        self.store.ping().await?;
        Ok(())
    }

    /// Deliveries waiting in the durable schedule.
    pub async fn backlog(&self) -> Result<u64, EngineError> {
        Ok(self.store.schedule_backlog().await?)
    }

    /// The engine's metrics (served on `/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Subscriptions of all tenants.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Deliveries currently being attempted.
    pub fn in_flight(&self) -> usize {
        self.shards.as_ref().map_or(0, |s| s.in_flight())
    }

    // ---- tenants ----

    /// Creates a tenant and returns its first API key (shown once; stored hashed).
    pub async fn create_tenant(&self, tenant_id: &str) -> Result<String, EngineError> {
        validate_tenant_id(tenant_id)?;
        let (record, key) = manage::new_key(tenant_id, Some("initial".into()));
        self.store
            .create_tenant(tenant_id, &record, hash_key(&key))
            .await?;
        tracing::info!(tenant_id, "tenant created");
        Ok(key)
    }

    /// The tenant an API key belongs to.
    pub async fn authenticate(&self, api_key: &str) -> Result<Option<String>, EngineError> {
        if api_key.is_empty() || api_key.len() > 256 {
            return Ok(None);
        }
        Ok(self.store.tenant_for_key(hash_key(api_key)).await?)
    }

    // ---- subscriptions ----

    /// Creates a subscription.
    pub async fn subscribe(
        &self,
        tenant_id: &str,
        new: NewSubscription,
    ) -> Result<WebhookSubscription, EngineError> {
        self.validate_url(&new.url).await?;
        validate_event_types(&new.event_types)?;
        if new.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(EngineError::invalid("description", "at most 1024 bytes"));
        }
        validate_headers(&new.headers)?;
        validate_limits(new.rate_limit, new.max_in_flight, new.timeout_seconds)?;
        let secret = match &new.secret {
            Some(s) => SigningSecret::parse(s)
                .map_err(|e| EngineError::invalid("secret", e.to_string()))?,
            None => SigningSecret::generate(),
        };
        let now = OffsetDateTime::now_utc();
        let sub = WebhookSubscription {
            id: ids::new_id(ids::SUBSCRIPTION),
            tenant_id: tenant_id.to_string(),
            url: new.url,
            event_types: new.event_types,
            description: new.description,
            status: SubscriptionStatus::Active,
            disabled_reason: None,
            secrets: vec![SecretEntry {
                secret,
                expires_at: None,
            }],
            headers: new.headers,
            rate_limit: new.rate_limit,
            ordering: new.ordering,
            max_in_flight: new.max_in_flight,
            timeout_seconds: new.timeout_seconds,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        self.store.put_subscription(&sub).await?;
        self.subscriptions.upsert(sub.clone());
        tracing::info!(tenant_id, subscription_id = %sub.id, "subscription created");
        Ok(sub)
    }

    /// Holds the change lock of subscription `id`.
    async fn lock_subscription(&self, id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = crc32fast::hash(id.as_bytes()) as usize % self.subscription_locks.len();
        self.subscription_locks[stripe].lock().await
    }

    /// One subscription of a tenant (`NotFound` for another tenant's).
    pub async fn subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<WebhookSubscription, EngineError> {
        self.store
            .get_subscription(tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("subscription"))
    }

    /// Makes `secret` (or a new one) current; the previous current secret
    /// keeps signing for `grace`, then stops. Expired secrets are dropped.
    pub async fn rotate_secret(
        &self,
        tenant_id: &str,
        id: &str,
        grace: Option<Duration>,
        secret: Option<&str>,
    ) -> Result<Rotation, EngineError> {
        let grace = grace.unwrap_or(DEFAULT_GRACE);
        if grace > Duration::from_secs(30 * 24 * 3600) {
            return Err(EngineError::invalid(
                "grace_period_seconds",
                "at most 30 days (2592000)",
            ));
        }
        let new_secret = match secret {
            Some(s) => SigningSecret::parse(s)
                .map_err(|e| EngineError::invalid("secret", e.to_string()))?,
            None => SigningSecret::generate(),
        };
        let _guard = self.lock_subscription(id).await;
        let mut sub = self.subscription(tenant_id, id).await?;
        let now = OffsetDateTime::now_utc();
        let expires = now + grace;
        let mut secrets = vec![SecretEntry {
            secret: new_secret.clone(),
            expires_at: None,
        }];
        for mut old in sub.secrets.drain(..) {
            old.expires_at = Some(old.expires_at.map_or(expires, |t| t.min(expires)));
            if old.expires_at.is_some_and(|t| t > now) {
                secrets.push(old);
            }
        }
        sub.secrets = secrets;
        sub.updated_at = now;
        self.store.put_subscription(&sub).await?;
        self.subscriptions.upsert(sub);
        tracing::info!(
            tenant_id,
            subscription_id = id,
            grace_seconds = grace.as_secs(),
            "secret rotated"
        );
        Ok(Rotation {
            secret: new_secret,
            previous_secret_expires_at: (!grace.is_zero()).then_some(expires),
        })
    }

    // ---- events ----

    /// Emits an event: durable in the log before this returns. With a
    /// `dedupe_key` already used in the window, returns the original event
    /// and `false` (nothing new is delivered).
    pub async fn emit(
        &self,
        tenant_id: &str,
        new: NewEvent,
    ) -> Result<(DomainEvent, bool), EngineError> {
        let event = build_event(tenant_id, new, EventSource::Api)?;
        self.check_payload(
            tenant_id,
            &event.event_type,
            event.schema_version,
            &event.payload,
        )?;
        let _guard = match &event.dedupe_key {
            Some(key) => {
                let stripe = self.dedupe_stripe(tenant_id, key);
                let guard = self.emit_locks[stripe].lock().await;
                if let Some(original) = self
                    .store
                    .event_by_dedupe_key(tenant_id, key, now_ms())
                    .await?
                {
                    return Ok((original, false));
                }
                Some(guard)
            }
            None => None,
        };
        let position = self.log.append(std::slice::from_ref(&event)).await?[0];
        self.metrics.event_ingested(event.source);
        let until = now_ms() + self.config.dedupe_window.as_millis() as i64;
        if let Err(e) = self.store.record_event(&event, position, until).await {
            // The event is durable in the log; fan-out will index it.
            tracing::warn!(error = %e, event_id = %event.id, "could not index an emitted event yet");
        }
        Ok((event, true))
    }

    /// A tenant's events, newest first.
    pub async fn list_events(
        &self,
        tenant_id: &str,
        event_type: Option<String>,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<EventPage, EngineError> {
        if let Some(t) = &event_type {
            validate_filter(t).map_err(|m| EngineError::invalid("event_type", m))?;
        }
        let cursor = validate_cursor(cursor, ids::EVENT)?;
        let filter = EventFilter {
            event_type,
            before: cursor,
        };
        let mut data = self
            .store
            .list_events(tenant_id, &filter, limit + 1)
            .await?;
        let next_cursor = page_cursor(&mut data, limit, |e| e.id.clone());
        Ok(EventPage { data, next_cursor })
    }

    /// One event of a tenant and its delivery attempts (newest first, up to 1000).
    pub async fn event(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<(DomainEvent, Vec<WebhookDeliveryLog>), EngineError> {
        let event = self
            .store
            .get_event(tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("event"))?;
        let filter = LogFilter {
            event_id: Some(id.to_string()),
            ..Default::default()
        };
        let logs = self
            .store
            .list_delivery_logs(tenant_id, &filter, 1000)
            .await?;
        Ok((event, logs))
    }

    /// Delivers an event again: to one subscription of the tenant, or to
    /// every subscription that matches it now and takes deliveries (active,
    /// or paused: held until resumed). Each replay is a new
    /// delivery (same `webhook-id`) whose attempts link to the one it replays.
    pub async fn replay(
        &self,
        tenant_id: &str,
        event_id: &str,
        subscription_id: Option<&str>,
    ) -> Result<Vec<ReplayedDelivery>, EngineError> {
        let event = self
            .store
            .get_event(tenant_id, event_id)
            .await?
            .ok_or(EngineError::NotFound("event"))?;
        let targets = match subscription_id {
            Some(id) => vec![self.subscription(tenant_id, id).await?],
            None => self
                .subscriptions
                .matching(tenant_id, &event.event_type)
                .iter()
                .map(|s| (**s).clone())
                .collect(),
        };
        let now = now_ms();
        let mut replayed = Vec::with_capacity(targets.len());
        let mut scheduled = Vec::with_capacity(targets.len());
        for sub in targets {
            let filter = LogFilter {
                event_id: Some(event.id.clone()),
                subscription_id: Some(sub.id.clone()),
                ..Default::default()
            };
            let previous = self.store.list_delivery_logs(tenant_id, &filter, 1).await?;
            let replay_of = previous.into_iter().next().map(|l| l.delivery_id);
            let delivery_id = ids::new_id(ids::DELIVERY);
            scheduled.push(ScheduledDelivery {
                delivery_id: delivery_id.clone(),
                tenant_id: tenant_id.to_string(),
                event_id: event.id.clone(),
                subscription_id: sub.id.clone(),
                attempt: 1,
                replay_of: replay_of.clone(),
                is_replay: true,
                due_at_ms: now,
                // Replays queue behind everything pending for an ordered subscription.
                seq: i64::MAX,
                ordered: sub.ordering == Ordering::Strict,
            });
            replayed.push(ReplayedDelivery {
                delivery_id,
                subscription_id: sub.id,
                replay_of,
            });
        }
        self.store.schedule(scheduled).await?;
        self.wake.notify_one();
        Ok(replayed)
    }

    /// A tenant's delivery attempts, newest first.
    pub async fn list_delivery_logs(
        &self,
        tenant_id: &str,
        mut filter: LogFilter,
        limit: usize,
    ) -> Result<LogPage, EngineError> {
        if let Some(o) = &filter.outcome {
            if crate::model::Outcome::parse(o).is_none() {
                return Err(EngineError::invalid(
                    "status",
                    "one of delivered, failed, dead",
                ));
            }
        }
        filter.before = validate_cursor(filter.before.take(), ids::ATTEMPT)?;
        let mut data = self
            .store
            .list_delivery_logs(tenant_id, &filter, limit + 1)
            .await?;
        let next_cursor = page_cursor(&mut data, limit, |l| l.id.clone());
        Ok(LogPage { data, next_cursor })
    }

    async fn validate_url(&self, raw: &str) -> Result<(), EngineError> {
        let url = self
            .guard
            .check_url(raw)
            .map_err(|e| EngineError::invalid("url", e.to_string()))?;
        if raw.len() > 2048 {
            return Err(EngineError::invalid("url", "at most 2048 bytes"));
        }
        // A name that resolves only to refused addresses can never be delivered to.
        if let Some(url::Host::Domain(host)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host((host, port)),
            )
            .await;
            if let Ok(Ok(addrs)) = lookup {
                let addrs: Vec<_> = addrs.collect();
                if !addrs.is_empty() && addrs.iter().all(|a| self.guard.check_ip(a.ip()).is_err()) {
                    return Err(EngineError::invalid(
                        "url",
                        format!("{host} resolves only to non-public addresses; allow them with HERALD_ALLOW_TARGETS"),
                    ));
                }
            }
        }
        Ok(())
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
        fanout::refresh_subscriptions(store.as_ref(), &index).await;
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

/// SHA-256 of an API key, the only form in which keys are stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub(crate) fn validate_tenant_id(id: &str) -> Result<(), EngineError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(
            "id",
            "1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
        ))
    }
}

/// Checks the per-subscription limits against their bounds.
pub fn validate_limits(
    rate_limit: Option<u32>,
    max_in_flight: Option<u32>,
    timeout_seconds: Option<u32>,
) -> Result<(), EngineError> {
    let bounds = [
        (
            "rate_limit",
            rate_limit,
            MAX_RATE_LIMIT,
            "deliveries per second",
        ),
        (
            "max_in_flight",
            max_in_flight,
            MAX_IN_FLIGHT_LIMIT,
            "concurrent requests",
        ),
        (
            "timeout_seconds",
            timeout_seconds,
            MAX_TIMEOUT_SECONDS,
            "seconds",
        ),
    ];
    for (field, value, max, unit) in bounds {
        if let Some(v) = value {
            if v == 0 || v > max {
                return Err(EngineError::invalid(
                    field,
                    format!("must be between 1 and {max} {unit}"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks an event as emitted — a dotted type (not `herald.*` from the API),
/// a JSON object payload of at most [`MAX_PAYLOAD_BYTES`], a printable
/// `dedupe_key` of 1 to 256 characters, a `schema_version` from 1 — and
/// builds the [`DomainEvent`] (a new id, received now). Schema validation
/// against the catalogue is [`Catalogue::check`]'s, afterwards.
pub fn build_event(
    tenant_id: &str,
    new: NewEvent,
    source: EventSource,
) -> Result<DomainEvent, EngineError> {
    validate_filter(&new.event_type)
        .ok()
        .filter(|()| !new.event_type.contains('*'))
        .ok_or_else(|| {
            EngineError::invalid(
                "event_type",
                format!(
                    "{:?} is not an event type; use dotted names like work_order.completed",
                    new.event_type
                ),
            )
        })?;
    if source == EventSource::Api && new.event_type.starts_with(OPERATIONAL_PREFIX) {
        return Err(EngineError::invalid(
            "event_type",
            format!("types starting with {OPERATIONAL_PREFIX:?} are reserved for Herald's operational events"),
        ));
    }
    if !new.payload.is_object() {
        return Err(EngineError::invalid("payload", "must be a JSON object"));
    }
    let size = serde_json::to_vec(&new.payload)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD_BYTES {
        return Err(EngineError::invalid(
            "payload",
            format!("is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}"),
        ));
    }
    if let Some(key) = &new.dedupe_key {
        if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
            return Err(EngineError::invalid(
                "dedupe_key",
                "1 to 256 printable characters",
            ));
        }
    }
    if let Some(trace) = &new.trace_id {
        if trace.is_empty() || trace.len() > 256 || trace.chars().any(char::is_control) {
            return Err(EngineError::invalid(
                "trace_id",
                "1 to 256 printable characters",
            ));
        }
    }
    let schema_version = new.schema_version.unwrap_or(1);
    if schema_version == 0 {
        return Err(EngineError::invalid("schema_version", "starts at 1"));
    }
    let now = OffsetDateTime::now_utc();
    Ok(DomainEvent {
        id: ids::new_id(ids::EVENT),
        tenant_id: tenant_id.to_string(),
        event_type: new.event_type,
        schema_version,
        dedupe_key: new.dedupe_key,
        occurred_at: new.occurred_at.unwrap_or(now),
        received_at: now,
        payload: new.payload,
        source,
        aggregate_type: None,
        aggregate_id: None,
        trace_id: new.trace_id,
    })
}

fn validate_event_types(types: &[String]) -> Result<(), EngineError> {
    if types.is_empty() || types.len() > 100 {
        return Err(EngineError::invalid(
            "event_types",
            "give 1 to 100 event types or patterns",
        ));
    }
    types
        .iter()
        .try_for_each(|t| validate_filter(t).map_err(|m| EngineError::invalid("event_types", m)))
}

fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), EngineError> {
    if headers.len() > 20 {
        return Err(EngineError::invalid("headers", "at most 20 custom headers"));
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::try_from(name.as_str()).is_err()
            || http::HeaderValue::try_from(value.as_str()).is_err()
        {
            return Err(EngineError::invalid(
                "headers",
                format!("{name:?} is not a valid header"),
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("herald-")
        {
            return Err(EngineError::invalid(
                "headers",
                format!("{name:?} is set by Herald and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

fn validate_cursor(cursor: Option<String>, prefix: &str) -> Result<Option<String>, EngineError> {
    match cursor {
        Some(c) if !ids::is_valid(prefix, &c) => Err(EngineError::invalid(
            "cursor",
            "not a cursor from this list; pass next_cursor of the previous page",
        )),
        other => Ok(other),
    }
}

fn page_cursor<T>(data: &mut Vec<T>, limit: usize, id: impl Fn(&T) -> String) -> Option<String> {
    if data.len() > limit {
        data.truncate(limit);
        data.last().map(id)
    } else {
        None
    }
}
