//! Endpoint shards: each delivery goes to the shard owning its subscription
//! (a stable hash of the subscription id), and that shard's task alone holds
//! the endpoint's state — circuit breaker, rate limiter, adaptive in-flight
//! limit, queue — so it needs no locks, and a slow or dead endpoint only
//! ever occupies its own slots.
//!
//! An attempt is sent in its own task (see [`super::attempt`]); its outcome
//! comes back to the shard to drive the breaker and the limits.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use super::context::{Job, WorkerContext, USER_AGENT};
use super::{
    attempt::{log_refusal, refusal, send_and_finish},
    breaker::{Admission, Breaker, BreakerConfig, BreakerState},
    context::Finished,
    decide::{record_on_breaker, BreakerChange},
    limit::{Concurrency, Pace, TokenBucket},
    parking::{Parking, RELEASE_PATIENCE},
};
use crate::model::{SubscriptionStatus, WebhookSubscription};

/// What a shard is handed.
enum Work {
    /// A delivery to attempt.
    Job(Job),
    /// Fan-out parked this many new deliveries of the subscription (its
    /// circuit was open): they are released with the others.
    Parked(String, u64),
}

/// The set of shards.
pub struct Shards {
    senders: Vec<mpsc::Sender<Work>>,
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
        let shard = self.shard_of(&job.delivery.subscription_id);
        if let Err(e) = self.senders[shard].send(Work::Job(job)).await {
            // Shutting down: the lease brings it back after a restart.
            if let Work::Job(job) = e.0 {
                self.ctx.in_flight.lock().remove(&job.delivery.delivery_id);
            }
        }
    }

    fn shard_of(&self, subscription_id: &str) -> usize {
        crc32fast::hash(subscription_id.as_bytes()) as usize % self.senders.len()
    }

    /// The delivery configuration the shards run with.
    pub fn config(&self) -> &crate::config::DeliveryConfig {
        &self.ctx.config
    }

    /// Whether the subscription's circuit is open in this process: its new
    /// deliveries are better parked at once (see [`Shards::parked`]).
    pub fn circuit_open(&self, subscription_id: &str) -> bool {
        self.ctx.open_circuits.lock().contains(subscription_id)
    }

    /// Tells the subscription's shard that `n` new deliveries of it were
    /// parked in the store, to be released when its circuit closes.
    pub async fn parked(&self, subscription_id: &str, n: u64) {
        let shard = self.shard_of(subscription_id);
        // Shutting down if it fails: parked deliveries wait for their re-check
        // or the next process's release.
        let _ = self.senders[shard]
            .send(Work::Parked(subscription_id.to_string(), n))
            .await;
    }

    /// Deliveries currently held by shards.
    pub fn in_flight(&self) -> usize {
        self.ctx.in_flight.lock().len()
    }

    /// The ids of the deliveries the shards hold now.
    pub fn held_ids(&self) -> std::collections::HashSet<String> {
        self.ctx.in_flight.lock().clone()
    }

    /// Whether the shards still hold any of `ids`.
    pub fn holds_any(&self, ids: &std::collections::HashSet<String>) -> bool {
        let held = self.ctx.in_flight.lock();
        ids.iter().any(|id| held.contains(id))
    }

    /// How many more deliveries the shards may be handed (the hand-off limit
    /// less what they hold).
    pub fn room(&self) -> usize {
        self.ctx
            .config
            .handoff_limit
            .saturating_sub(self.in_flight())
    }

    /// The hand-off limit: deliveries the shards hold at most.
    pub fn capacity(&self) -> usize {
        self.ctx.config.handoff_limit
    }
}

/// Deliveries parked in one store write at most.
const PARK_BATCH: usize = 512;

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
    /// Deliveries parked in the schedule (for want of queue room, or
    /// refused by the open circuit) and not released yet.
    parking: Parking,
    /// Whether a timer rings when the open circuit lets a probe through.
    probe_timer: bool,
    /// How fast it answers: how many deliveries its queue may hold.
    pace: Pace,
}

impl Endpoint {
    /// Whether the shard may forget it: nothing queued, parked or pending.
    fn idle(&self) -> bool {
        self.in_flight == 0 && self.queue.is_empty() && self.bucket.is_none() && self.parking.idle()
    }
}

enum Signal {
    Finished(Finished),
    /// A rate-limited endpoint has a token again.
    Wake(String),
    /// An open circuit lets a probe through now.
    Probe(String),
    /// A job whose subscription this process's index did not know yet, but
    /// the store does (created by another process): take it again.
    Retry(Job),
    /// A park write ended: how many deliveries of each subscription it wrote.
    Parked(Vec<(String, u64)>),
    /// A release ended: how many deliveries it made due (`None`: it failed).
    Released(String, Option<u64>),
}

struct Shard {
    ctx: Arc<WorkerContext>,
    endpoints: HashMap<String, Endpoint>,
    signals: mpsc::UnboundedSender<Signal>,
    attempts: tokio::task::JoinSet<()>,
    /// Deliveries to park (for want of queue room, or refused by the open
    /// circuit), written in one go by [`Shard::park`].
    to_park: Vec<Job>,
    /// Subscriptions this shard has had a delivery of since it started, or
    /// since the process was last assigned partitions.
    seen: HashSet<String>,
    /// [`crate::log::assignments`] when `seen` was last cleared.
    seen_since: u64,
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
        // Another process may have left deliveries of it parked (one that
        // died with its circuit open or its queue full, whose partitions this
        // one may have been assigned since): count one, so the first release,
        // once the queue and circuit allow, finds out rather than leaving
        // them to their re-check.
        let assignments = crate::log::assignments();
        if assignments != self.seen_since {
            self.seen.clear();
            self.seen_since = assignments;
        }
        let inherited = u64::from(!self.seen.contains(&sub.id));
        if inherited > 0 {
            self.seen.insert(sub.id.clone());
        }
        let ep = self.endpoints.entry(sub.id.clone()).or_insert_with(|| {
            ctx.endpoints.fetch_add(1, Relaxed);
            Endpoint {
                breaker: Breaker::new(BreakerConfig::of(&ctx.config), now),
                concurrency: Concurrency::new(max_in_flight),
                bucket: None,
                in_flight: 0,
                queue: VecDeque::new(),
                wakeup_pending: false,
                shown: None,
                parking: Parking::new(inherited),
                probe_timer: false,
                pace: Pace::default(),
            }
        });
        ep.parking.arrived();
        // Follow changes to the subscription's limits.
        ep.concurrency.set_max(max_in_flight);
        match (sub.rate_limit, &ep.bucket) {
            (None, _) => ep.bucket = None,
            (Some(r), Some(b)) if b.rate() == r => {}
            (Some(r), _) => ep.bucket = Some(TokenBucket::new(r, now)),
        }
        // Twice the even split of the hand-off: endpoints fed the same
        // events drain at somewhat different speeds, and fan-out hands more
        // as soon as any of them makes room.
        let share = 2 * ctx.config.handoff_limit / ctx.endpoints.load(Relaxed).max(1);
        let cap = ep.pace.queue_cap(
            ctx.config.max_queued_per_endpoint.max(1),
            (ctx.config.queue_pace, share),
            ep.concurrency.limit(),
            ep.in_flight,
            now,
        );
        if ep.queue.len() >= cap {
            // No room: park it in the schedule; it is released as the queue drains.
            ep.parking.queue();
            self.to_park.push(job);
            return;
        }
        ep.queue.push_back((job, sub.clone()));
        self.pump(&sub.id);
    }

    /// Writes the deliveries waiting to be parked, in one store write. They
    /// are released as the queue drains and the circuit closes; their
    /// re-check, should the release be lost with the process, is the longest
    /// the circuit stays open, at least
    /// [`HOLD_RECHECK`](super::hold::HOLD_RECHECK). Not the lease: a dead
    /// endpoint's backlog, parked in a burst, would come back all at once
    /// when the lease ended, be refused by the open circuit and parked again,
    /// and every other endpoint's scheduled deliveries would wait behind
    /// that wave (measured: a minute and more). Another process that takes
    /// over finds them sooner (see `inherited` in [`Shard::accept`]).
    fn park(&mut self) {
        if self.to_park.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.to_park);
        let recheck = super::hold::park_recheck(&self.ctx.config);
        let mut subs: BTreeMap<String, u64> = BTreeMap::new();
        for j in &batch {
            *subs.entry(j.delivery.subscription_id.clone()).or_default() += 1;
        }
        let subs: Vec<(String, u64)> = subs.into_iter().collect();
        let (ctx, signals) = (self.ctx.clone(), self.signals.clone());
        self.attempts.spawn(async move {
            super::hold::park(&ctx, batch, recheck).await;
            let _ = signals.send(Signal::Parked(subs));
        });
    }

    /// Releases the next chunk of an endpoint's parked deliveries once its
    /// queue has drained to a quarter and its circuit is closed. While the
    /// circuit is open nothing is released: when it lets a probe through,
    /// one parked delivery is released to be that probe (unless a queued
    /// one is), and the rest follow once a probe closes it.
    fn release_parked(&mut self, subscription_id: &str) {
        let cap = self.ctx.config.max_queued_per_endpoint.max(1);
        let Some(ep) = self.endpoints.get_mut(subscription_id) else {
            return;
        };
        if !ep.parking.releasable() {
            return;
        }
        let now = tokio::time::Instant::now();
        let limit = match ep.breaker.state(now) {
            BreakerState::Closed if ep.queue.len() <= cap / 4 => (cap / 2).max(1),
            BreakerState::HalfOpen if !ep.breaker.probing() && ep.queue.is_empty() => 1,
            BreakerState::Open if !ep.probe_timer => {
                ep.probe_timer = true;
                let wait = ep.breaker.remaining_open(now);
                let (signals, id) = (self.signals.clone(), subscription_id.to_string());
                self.attempts.spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = signals.send(Signal::Probe(id));
                });
                return;
            }
            _ => return,
        };
        if ep.parking.awaiting_chunk(now) {
            return;
        }
        ep.parking.releasing();
        let (ctx, signals) = (self.ctx.clone(), self.signals.clone());
        let id = subscription_id.to_string();
        self.attempts.spawn(async move {
            let released = super::hold::release_chunk(&ctx, &id, limit).await;
            let _ = signals.send(Signal::Released(id, released));
        });
    }

    /// Fan-out parked `n` new deliveries of the subscription.
    fn parked_by_fanout(&mut self, subscription_id: String, n: u64) {
        match self.endpoints.get_mut(&subscription_id) {
            Some(ep) => {
                ep.parking.add_written(n);
                self.release_parked(&subscription_id);
            }
            None => {
                // Its circuit closed (and the endpoint was forgotten) since
                // fan-out looked: release them now.
                let ctx = self.ctx.clone();
                self.attempts.spawn(async move {
                    if super::hold::release_chunk(&ctx, &subscription_id, usize::MAX)
                        .await
                        .is_some_and(|n| n > 0)
                    {
                        ctx.wake.notify_one();
                    }
                });
            }
        }
    }

    fn parked(&mut self, written: Vec<(String, u64)>) {
        for (id, n) in written {
            if let Some(ep) = self.endpoints.get_mut(&id) {
                ep.parking.written(n);
            }
            self.release_parked(&id);
        }
    }

    fn released(&mut self, subscription_id: &str, released: Option<u64>) {
        let Some(ep) = self.endpoints.get_mut(subscription_id) else {
            return;
        };
        if ep.parking.released(released, tokio::time::Instant::now()) {
            self.ctx.wake.notify_one();
            let (signals, id) = (self.signals.clone(), subscription_id.to_string());
            self.attempts.spawn(async move {
                tokio::time::sleep(RELEASE_PATIENCE).await;
                let _ = signals.send(Signal::Wake(id));
            });
            return;
        }
        self.release_parked(subscription_id);
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
        ep.pace.answered(done.latency, now);
        if done.sent.throttled {
            ep.concurrency.throttled();
        } else if done.sent.success {
            ep.concurrency.succeeded();
        }
        if let Some(change) = record_on_breaker(&mut ep.breaker, done.sent, now) {
            tracing::info!(subscription_id = %done.subscription_id, state = ?change.after, probe = done.probe, "circuit breaker changed state");
            let mut open = self.ctx.open_circuits.lock();
            if change.after == BreakerState::Closed {
                open.remove(&done.subscription_id);
            } else {
                open.insert(done.subscription_id.clone());
            }
            drop(open);
            self.announce(&done.subscription_id, change);
        }
        self.pump(&done.subscription_id);
        // An idle, healthy endpoint has nothing worth remembering: forget it.
        if let Some(ep) = self.endpoints.get(&done.subscription_id) {
            let closed = ep.breaker.state(now) == BreakerState::Closed;
            if done.sent.success && closed && ep.idle() {
                let shown = self
                    .endpoints
                    .remove(&done.subscription_id)
                    .and_then(|ep| ep.shown);
                self.ctx.endpoints.fetch_sub(1, Relaxed);
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
                // Not sent, so it costs no attempt: logged once and parked
                // until the circuit closes (see `release_parked`), rather
                // than due again, and refused again, at every probe.
                let record = refusal(&ctx, &sub, &job, ep.breaker.remaining_open(now));
                self.attempts
                    .spawn(async move { log_refusal(&ctx, record).await });
                ep.parking.queue();
                self.to_park.push(job);
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
        self.release_parked(subscription_id);
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
                leave_leased(&ctx, job).await;
            }
        }
        Ok(None) => super::attempt::drop_orphan(ctx, job).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not look up a delivery's subscription; it stays leased");
            leave_leased(&ctx, job).await;
        }
    }
}

/// Leaves a job to come back when its lease ends (scheduled first, if fan-out
/// handed it over unscheduled).
async fn leave_leased(ctx: &WorkerContext, mut job: Job) {
    super::hold::schedule_unscheduled(ctx, std::slice::from_mut(&mut job)).await;
    ctx.in_flight.lock().remove(&job.delivery.delivery_id);
}

async fn run_shard(
    ctx: Arc<WorkerContext>,
    mut jobs: mpsc::Receiver<Work>,
    cancel: CancellationToken,
) {
    let (signals, mut signal_rx) = mpsc::unbounded_channel::<Signal>();
    let mut shard = Shard {
        ctx,
        endpoints: HashMap::new(),
        signals,
        attempts: tokio::task::JoinSet::new(),
        to_park: Vec::new(),
        seen: HashSet::new(),
        seen_since: crate::log::assignments(),
    };
    loop {
        tokio::select! {
            biased;
            Some(signal) = signal_rx.recv() => match signal {
                Signal::Finished(done) => shard.finished(done),
                Signal::Retry(job) => shard.accept(job),
                Signal::Parked(ids) => shard.parked(ids),
                Signal::Released(id, n) => shard.released(&id, n),
                Signal::Probe(id) => {
                    if let Some(ep) = shard.endpoints.get_mut(&id) {
                        ep.probe_timer = false;
                    }
                    shard.pump(&id);
                }
                Signal::Wake(id) => {
                    if let Some(ep) = shard.endpoints.get_mut(&id) {
                        ep.wakeup_pending = false;
                    }
                    shard.pump(&id);
                }
            },
            work = jobs.recv() => match work {
                Some(Work::Job(job)) => shard.accept(job),
                Some(Work::Parked(id, n)) => shard.parked_by_fanout(id, n),
                None => break,
            },
            Some(_) = shard.attempts.join_next(), if !shard.attempts.is_empty() => {}
            () = cancel.cancelled() => break,
        }
        if shard.to_park.len() >= PARK_BATCH || (!shard.to_park.is_empty() && jobs.is_empty()) {
            shard.park();
        }
    }
    shard.park();
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
