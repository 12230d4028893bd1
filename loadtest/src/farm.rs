//! The receiver farm: N HTTP endpoints on loopback. Subscription `i` is
//! served at `http://<endpoint i mod N>/s/i`, the raw-client baseline at
//! `/raw`. Every request's signature is verified; a configurable share of
//! requests is answered 503 (after an optional delay) to exercise retries.
//! Successful deliveries are counted per (subscription, event id) so the
//! accounting can tell delivered, duplicated and lost pairs apart, and the
//! emit-to-delivery latency (from the envelope's `occurred_at`, set by the
//! emitter at send time) goes into per-endpoint HDR histograms.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use hdrhistogram::Histogram;
use herald_engine::signing::SigningSecret;
use parking_lot::Mutex;
use rand::Rng;
use time::OffsetDateTime;

use crate::{
    faults::Kind,
    receiver::{verify, Verifier},
};

/// What one subscription's receiver saw: deliveries per event id.
pub type SubTally = Mutex<HashMap<Box<str>, u32>>;

/// Shared state of all endpoints.
pub struct FarmState {
    /// How each subscription's signatures are checked, known once it is created.
    pub secrets: Vec<OnceLock<Verifier>>,
    /// Successful deliveries per subscription.
    pub tallies: Vec<SubTally>,
    /// Secret of the raw-client baseline.
    pub raw_secret: SigningSecret,
    /// Raw-client requests received and verified.
    pub raw_received: AtomicU64,
    raw_tally: SubTally,
    /// Requests whose signature did not verify.
    pub bad_signatures: AtomicU64,
    /// Requests answered 503 on purpose.
    pub injected_failures: AtomicU64,
    /// First deliveries of a (subscription, event) pair, for progress.
    pub first_deliveries: AtomicU64,
    /// All successful deliveries, duplicates included.
    pub deliveries: AtomicU64,
    /// When the last successful delivery arrived, unix ms (0: none yet).
    pub last_delivery_ms: AtomicU64,
    /// Emit-to-delivery latency in microseconds, one histogram per endpoint.
    pub latency: Vec<Mutex<Histogram<u64>>>,
    /// First deliveries seen by an external receiver: event id and unix ms
    /// ([`crate::external::latency`] joins them with the send times).
    pub first_arrivals: Mutex<Vec<(Box<str>, u64)>>,
    latency_delay: Duration,
    failure_rate: f64,
    /// An injected receiver fault: 0 none, 1 outage (503), 2 hang.
    fault: AtomicU8,
}

impl FarmState {
    fn new(
        endpoints: usize,
        subscriptions: usize,
        latency_delay: Duration,
        failure_rate: f64,
    ) -> Self {
        Self {
            secrets: (0..subscriptions).map(|_| OnceLock::new()).collect(),
            tallies: (0..subscriptions).map(|_| Mutex::default()).collect(),
            raw_secret: SigningSecret::generate(),
            raw_received: AtomicU64::new(0),
            raw_tally: Mutex::default(),
            bad_signatures: AtomicU64::new(0),
            injected_failures: AtomicU64::new(0),
            first_deliveries: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            last_delivery_ms: AtomicU64::new(0),
            latency: (0..endpoints).map(|_| Mutex::new(histogram())).collect(),
            first_arrivals: Mutex::default(),
            latency_delay,
            failure_rate,
            fault: AtomicU8::new(0),
        }
    }

    /// The tallies of an external receiver's `subscriptions`.
    #[cfg(test)]
    pub fn for_external(subscriptions: usize) -> Self {
        Self::new(1, subscriptions, Duration::ZERO, 0.0)
    }

    /// Starts (`Some`) or ends (`None`) a receiver fault.
    pub fn set_fault(&self, fault: Option<Kind>) {
        let v = match fault {
            Some(Kind::Outage) => 1,
            Some(Kind::Hang) => 2,
            _ => 0,
        };
        self.fault.store(v, Ordering::SeqCst);
    }
}

/// The running farm.
pub struct Farm {
    /// Endpoint addresses.
    pub endpoints: Vec<SocketAddr>,
    /// Counters and tallies.
    pub state: Arc<FarmState>,
    /// An independent receiver's base URL that takes the deliveries and the
    /// raw baseline instead of the endpoints (see [`crate::external`]).
    pub external: Option<String>,
}

/// A new histogram for microseconds from 1 µs to 1 h.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Farm {
    /// Starts `endpoints` servers for `subscriptions` subscriptions.
    pub async fn start(
        endpoints: usize,
        subscriptions: usize,
        latency_delay: Duration,
        failure_rate: f64,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(FarmState::new(
            endpoints,
            subscriptions,
            latency_delay,
            failure_rate,
        ));
        let mut addrs = Vec::with_capacity(endpoints);
        for n in 0..endpoints {
            let app = Router::new()
                .route("/s/{sub}", post(delivery))
                .route("/raw", post(raw))
                .with_state((state.clone(), n));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Ok(Self {
            endpoints: addrs,
            state,
            external: None,
        })
    }

    /// The URL subscription `i` is created with.
    pub fn url(&self, i: usize) -> String {
        if let Some(base) = &self.external {
            return format!("{base}/s/{i}");
        }
        format!("http://{}/s/{i}", self.endpoints[i % self.endpoints.len()])
    }

    /// The raw-baseline URL of endpoint `n`.
    pub fn raw_url(&self, n: usize) -> String {
        if let Some(base) = &self.external {
            return format!("{base}/raw");
        }
        format!("http://{}/raw", self.endpoints[n % self.endpoints.len()])
    }

    /// All endpoint histograms merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in &self.state.latency {
            let _ = all.add(&*h.lock());
        }
        all
    }
}

type Shared = (Arc<FarmState>, usize);

async fn behave(s: &FarmState) -> Option<StatusCode> {
    match s.fault.load(Ordering::SeqCst) {
        1 => {
            s.injected_failures.fetch_add(1, Ordering::Relaxed);
            return Some(StatusCode::SERVICE_UNAVAILABLE);
        }
        // Never answer: Herald's request timeout ends the attempt.
        2 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Some(StatusCode::SERVICE_UNAVAILABLE);
        }
        _ => {}
    }
    if !s.latency_delay.is_zero() {
        tokio::time::sleep(s.latency_delay).await;
    }
    if s.failure_rate > 0.0 && rand::thread_rng().gen_bool(s.failure_rate.min(1.0)) {
        s.injected_failures.fetch_add(1, Ordering::Relaxed);
        return Some(StatusCode::SERVICE_UNAVAILABLE);
    }
    None
}

async fn delivery(
    State((s, endpoint)): State<Shared>,
    Path(sub): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(verifier) = s.secrets.get(sub).and_then(OnceLock::get) else {
        return StatusCode::NOT_FOUND;
    };
    if !verifier.verify(&headers, &body) {
        s.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    if let Some(status) = behave(&s).await {
        return status;
    }
    let now = OffsetDateTime::now_utc();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let first = {
        let mut tally = s.tallies[sub].lock();
        let n = tally.entry(id.into()).or_insert(0);
        *n += 1;
        *n == 1
    };
    s.deliveries.fetch_add(1, Ordering::Relaxed);
    let at_ms = (now.unix_timestamp_nanos() / 1_000_000) as u64;
    s.last_delivery_ms.fetch_max(at_ms, Ordering::Relaxed);
    if first {
        s.first_deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = occurred_at(&body) {
            let micros = Duration::try_from(now - at).map_or(1, |d| d.as_micros() as u64);
            let _ = s.latency[endpoint].lock().record(micros.max(1));
        }
    }
    StatusCode::NO_CONTENT
}

async fn raw(State((s, _)): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !verify(&s.raw_secret, &headers, &body) {
        s.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    if let Some(status) = behave(&s).await {
        return status;
    }
    // The same per-request work as a delivery: a map insert and a timestamp parse.
    let _ = occurred_at(&body);
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    *s.raw_tally.lock().entry(id.into()).or_insert(0) += 1;
    s.raw_received.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// The envelope's `occurred_at`, found without parsing the whole body.
fn occurred_at(body: &[u8]) -> Option<OffsetDateTime> {
    const KEY: &[u8] = b"\"occurred_at\":\"";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&body[start..start + len]).ok()?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_occurred_at_in_an_envelope() {
        let body = br#"{"id":"evt_1","occurred_at":"2026-01-02T03:04:05.123456Z","data":{}}"#;
        let at = occurred_at(body).unwrap();
        assert_eq!(at.nanosecond(), 123_456_000);
        assert!(occurred_at(b"{}").is_none());
    }
}
