//! Endpoint shards: each delivery goes to the shard owning its subscription
//! (a stable hash of the subscription id), and that shard's task alone holds
//! the endpoint's state — circuit breaker, rate limiter, adaptive in-flight
//! limit, queue — so it needs no locks, and a slow or dead endpoint only
//! ever occupies its own slots.
//!
//! An attempt is sent in its own task (see [`super::attempt`]); its outcome
//! comes back to the shard to drive the breaker and the limits.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use super::context::{Job, WorkerContext, USER_AGENT};
use super::{
    attempt::{deferred, send_and_finish},
    breaker::{Admission, Breaker, BreakerConfig, BreakerState},
    context::Finished,
    decide::{deferral, record_on_breaker, BreakerChange},
    limit::{Concurrency, TokenBucket},
};
use crate::model::{SubscriptionStatus, WebhookSubscription};

/// The set of shards.
pub struct Shards {
    senders: Vec<mpsc::Sender<Job>>,
    ctx: Arc<WorkerContext>,
}

impl Shards {
    /// Starts `ctx.config.shards` shard tasks.
    pub fn start(
        ctx: Arc<WorkerContext>,
        cancel: CancellationToken,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let n = ctx.config.shards.max(1);
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(1024);
            senders.push(tx);
            handles.push(tokio::spawn(run_shard(ctx.clone(), rx, cancel.clone())));
        }
        (Self { senders, ctx }, handles)
    }

    /// Hands a delivery to its shard unless it is already in flight. Waits
    /// when the shard's queue is full (backpressure on the scheduler).
    pub async fn dispatch(&self, job: Job) {
        if !self
            .ctx
            .in_flight
            .lock()
            .insert(job.delivery.delivery_id.clone())
        {
            return;
        }
        let shard =
            crc32fast::hash(job.delivery.subscription_id.as_bytes()) as usize % self.senders.len();
        if let Err(e) = self.senders[shard].send(job).await {
            // Shutting down: the lease brings it back after a restart.
            self.ctx.in_flight.lock().remove(&e.0.delivery.delivery_id);
        }
    }

    /// Deliveries currently held by shards.
    pub fn in_flight(&self) -> usize {
        self.ctx.in_flight.lock().len()
    }
}

/// Jobs an endpoint holds in memory at most; beyond that a job is let go
/// (it stays leased in the schedule and comes back when the lease ends), so
/// a slow endpoint's backlog never grows the heap.
const MAX_QUEUED_PER_ENDPOINT: usize = 2048;

/// One endpoint's state, owned by its shard task.
struct Endpoint {
    breaker: Breaker,
    concurrency: Concurrency,
    bucket: Option<TokenBucket>,
    in_flight: usize,
    queue: VecDeque<(Job, Arc<WebhookSubscription>)>,
    wakeup_pending: bool,
    /// The breaker state this endpoint counts under in the metrics.
    shown: Option<BreakerState>,
}

enum Signal {
    Finished(Finished),
    /// A rate-limited endpoint has a token again.
    Wake(String),
    /// A job whose subscription this process's index did not know yet, but
    /// the store does (created by another process): take it again.
    Retry(Job),
}

struct Shard {
    ctx: Arc<WorkerContext>,
    endpoints: HashMap<String, Endpoint>,
    signals: mpsc::UnboundedSender<Signal>,
    attempts: tokio::task::JoinSet<()>,
}

impl Shard {
    fn accept(&mut self, job: Job) {
        let ctx = &self.ctx;
        let Some(sub) = ctx.subscriptions.get(&job.delivery.subscription_id) else {
            self.attempts
                .spawn(resolve_unknown(ctx.clone(), job, self.signals.clone()));
            return;
        };
        match sub.status {
            SubscriptionStatus::Active => {}
            SubscriptionStatus::Paused => {
                self.attempts.spawn(super::hold::hold(ctx.clone(), job));
                return;
            }
            SubscriptionStatus::Disabled => {
                let drop = super::attempt::drop_dead(ctx.clone(), job, super::hold::DISABLED);
                self.attempts.spawn(drop);
                return;
            }
        }
        let now = tokio::time::Instant::now();
        let max_in_flight = self.max_in_flight(&sub);
        let ep = self
            .endpoints
            .entry(sub.id.clone())
            .or_insert_with(|| Endpoint {
                breaker: Breaker::new(BreakerConfig::of(&ctx.config), now),
                concurrency: Concurrency::new(max_in_flight),
                bucket: None,
                in_flight: 0,
                queue: VecDeque::new(),
                wakeup_pending: false,
                shown: None,
            });
        // Follow changes to the subscription's limits.
        ep.concurrency.set_max(max_in_flight);
        match (sub.rate_limit, &ep.bucket) {
            (None, _) => ep.bucket = None,
            (Some(r), Some(b)) if b.rate() == r => {}
            (Some(r), _) => ep.bucket = Some(TokenBucket::new(r, now)),
        }
        if ep.queue.len() >= MAX_QUEUED_PER_ENDPOINT {
            ctx.in_flight.lock().remove(&job.delivery.delivery_id);
            return;
        }
        ep.queue.push_back((job, sub.clone()));
        self.pump(&sub.id);
    }

    fn max_in_flight(&self, sub: &WebhookSubscription) -> usize {
        let server = self.ctx.config.max_in_flight_per_endpoint.max(1);
        sub.max_in_flight
            .map_or(server, |m| (m as usize).min(server))
    }

    fn finished(&mut self, done: Finished) {
        let Some(ep) = self.endpoints.get_mut(&done.subscription_id) else {
            return;
        };
        let now = tokio::time::Instant::now();
        ep.in_flight = ep.in_flight.saturating_sub(1);
        if done.sent.throttled {
            ep.concurrency.throttled();
        } else if done.sent.success {
            ep.concurrency.succeeded();
        }
        if let Some(change) = record_on_breaker(&mut ep.breaker, done.sent, now) {
            tracing::info!(subscription_id = %done.subscription_id, state = ?change.after, probe = done.probe, "circuit breaker changed state");
            self.announce(&done.subscription_id, change);
        }
        self.pump(&done.subscription_id);
        // An idle, healthy endpoint has nothing worth remembering: forget it.
        if let Some(ep) = self.endpoints.get(&done.subscription_id) {
            let closed = ep.breaker.state(now) == BreakerState::Closed;
            if done.sent.success
                && closed
                && ep.in_flight == 0
                && ep.queue.is_empty()
                && ep.bucket.is_none()
            {
                let shown = self
                    .endpoints
                    .remove(&done.subscription_id)
                    .and_then(|ep| ep.shown);
                self.ctx.metrics.breaker_moved(shown, None);
            }
        }
    }

    /// Tells the tenant its endpoint's circuit opened or closed.
    fn announce(&mut self, subscription_id: &str, change: BreakerChange) {
        let Some(event_type) = change.announcement() else {
            return;
        };
        let Some(sub) = self.ctx.subscriptions.get(subscription_id) else {
            return;
        };
        let ops = self.ctx.operational.clone();
        let payload = json!({ "subscription_id": sub.id, "url": sub.url });
        self.attempts.spawn(async move {
            ops.emit(&sub.tenant_id, event_type, payload).await;
        });
    }

    /// Starts as many queued jobs as the endpoint's limits allow. The breaker
    /// is asked at the moment a job would be sent.
    fn pump(&mut self, subscription_id: &str) {
        let Some(ep) = self.endpoints.get_mut(subscription_id) else {
            return;
        };
        while ep.in_flight < ep.concurrency.limit() && !ep.queue.is_empty() {
            let now = tokio::time::Instant::now();
            let open = ep.breaker.state(now) == BreakerState::Open;
            if !open {
                if let Some(bucket) = &mut ep.bucket {
                    if let Err(wait) = bucket.take(now) {
                        if !ep.wakeup_pending {
                            ep.wakeup_pending = true;
                            let (signals, id) = (self.signals.clone(), subscription_id.to_string());
                            self.attempts.spawn(async move {
                                tokio::time::sleep(wait).await;
                                let _ = signals.send(Signal::Wake(id));
                            });
                        }
                        break;
                    }
                }
            }
            let Some((job, sub)) = ep.queue.pop_front() else {
                break;
            };
            let admission = ep.breaker.admit(now);
            let ctx = self.ctx.clone();
            if admission == Admission::Reject {
                // Not sent, so it costs no attempt: the delivery waits for the
                // breaker's next probe, spread out so the backlog doesn't land at once.
                let wait = deferral(ep.breaker.remaining_open(now), rand::random::<f64>());
                self.attempts
                    .spawn(async move { deferred(&ctx, &sub, job, wait).await });
                continue;
            }
            ep.in_flight += 1;
            let signals = self.signals.clone();
            let probe = admission == Admission::Probe;
            self.attempts.spawn(async move {
                send_and_finish(&ctx, &sub, job, probe, |done| {
                    let _ = signals.send(Signal::Finished(done));
                })
                .await;
            });
        }
        let shown = ep.shown.replace(ep.breaker.current());
        self.ctx.metrics.breaker_moved(shown, ep.shown);
    }
}

/// A job whose subscription the index does not hold: another process may
/// have created it after this one's last look at the shared store (the
/// fan-out that scheduled it may run elsewhere). Ask the store: if it is
/// there, refresh the index and hand the job back to its shard; only if it
/// is gone is the delivery dead.
async fn resolve_unknown(
    ctx: Arc<WorkerContext>,
    job: Job,
    signals: mpsc::UnboundedSender<Signal>,
) {
    let d = &job.delivery;
    match ctx
        .store
        .get_subscription(&d.tenant_id, &d.subscription_id)
        .await
    {
        Ok(Some(_)) => {
            crate::subscriptions::refresh(ctx.store.as_ref(), &ctx.subscriptions).await;
            if ctx.subscriptions.get(&d.subscription_id).is_some() {
                let _ = signals.send(Signal::Retry(job));
            } else {
                // The index could not catch up (store error): the lease
                // brings the delivery back later.
                ctx.in_flight.lock().remove(&d.delivery_id);
            }
        }
        Ok(None) => super::attempt::drop_orphan(ctx, job).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not look up a delivery's subscription; it stays leased");
            ctx.in_flight.lock().remove(&d.delivery_id);
        }
    }
}

async fn run_shard(
    ctx: Arc<WorkerContext>,
    mut jobs: mpsc::Receiver<Job>,
    cancel: CancellationToken,
) {
    let (signals, mut signal_rx) = mpsc::unbounded_channel::<Signal>();
    let mut shard = Shard {
        ctx,
        endpoints: HashMap::new(),
        signals,
        attempts: tokio::task::JoinSet::new(),
    };
    loop {
        tokio::select! {
            biased;
            Some(signal) = signal_rx.recv() => match signal {
                Signal::Finished(done) => shard.finished(done),
                Signal::Retry(job) => shard.accept(job),
                Signal::Wake(id) => {
                    if let Some(ep) = shard.endpoints.get_mut(&id) {
                        ep.wakeup_pending = false;
                    }
                    shard.pump(&id);
                }
            },
            job = jobs.recv() => match job {
                Some(job) => shard.accept(job),
                None => break,
            },
            Some(_) = shard.attempts.join_next(), if !shard.attempts.is_empty() => {}
            () = cancel.cancelled() => break,
        }
    }
    // Drain: attempts already sent finish and are recorded; queued ones stay
    // leased in the schedule and are picked up after a restart.
    for ep in shard.endpoints.values() {
        shard.ctx.metrics.breaker_moved(ep.shown, None);
        let mut in_flight = shard.ctx.in_flight.lock();
        for (job, _) in &ep.queue {
            in_flight.remove(&job.delivery.delivery_id);
        }
    }
    while shard.attempts.join_next().await.is_some() {}
}
