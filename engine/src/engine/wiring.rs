//! Start-up: the backends, the tasks a role runs, and the signing-secret cipher.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    catalogue::{self, Catalogue},
    clock::now_ms,
    config::EngineConfig,
    delivery::{
        client::DeliveryClient,
        credentials::EndpointCredentials,
        destination::Destinations,
        handoff::Unsettled,
        retries::Retries,
        retry::RetryPolicy,
        scheduler,
        worker::{Shards, WorkerContext},
    },
    error::EngineError,
    fanout,
    gone::GoneTenants,
    log::EventLog,
    metrics::{self, Metrics},
    model::{SubscriptionStatus, WebhookSubscription},
    operational::OperationalEvents,
    ssrf::TargetGuard,
    store::Store,
    subscriptions::SubscriptionIndex,
};

use super::{backends::Backends, recovery, Engine};

impl Engine {
    /// Opens the backends the configuration chooses ([`Backends`]) and
    /// starts the tasks of `config.role`.
    pub async fn start(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let backends = Backends::choose(&config);
        let (log, store) = backends.open(&config).await?;
        Self::run(config, backends, log, store).await
    }

    /// Starts the engine on the given log and store (the backends the
    /// configuration chooses, or wrappers of them), with the tasks
    /// `config.role` asks for.
    pub async fn start_with(
        config: EngineConfig,
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, EngineError> {
        let backends = Backends::choose(&config);
        Self::run(config, backends, log, store).await
    }

    async fn run(
        config: EngineConfig,
        backends: Backends,
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, EngineError> {
        let all = store.all_subscriptions().await?;
        if backends.owns_schedule() {
            release_parked(store.as_ref(), &all).await?;
        }
        let subscriptions = Arc::new(SubscriptionIndex::new(all));
        let catalogue = Arc::new(Catalogue::load(store.all_event_types().await?));
        let gone = Arc::new(GoneTenants::default());
        gone.refresh(store.as_ref()).await;
        let guard = TargetGuard::new(config.allow_targets.clone());
        let cancel = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::new());
        metrics.watch_store(store.clone());
        let mut tasks = Vec::new();
        let shards = if config.role.runs_workers() {
            let d = &config.delivery;
            let client = DeliveryClient::new(
                guard.clone(),
                d.connect_timeout,
                d.request_timeout,
                d.response_body_limit,
                config.egress_proxy.clone(),
            );
            let destinations = Destinations {
                http: client,
                credentials: EndpointCredentials::new(subscriptions.clone()),
                #[cfg(feature = "kafka")]
                kafka: crate::delivery::kafka_sink::KafkaSinks::new(
                    guard.clone(),
                    d.request_timeout,
                ),
            };
            // The event log is the schedule of first attempts: one that
            // succeeds writes no schedule rows (the event's log offset is
            // committed once its deliveries are settled), and a retry of it
            // is kept in the log's schedule changelog when it has one
            // (Kafka), else in the store's schedule.
            let retries = Arc::new(Retries::new(log.partitions()));
            let ctx = Arc::new(WorkerContext {
                store: store.clone(),
                subscriptions: subscriptions.clone(),
                destinations,
                retry: RetryPolicy::new(config.retry_schedule.clone(), d.retry_jitter),
                config: d.clone(),
                in_flight: Default::default(),
                endpoints: Default::default(),
                wake: wake.clone(),
                operational: OperationalEvents::new(log.clone(), store.clone(), metrics.clone()),
                metrics: metrics.clone(),
                open_circuits: Default::default(),
                retries: retries.clone(),
                failing_here: Default::default(),
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
                    group: backends.fanout_group(),
                    dedupe_window: config.dedupe_window,
                    follow_store: backends.shared(),
                    lease: d.lease(),
                    overflowed: metrics.deliveries_overflowed.clone(),
                    unsettled: Arc::new(Unsettled::default()),
                    retries: retries.clone(),
                    gone: gone.clone(),
                },
                wake.clone(),
                cancel.clone(),
            )));
            tasks.push(tokio::spawn(scheduler::run_kept(
                retries.clone(),
                shards.clone(),
                gone.clone(),
                cancel.clone(),
            )));
            tasks.push(tokio::spawn(scheduler::run(
                store.clone(),
                shards.clone(),
                wake.clone(),
                d.lease(),
                cancel.clone(),
            )));
            // The backlog and lag gauges describe the fan-out and the
            // schedule, so the processes that run them export them (an API
            // or relay process would only repeat the same numbers, and scan
            // the schedule for nothing).
            tasks.push(tokio::spawn(metrics::run_refresher(
                metrics.clone(),
                log.clone(),
                store.clone(),
                backends.fanout_group(),
                {
                    let retries = retries.clone();
                    move || retries.len()
                },
                cancel.clone(),
            )));
            Some(shards)
        } else {
            None
        };
        if backends.shared() {
            // Other processes change subscriptions and register schemas in
            // the shared store: every role follows them.
            tasks.push(tokio::spawn(follow_store(
                store.clone(),
                subscriptions.clone(),
                catalogue.clone(),
                gone.clone(),
                cancel.clone(),
            )));
        }
        if config.role.runs_workers() {
            // One process prunes (the one owning the embedded log).
            tasks.push(tokio::spawn(super::retention::run(
                log.clone(),
                store.clone(),
                config.retention,
                cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(super::audit::run_pruner(
            store.clone(),
            config.audit_retention,
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(super::deletion::resume(
            store.clone(),
            subscriptions.clone(),
            catalogue.clone(),
            shards.clone(),
            cancel.clone(),
        )));
        let backlog = (config.role.takes_emits()
            && (config.max_emit_backlog > 0 || !config.max_backlog_wait.is_zero()))
        .then(|| {
            let backlog = Arc::new(super::intake::Backlog::default());
            let limits = super::intake::Limits {
                events: config.max_emit_backlog,
                wait: config.max_backlog_wait,
            };
            tasks.push(tokio::spawn(super::intake::follow(
                log.clone(),
                backends.fanout_group(),
                limits,
                backlog.clone(),
                metrics.clone(),
                cancel.clone(),
            )));
            backlog
        });
        let recovery_wake = Arc::new(Notify::new());
        tasks.push(tokio::spawn(recovery::run(
            store.clone(),
            log.clone(),
            config.recovery_rate,
            wake.clone(),
            recovery_wake.clone(),
            cancel.clone(),
        )));
        #[cfg(feature = "kafka")]
        let relay = match backends.relay(config.role) {
            Some(kafka) => {
                let stats = Arc::new(crate::relay::RelayStats::default());
                tasks.push(tokio::spawn(crate::relay::run(
                    crate::relay::RelaySettings {
                        kafka: kafka.clone(),
                        partitions: log.partitions(),
                        catalogue: catalogue.clone(),
                        gone: gone.clone(),
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
        // Without Kafka support there is no relay (and no Kafka log to start with).
        #[cfg(not(feature = "kafka"))]
        let relay: Option<Arc<crate::relay::RelayStats>> = None;
        tracing::info!(
            data_dir = %config.data_dir.display(),
            role = ?config.role,
            log = backends.log_name(),
            store = backends.store_name(),
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
            quotas: Default::default(),
            keys: Default::default(),
            gone,
            backlog,
            _stop_on_drop: cancel.drop_guard(),
        }))
    }
}

/// How often a process sharing the store checks the store's subscription
/// and catalogue versions (two one-row reads), reloading what moved: a
/// change made through any process reaches every other one within this
/// plus the reload (a rotated secret reaches a worker's deliveries, a new
/// schema an API replica's validation, a new subscription an API replica's
/// reads of the index). Fan-out checks before every batch anyway.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// At start-up of the schedule's only user: deliveries a previous run parked
/// for an active subscription whose queue was full are due again at once
/// (a paused subscription's stay held until its resume).
async fn release_parked(
    store: &dyn Store,
    subscriptions: &[WebhookSubscription],
) -> Result<(), EngineError> {
    let now = now_ms();
    let mut released = 0;
    for sub in subscriptions {
        if sub.status == SubscriptionStatus::Active {
            released += store.release_held(&sub.id, now, usize::MAX).await?;
        }
    }
    if released > 0 {
        tracing::info!(released, "deliveries parked before a restart are due again");
    }
    Ok(())
}

/// Keeps `index`, `catalogue` and `gone` equal to the store's until `cancel`.
async fn follow_store(
    store: Arc<dyn Store>,
    index: Arc<SubscriptionIndex>,
    catalogue: Arc<Catalogue>,
    gone: Arc<GoneTenants>,
    cancel: CancellationToken,
) {
    loop {
        crate::subscriptions::refresh(store.as_ref(), &index).await;
        catalogue::refresh(store.as_ref(), &catalogue).await;
        gone.refresh(store.as_ref()).await;
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            () = cancel.cancelled() => return,
        }
    }
}
