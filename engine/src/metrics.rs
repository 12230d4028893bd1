//! Herald's Prometheus metrics, all defined here.
//!
//! Names follow `herald_<what>_<unit>` (`_total` for counters, `_seconds`
//! for durations). Every label takes its values from a small fixed set — an
//! event source, an outcome, an error class, a breaker state, a log partition
//! number, a matched route template, a status class — and never from tenants'
//! data (tenant, subscription, URL, event id), so the number of series does
//! not grow with use. Label values that are known up front are created at
//! zero, so `rate()` and alerts see a series from the first scrape.
//!
//! Each engine owns its own [`Registry`] (tests run several engines in one
//! process); every role serves it on `/metrics` with [`Metrics::render`],
//! and each series comes from the role that does the work: deliveries,
//! breakers, backlog and lag from processes that run workers, the relay's
//! counters from the relay, requests from the API. Gauges that mirror
//! durable state (retry backlog, consumer lag) are refreshed by
//! [`run_refresher`] in the processes that run workers; the circuit-breaker
//! gauges are kept by the shards that own the breakers.

use std::{sync::Arc, time::Duration};

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{
    delivery::breaker::BreakerState,
    log::EventLog,
    model::{ErrorClass, EventSource, Outcome, WebhookDeliveryLog},
    store::Store,
};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often [`run_refresher`] re-reads the backlog and the consumer lag.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Every metric Herald exports.
pub struct Metrics {
    registry: Registry,
    /// `herald_events_ingested_total{source}`: events made durable in the log.
    pub events_ingested: IntCounterVec,
    /// `herald_delivery_attempts_total{outcome,error}`: recorded attempts.
    pub attempts: IntCounterVec,
    /// `herald_deliveries_total{outcome}`: deliveries that ended (delivered or dead).
    pub deliveries: IntCounterVec,
    /// `herald_delivery_duration_seconds`: request time of attempts that were sent.
    pub delivery_duration: Histogram,
    /// `herald_emit_to_delivery_seconds`: from the event's receipt to its successful delivery.
    pub emit_to_delivery: Histogram,
    /// `herald_retry_backlog_deliveries`: deliveries waiting in the durable schedule.
    pub retry_backlog: IntGauge,
    /// `herald_emit_backlog_bound_events`: the backlog past which emits are refused now.
    pub emit_backlog_bound: IntGauge,
    /// `herald_circuit_breakers{state}`: endpoints held by the shards, by breaker state.
    pub circuit_breakers: IntGaugeVec,
    /// `herald_circuit_breaker_transitions_total{to}`: breaker state changes.
    pub circuit_transitions: IntCounterVec,
    /// `herald_consumer_lag_records{partition}`: log end offset minus the fan-out's committed offset.
    pub consumer_lag: IntGaugeVec,
    /// `herald_relay_records_total`: CDC rows the relay appended to the event log.
    pub relay_records: IntCounter,
    /// `herald_relay_dead_letters_total`: CDC rows the relay sent to the dead-letter topic.
    pub relay_dead_letters: IntCounter,
    /// `herald_attempt_records_abandoned_total`: attempt records the store
    /// refused on every try (those deliveries go again when their lease ends).
    pub attempt_records_abandoned: IntCounter,
    /// `herald_deliveries_parked_total`: deliveries a worker parked in the
    /// schedule because their endpoint's queue was full.
    pub deliveries_parked: IntCounter,
    /// `herald_deliveries_overflowed_total`: deliveries fan-out scheduled in
    /// the store because the shards stayed full (their hand-off limit).
    pub deliveries_overflowed: IntCounter,
    /// `herald_http_requests_total{route,method,status}`: API requests by matched route and status class.
    pub http_requests: IntCounterVec,
    /// `herald_http_request_duration_seconds{route,method}`: API request handling time.
    pub http_duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        }
        fn histogram(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
            buckets: Vec<f64>,
        ) -> HistogramVec {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        }
        let r = &registry;
        // 5 ms … ~41 s for one request; 10 ms … ~6 days from emit to delivery (retries).
        let request_buckets = exponential_buckets(0.005, 2.0, 14).expect("buckets");
        let e2e_buckets = exponential_buckets(0.01, 4.0, 14).expect("buckets");
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let plain_histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let retry_backlog = plain_gauge(
            "herald_retry_backlog_deliveries",
            "Deliveries waiting in the durable schedule (first attempts due now and retries), and the retries this worker keeps in the schedule changelog.",
        );
        let emit_backlog_bound = plain_gauge(
            "herald_emit_backlog_bound_events",
            "Accepted events not yet delivered past which this process refuses emits now: --max-emit-backlog, or what delivery settles in --max-backlog-wait at its measured rate when that is less; 0 = none.",
        );
        let m = Self {
            events_ingested: counter(
                r,
                "herald_events_ingested_total",
                "Events made durable in the event log, by source (api, cdc, replay).",
                &["source"],
            ),
            attempts: counter(
                r,
                "herald_delivery_attempts_total",
                "Delivery attempts recorded, by outcome (delivered, failed, dead) and error class (none when delivered).",
                &["outcome", "error"],
            ),
            deliveries: counter(
                r,
                "herald_deliveries_total",
                "Deliveries that ended, by outcome: delivered, or dead after the last attempt.",
                &["outcome"],
            ),
            delivery_duration: plain_histogram(
                "herald_delivery_duration_seconds",
                "Time of one delivery request, from send to the end of the response, for attempts that were sent.",
                request_buckets.clone(),
            ),
            emit_to_delivery: plain_histogram(
                "herald_emit_to_delivery_seconds",
                "Time from an event's receipt by Herald to its successful delivery, retries included.",
                e2e_buckets,
            ),
            retry_backlog,
            emit_backlog_bound,
            circuit_breakers: gauge(
                r,
                "herald_circuit_breakers",
                "Endpoints whose delivery state the shards hold, by circuit breaker state (closed, open, half_open).",
                &["state"],
            ),
            circuit_transitions: counter(
                r,
                "herald_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered.",
                &["to"],
            ),
            consumer_lag: gauge(
                r,
                "herald_consumer_lag_records",
                "Events in the log not yet committed by the fan-out consumer, by log partition.",
                &["partition"],
            ),
            relay_records: single(
                "herald_relay_records_total",
                "CDC rows the relay appended to the event log.",
            ),
            relay_dead_letters: single(
                "herald_relay_dead_letters_total",
                "CDC rows the relay could not parse and sent to the dead-letter topic.",
            ),
            attempt_records_abandoned: single(
                "herald_attempt_records_abandoned_total",
                "Attempt records the store refused on every retry; each such delivery is sent again when its lease ends.",
            ),
            deliveries_parked: single(
                "herald_deliveries_parked_total",
                "Deliveries a worker parked in the schedule because their endpoint's queue was full; they are released a chunk at a time as it drains.",
            ),
            deliveries_overflowed: single(
                "herald_deliveries_overflowed_total",
                "Deliveries fan-out scheduled in the store instead of handing them to the shards, which stayed full (the hand-off limit) for a second.",
            ),
            http_requests: counter(
                r,
                "herald_http_requests_total",
                "API requests, by matched route template, method and status class (2xx, 4xx, 5xx).",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                r,
                "herald_http_request_duration_seconds",
                "API request handling time, by matched route template and method.",
                &["route", "method"],
                request_buckets,
            ),
            registry,
        };
        for source in [
            EventSource::Api,
            EventSource::Cdc,
            EventSource::Replay,
            EventSource::Herald,
        ] {
            m.events_ingested.with_label_values(&[source_name(source)]);
        }
        for outcome in [Outcome::Delivered, Outcome::Dead] {
            m.deliveries.with_label_values(&[outcome.as_str()]);
        }
        m.attempts.with_label_values(&["delivered", "none"]);
        for state in ["closed", "open", "half_open"] {
            m.circuit_breakers.with_label_values(&[state]);
            m.circuit_transitions.with_label_values(&[state]);
        }
        m
    }

    /// The registry, to add process-specific collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Exports `herald_store_operations_total{kind}` from `store`'s own
    /// counts, read at each scrape, if the store counts (the CQL store).
    pub fn watch_store(&self, store: Arc<dyn Store>) {
        if store.op_counts().is_none() {
            return;
        }
        let proto = IntCounterVec::new(
            Opts::new(
                "herald_store_operations_total",
                "Statements this process sent to the CQL store, by kind (read, write, conditional_write)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let collector = StoreOps { store, proto };
        self.registry
            .register(Box::new(collector))
            .expect("unique metric");
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// An event became durable in the log.
    pub fn event_ingested(&self, source: EventSource) {
        self.events_ingested
            .with_label_values(&[source_name(source)])
            .inc();
    }

    /// An attempt is being recorded. `sent` says whether a request went out
    /// (an open circuit records an attempt without sending); `received_at` is
    /// when the event reached Herald.
    pub fn attempt(&self, record: &WebhookDeliveryLog, sent: bool, received_at: OffsetDateTime) {
        let outcome = record.outcome;
        self.attempts
            .with_label_values(&[outcome.as_str(), record.error.map_or("none", error_name)])
            .inc();
        if let (true, Some(ms)) = (sent, record.latency_ms) {
            self.delivery_duration.observe(ms as f64 / 1000.0);
        }
        if matches!(outcome, Outcome::Delivered | Outcome::Dead) {
            self.deliveries.with_label_values(&[outcome.as_str()]).inc();
        }
        if outcome == Outcome::Delivered {
            let waited = (OffsetDateTime::now_utc() - received_at).as_seconds_f64();
            self.emit_to_delivery.observe(waited.max(0.0));
        }
    }

    /// The CDC relay's committed totals so far: `herald_relay_*` and
    /// `herald_events_ingested_total{source="cdc"}` catch up to them.
    pub fn relay_progress(&self, relayed: u64, dead_lettered: u64) {
        let new = relayed.saturating_sub(self.relay_records.get());
        self.relay_records.inc_by(new);
        self.events_ingested
            .with_label_values(&[source_name(EventSource::Cdc)])
            .inc_by(new);
        self.relay_dead_letters
            .inc_by(dead_lettered.saturating_sub(self.relay_dead_letters.get()));
    }

    /// An endpoint's breaker moved from `from` (`None`: the shard just took
    /// the endpoint up) to `to` (`None`: the shard forgot it).
    pub fn breaker_moved(&self, from: Option<BreakerState>, to: Option<BreakerState>) {
        if from == to {
            return;
        }
        if let Some(s) = from {
            self.circuit_breakers
                .with_label_values(&[state_name(s)])
                .dec();
        }
        if let Some(s) = to {
            self.circuit_breakers
                .with_label_values(&[state_name(s)])
                .inc();
            if from.is_some() {
                self.circuit_transitions
                    .with_label_values(&[state_name(s)])
                    .inc();
            }
        }
    }

    /// An API request finished; `route` is the matched route template.
    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .with_label_values(&[route, method, class])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// Re-reads the retry backlog gauge from the store, adding the `kept`
    /// retries this process keeps in the schedule changelog.
    pub async fn refresh_backlog(&self, store: &dyn Store, kept: usize) {
        match store.schedule_backlog().await {
            Ok(n) => self.retry_backlog.set((n as usize + kept) as i64),
            Err(e) => tracing::debug!(error = %e, "metrics: could not read the retry backlog"),
        }
    }

    /// Re-reads the fan-out consumer's lag per partition from the log.
    pub async fn refresh_lag(&self, log: &dyn EventLog, group: &str) {
        match crate::log::consumer_lag(log, group).await {
            Ok(Some(lag)) => {
                for (partition, behind) in lag.into_iter().enumerate() {
                    self.consumer_lag
                        .with_label_values(&[&partition.to_string()])
                        .set(behind as i64);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "metrics: could not read consumer offsets"),
        }
    }
}

/// Refreshes the state gauges every [`REFRESH_EVERY`] until `cancel`; the
/// backlog, whose count reads the whole schedule index, no more often than
/// ten times the last count took (at most a tenth of the store's time on a
/// large backlog); `kept` counts the retries this process keeps in memory.
pub async fn run_refresher(
    metrics: Arc<Metrics>,
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    group: String,
    kept: impl Fn() -> usize + Send + 'static,
    cancel: CancellationToken,
) {
    let mut backlog_due = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if now >= backlog_due {
            metrics.refresh_backlog(store.as_ref(), kept()).await;
            backlog_due = now + REFRESH_EVERY.max(now.elapsed() * 10);
        }
        metrics.refresh_lag(log.as_ref(), &group).await;
        tokio::select! {
            () = tokio::time::sleep(REFRESH_EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Reads a store's operation counts at scrape time.
struct StoreOps {
    store: Arc<dyn Store>,
    proto: IntCounterVec,
}

impl prometheus::core::Collector for StoreOps {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.proto.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(counts) = self.store.op_counts() {
            for (kind, n) in counts.snapshot() {
                let c = self.proto.with_label_values(&[kind]);
                c.reset();
                c.inc_by(n);
            }
        }
        self.proto.collect()
    }
}

fn source_name(source: EventSource) -> &'static str {
    match source {
        EventSource::Api => "api",
        EventSource::Cdc => "cdc",
        EventSource::Replay => "replay",
        EventSource::Herald => "herald",
    }
}

fn error_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Timeout => "timeout",
        ErrorClass::Connect => "connect",
        ErrorClass::Tls => "tls",
        ErrorClass::HttpStatus => "http_status",
        ErrorClass::CircuitOpen => "circuit_open",
        ErrorClass::SsrfBlocked => "ssrf_blocked",
        ErrorClass::Transport => "transport",
        ErrorClass::Auth => "auth",
    }
}

fn state_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_gauges_count_endpoints_per_state() {
        let m = Metrics::new();
        let g = |s: &str| m.circuit_breakers.with_label_values(&[s]).get();
        m.breaker_moved(None, Some(BreakerState::Closed));
        m.breaker_moved(None, Some(BreakerState::Closed));
        m.breaker_moved(Some(BreakerState::Closed), Some(BreakerState::Open));
        assert_eq!((g("closed"), g("open"), g("half_open")), (1, 1, 0));
        m.breaker_moved(Some(BreakerState::Open), Some(BreakerState::HalfOpen));
        m.breaker_moved(Some(BreakerState::HalfOpen), Some(BreakerState::Closed));
        m.breaker_moved(Some(BreakerState::Closed), None);
        assert_eq!((g("closed"), g("open"), g("half_open")), (1, 0, 0));
        let t = |s: &str| m.circuit_transitions.with_label_values(&[s]).get();
        assert_eq!((t("open"), t("half_open"), t("closed")), (1, 1, 1));
    }

    #[test]
    fn exposition_names_carry_units_and_known_labels_start_at_zero() {
        let m = Metrics::new();
        m.http_request("/api/v1/integrations/events", "POST", 202, Duration::ZERO);
        let text = m.render();
        assert!(text.contains("herald_events_ingested_total{source=\"cdc\"} 0"));
        assert!(text.contains("herald_relay_dead_letters_total 0"));
        assert!(text.contains("herald_circuit_breakers{state=\"open\"} 0"));
        assert!(text.contains(
            "herald_http_requests_total{method=\"POST\",route=\"/api/v1/integrations/events\",status=\"2xx\"} 1"
        ));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("herald_"), "{name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            if kind == "histogram" {
                assert!(name.ends_with("_seconds"), "{name}");
            }
        }
    }
}
