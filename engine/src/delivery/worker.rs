//! Endpoint shards: each delivery goes to the shard owning its subscription
//! (a stable hash of the subscription id), and that shard's task alone holds
//! the endpoint's circuit breaker and in-flight limit — no locks, and a slow
//! or dead endpoint only ever occupies its own permits.
//!
//! An attempt is sent in its own task; its result is recorded in the store
//! together with the delivery's next due time (or its removal from the
//! schedule) before the delivery leaves the in-flight set.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    breaker::{Admission, Breaker, BreakerState},
    client::{DeliveryClient, SendError},
    retry::{RetryAction, RetryPolicy},
};
use crate::{
    config::DeliveryConfig,
    ids,
    metrics::Metrics,
    model::{
        DomainEvent, ErrorClass, Outcome, ScheduledDelivery, SubscriptionStatus,
        WebhookDeliveryLog, WebhookSubscription,
    },
    signing,
    store::Store,
    subscriptions::SubscriptionIndex,
};

/// The `user-agent` of every delivery.
pub const USER_AGENT: &str = concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION"));

/// A delivery handed to a shard.
#[derive(Debug)]
pub struct Job {
    /// What to deliver.
    pub delivery: ScheduledDelivery,
    /// The event it carries.
    pub event: Arc<DomainEvent>,
}

/// Everything the shards share (read-only or internally synchronised).
pub struct WorkerContext {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Subscriptions by id.
    pub subscriptions: Arc<SubscriptionIndex>,
    /// The HTTP client.
    pub client: DeliveryClient,
    /// Retry decisions.
    pub retry: RetryPolicy,
    /// Tuning.
    pub config: DeliveryConfig,
    /// Deliveries currently in a shard (so a re-claim after a lease does not double-send).
    pub in_flight: Mutex<HashSet<String>>,
    /// Where attempts and breaker states are counted.
    pub metrics: Arc<Metrics>,
}

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
    in_flight: usize,
    queue: VecDeque<(Job, Arc<WebhookSubscription>)>,
    /// The breaker state this endpoint counts under in the metrics.
    shown: Option<BreakerState>,
}

struct Finished {
    subscription_id: String,
    success: bool,
    probe: bool,
}

struct Shard {
    ctx: Arc<WorkerContext>,
    endpoints: HashMap<String, Endpoint>,
    done_tx: mpsc::UnboundedSender<Finished>,
    attempts: tokio::task::JoinSet<()>,
}

impl Shard {
    fn accept(&mut self, job: Job) {
        let ctx = &self.ctx;
        let Some(sub) = ctx.subscriptions.get(&job.delivery.subscription_id) else {
            self.attempts.spawn(drop_orphan(ctx.clone(), job));
            return;
        };
        if sub.status != SubscriptionStatus::Active {
            // Paused or disabled: leave it leased; it falls due again later.
            ctx.in_flight.lock().remove(&job.delivery.delivery_id);
            return;
        }
        let config = &ctx.config;
        let ep = self
            .endpoints
            .entry(sub.id.clone())
            .or_insert_with(|| Endpoint {
                breaker: Breaker::new(config.breaker_failure_threshold, config.breaker_open_for),
                in_flight: 0,
                queue: VecDeque::new(),
                shown: None,
            });
        if ep.queue.len() >= MAX_QUEUED_PER_ENDPOINT {
            ctx.in_flight.lock().remove(&job.delivery.delivery_id);
            return;
        }
        ep.queue.push_back((job, sub.clone()));
        self.pump(&sub.id);
    }

    fn finished(&mut self, done: Finished) {
        let Some(ep) = self.endpoints.get_mut(&done.subscription_id) else {
            return;
        };
        ep.in_flight = ep.in_flight.saturating_sub(1);
        if let Some(state) = ep.breaker.record(done.success, tokio::time::Instant::now()) {
            tracing::info!(subscription_id = %done.subscription_id, ?state, probe = done.probe, "circuit breaker changed state");
        }
        self.pump(&done.subscription_id);
        // An idle, healthy endpoint has nothing worth remembering: forget it.
        if let Some(ep) = self.endpoints.get(&done.subscription_id) {
            let closed = ep.breaker.state(tokio::time::Instant::now()) == BreakerState::Closed;
            if done.success && closed && ep.in_flight == 0 && ep.queue.is_empty() {
                let shown = self
                    .endpoints
                    .remove(&done.subscription_id)
                    .and_then(|ep| ep.shown);
                self.ctx.metrics.breaker_moved(shown, None);
            }
        }
    }

    /// Starts as many queued jobs as the endpoint's in-flight limit allows;
    /// the breaker is asked at the moment a job would be sent.
    fn pump(&mut self, subscription_id: &str) {
        let max = self.ctx.config.max_in_flight_per_endpoint.max(1);
        let Some(ep) = self.endpoints.get_mut(subscription_id) else {
            return;
        };
        while ep.in_flight < max {
            let Some((job, sub)) = ep.queue.pop_front() else {
                break;
            };
            let now = tokio::time::Instant::now();
            let admission = ep.breaker.admit(now);
            let ctx = self.ctx.clone();
            if admission == Admission::Reject {
                // Not sent, so it costs no attempt: the delivery waits for the
                // breaker's next probe, spread out so the backlog doesn't land at once.
                let wait = ep
                    .breaker
                    .remaining_open(now)
                    .max(Duration::from_millis(500));
                let spread = wait.mul_f64(rand::random::<f64>() * 0.2);
                self.attempts.spawn(async move {
                    let refused = Err(SendError {
                        class: ErrorClass::CircuitOpen,
                        message: "circuit open: the endpoint failed repeatedly; not sent".into(),
                        latency: Duration::ZERO,
                    });
                    finish(&ctx, &sub, job, refused, Some(wait + spread)).await;
                });
                continue;
            }
            ep.in_flight += 1;
            let done_tx = self.done_tx.clone();
            self.attempts.spawn(async move {
                let result = send(&ctx, &sub, &job).await;
                let _ = done_tx.send(Finished {
                    subscription_id: sub.id.clone(),
                    success: result.as_ref().is_ok_and(|a| a.is_success()),
                    probe: admission == Admission::Probe,
                });
                finish(&ctx, &sub, job, result, None).await;
            });
        }
        let shown = ep.shown.replace(ep.breaker.current());
        self.ctx.metrics.breaker_moved(shown, ep.shown);
    }
}

async fn run_shard(
    ctx: Arc<WorkerContext>,
    mut jobs: mpsc::Receiver<Job>,
    cancel: CancellationToken,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut shard = Shard {
        ctx,
        endpoints: HashMap::new(),
        done_tx,
        attempts: tokio::task::JoinSet::new(),
    };
    loop {
        tokio::select! {
            biased;
            Some(done) = done_rx.recv() => shard.finished(done),
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

/// Builds the signed request and sends it.
async fn send(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: &Job,
) -> Result<super::client::Answer, SendError> {
    let event = &job.event;
    let body = Bytes::from(event.envelope_bytes());
    let now = OffsetDateTime::now_utc();
    let ts = now.unix_timestamp();
    let signature = signing::signature_header(sub.live_secrets(now), &event.id, ts, &body);
    let mut headers = HeaderMap::with_capacity(12);
    for (name, value) in &sub.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(n, v);
        }
    }
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("webhook-id", &event.id);
    put("webhook-timestamp", &ts.to_string());
    put("webhook-signature", &signature);
    put("herald-event-type", &event.event_type);
    if let Some(key) = &event.dedupe_key {
        put("herald-dedupe-key", key);
    }
    put("herald-attempt", &job.delivery.attempt.to_string());
    put("herald-delivery-id", &job.delivery.delivery_id);
    put("herald-subscription-id", &sub.id);
    put("user-agent", USER_AGENT);
    ctx.client.post(&sub.url, headers, body).await
}

/// Records the attempt and schedules what follows, retrying the write until
/// it is durable (the delivery stays in flight meanwhile). `deferred` is set
/// when nothing was sent (open circuit): the same attempt is due again then.
async fn finish(
    ctx: &WorkerContext,
    sub: &WebhookSubscription,
    job: Job,
    result: Result<super::client::Answer, SendError>,
    deferred: Option<Duration>,
) {
    let d = &job.delivery;
    let success = result.as_ref().is_ok_and(|a| a.is_success());
    let now = OffsetDateTime::now_utc();
    let due_in = |delay: Duration, attempt: u32| {
        let mut next = d.clone();
        next.attempt = attempt;
        next.due_at_ms = ((now + delay).unix_timestamp_nanos() / 1_000_000) as i64;
        next
    };
    let (outcome, next) = match deferred {
        Some(wait) => (Outcome::Failed, Some(due_in(wait, d.attempt))),
        None => match ctx
            .retry
            .decide(d.attempt, success, &mut rand::thread_rng())
        {
            RetryAction::Done => (Outcome::Delivered, None),
            RetryAction::Dead => (Outcome::Dead, None),
            RetryAction::RetryAfter(delay) => (Outcome::Failed, Some(due_in(delay, d.attempt + 1))),
        },
    };
    let mut record = WebhookDeliveryLog {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id: d.delivery_id.clone(),
        event_id: d.event_id.clone(),
        subscription_id: d.subscription_id.clone(),
        tenant_id: d.tenant_id.clone(),
        attempt: d.attempt,
        trigger: d.trigger(),
        replay_of: d.replay_of.clone(),
        url: sub.url.clone(),
        created_at: now,
        status_code: None,
        latency_ms: None,
        response_body: None,
        location: None,
        error: None,
        error_message: None,
        outcome,
        next_attempt_at: next.as_ref().and_then(|n| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(n.due_at_ms) * 1_000_000).ok()
        }),
    };
    match result {
        Ok(answer) => {
            record.created_at = now - answer.latency;
            record.status_code = Some(answer.status);
            record.latency_ms = Some(answer.latency.as_millis() as u64);
            if !answer.is_success() {
                record.error = Some(ErrorClass::HttpStatus);
                record.location = answer.location;
            }
            record.response_body = Some(answer.body);
        }
        Err(e) => {
            record.created_at = now - e.latency;
            record.latency_ms = Some(e.latency.as_millis() as u64);
            record.error = Some(e.class);
            record.error_message = Some(e.message);
        }
    }
    if outcome == Outcome::Dead {
        tracing::warn!(delivery_id = %d.delivery_id, event_id = %d.event_id, subscription_id = %d.subscription_id, "delivery is dead after its last attempt; it can be replayed");
    }
    ctx.metrics
        .attempt(&record, deferred.is_none(), job.event.received_at);
    persist(ctx, record, next).await;
    ctx.in_flight.lock().remove(&d.delivery_id);
}

async fn persist(ctx: &WorkerContext, record: WebhookDeliveryLog, next: Option<ScheduledDelivery>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match ctx.store.record_attempt(record.clone(), next.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, delivery_id = %record.delivery_id, "could not record an attempt; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A delivery whose subscription no longer exists: recorded dead and removed.
async fn drop_orphan(ctx: Arc<WorkerContext>, job: Job) {
    let d = &job.delivery;
    let record = WebhookDeliveryLog {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id: d.delivery_id.clone(),
        event_id: d.event_id.clone(),
        subscription_id: d.subscription_id.clone(),
        tenant_id: d.tenant_id.clone(),
        attempt: d.attempt,
        trigger: d.trigger(),
        replay_of: d.replay_of.clone(),
        url: String::new(),
        created_at: OffsetDateTime::now_utc(),
        status_code: None,
        latency_ms: None,
        response_body: None,
        location: None,
        error: None,
        error_message: Some("the subscription no longer exists".into()),
        outcome: Outcome::Dead,
        next_attempt_at: None,
    };
    ctx.metrics.attempt(&record, false, job.event.received_at);
    persist(&ctx, record, None).await;
    ctx.in_flight.lock().remove(&d.delivery_id);
}
