//! The emitter: single or batched emits, open-loop at a target rate or
//! flat out with a fixed number of concurrent clients.
//!
//! Open loop means requests leave on a fixed schedule whether or not earlier
//! ones were answered (so a slow server cannot slow the offered load down and
//! hide its own latency); sends that leave more than 10 ms behind schedule
//! are counted. Event `n` has type `loadtest.g{g}.tick` with `g` its group
//! ([`group_of`]: `n mod groups` for one tenant), so it matches exactly
//! the subscriptions of group `g`, and carries
//! `occurred_at` = the moment it was sent, which the farm turns into the
//! emit-to-delivery latency.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::farm::histogram;

/// What to offer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Events per second (open loop); `None` = flat out.
    pub rate: Option<f64>,
    /// Stop emitting after this long.
    pub duration: Option<Duration>,
    /// Stop after this many events.
    pub events: Option<u64>,
    /// Events per request (1 = the single emit endpoint).
    pub batch: usize,
    /// Concurrent clients (flat out) or most requests in flight (open loop).
    pub concurrency: usize,
    /// Approximate JSON size of each payload.
    pub payload_bytes: usize,
    /// Subscription groups (see [`group_of`]).
    pub groups: usize,
    /// Tenants; group `g` belongs to tenant `g mod tenants`.
    pub tenants: usize,
    /// Keep each acknowledged event's send time ([`Emitted::sent_ms`]),
    /// for a receiver that cannot read it from the envelope.
    pub send_times: bool,
}

/// The tenant whose key sends the request whose first event is `first`
/// (requests take turns).
fn tenant_of(plan: &Plan, first: u64) -> usize {
    ((first / plan.batch as u64) % plan.tenants as u64) as usize
}

/// The subscription group of event `seq`: one of its request's tenant's
/// groups (with one tenant, `seq mod groups`).
pub fn group_of(plan: &Plan, seq: u64, first: u64) -> usize {
    let (tenants, per_tenant) = (plan.tenants as u64, (plan.groups / plan.tenants) as u64);
    (tenant_of(plan, first) as u64 + tenants * (seq % per_tenant)) as usize
}

/// What was emitted and acknowledged.
pub struct Emitted {
    /// Acknowledged event ids per group.
    pub acked: Vec<Mutex<Vec<Box<str>>>>,
    /// Events acknowledged (202).
    pub acked_count: AtomicU64,
    /// Events whose request failed (not 202, or no answer).
    pub failed_events: AtomicU64,
    /// Events refused with 503 and `Retry-After` (Herald's backpressure),
    /// sent again after the wait it asked for; counted once per refusal.
    pub retried_events: AtomicU64,
    /// First few failure reasons, for the report.
    pub failures: Mutex<Vec<String>>,
    /// Open-loop sends more than 10 ms behind schedule.
    pub behind_schedule: AtomicU64,
    /// Request round trips (each exchange, a refused one too), microseconds.
    pub request_latency: Mutex<Histogram<u64>>,
    /// When each acknowledged event was sent (its `occurred_at`), unix ms;
    /// kept only when [`Plan::send_times`] asks.
    pub sent_ms: Mutex<HashMap<Box<str>, u64>>,
    next: AtomicU64,
    stop: AtomicBool,
}

impl Emitted {
    pub(crate) fn new(groups: usize) -> Self {
        Self {
            acked: (0..groups).map(|_| Mutex::default()).collect(),
            acked_count: AtomicU64::new(0),
            failed_events: AtomicU64::new(0),
            retried_events: AtomicU64::new(0),
            failures: Mutex::default(),
            behind_schedule: AtomicU64::new(0),
            request_latency: Mutex::new(histogram()),
            sent_ms: Mutex::default(),
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Asks the emitter to stop (Ctrl-C).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One emitting client: base URL and tenant keys.
#[derive(Clone)]
pub struct Client {
    /// HTTP client.
    pub http: reqwest::Client,
    /// Herald base URL.
    pub base: String,
    /// Tenants' API keys (index: tenant).
    pub keys: Vec<String>,
}

/// Starts emitting; the returned handle finishes when the plan is done.
pub fn start(client: Client, plan: Plan) -> (Arc<Emitted>, tokio::task::JoinHandle<()>) {
    let out = Arc::new(Emitted::new(plan.groups));
    let pad = "x".repeat(plan.payload_bytes.saturating_sub(40));
    let state = Arc::new((client, plan, pad, out.clone()));
    let handle = tokio::spawn(async move {
        let started = Instant::now();
        let (_, plan, _, _) = &*state;
        match plan.rate {
            None => {
                let workers: Vec<_> = (0..plan.concurrency.max(1))
                    .map(|_| {
                        let state = state.clone();
                        tokio::spawn(async move {
                            let (client, plan, pad, out) = &*state;
                            while let Some(seqs) = take(plan, out, started) {
                                send(client, plan, pad, out, seqs).await;
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    let _ = w.await;
                }
            }
            Some(rate) => {
                let period = Duration::from_secs_f64(plan.batch as f64 / rate.max(0.001));
                let permits = Arc::new(Semaphore::new(plan.concurrency.max(1)));
                let mut k: u32 = 0;
                let mut inflight = Vec::new();
                loop {
                    let due = started + period * k;
                    k += 1;
                    tokio::time::sleep_until(due.into()).await;
                    let (_, plan, _, out) = &*state;
                    let Some(seqs) = take(plan, out, started) else {
                        break;
                    };
                    if due.elapsed() > Duration::from_millis(10) {
                        out.behind_schedule.fetch_add(1, Ordering::Relaxed);
                    }
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let state = state.clone();
                    inflight.push(tokio::spawn(async move {
                        let (client, plan, pad, out) = &*state;
                        send(client, plan, pad, out, seqs).await;
                        drop(permit);
                    }));
                    inflight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                }
                for t in inflight {
                    let _ = t.await;
                }
            }
        }
    });
    (out, handle)
}

/// Reserves the next request's sequence numbers, or `None` when done.
fn take(plan: &Plan, out: &Emitted, started: Instant) -> Option<std::ops::Range<u64>> {
    if out.stop.load(Ordering::Relaxed) || plan.duration.is_some_and(|d| started.elapsed() >= d) {
        return None;
    }
    let n = plan.batch as u64;
    let first = out.next.fetch_add(n, Ordering::Relaxed);
    let end = match plan.events {
        Some(total) if first >= total => return None,
        Some(total) => (first + n).min(total),
        None => first + n,
    };
    Some(first..end)
}

fn item(plan: &Plan, pad: &str, seq: u64, first: u64, now: &str) -> Value {
    json!({
        "event_type": format!("loadtest.g{}.tick", group_of(plan, seq, first)),
        "occurred_at": now,
        "payload": { "seq": seq, "pad": pad },
    })
}

async fn send(client: &Client, plan: &Plan, pad: &str, out: &Emitted, seqs: std::ops::Range<u64>) {
    let sent = OffsetDateTime::now_utc();
    let now = sent
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let count = seqs.end - seqs.start;
    let (path, body) = if plan.batch == 1 {
        (
            "/api/v1/integrations/events",
            item(plan, pad, seqs.start, seqs.start, &now),
        )
    } else {
        let events: Vec<Value> = seqs
            .clone()
            .map(|s| item(plan, pad, s, seqs.start, &now))
            .collect();
        (
            "/api/v1/integrations/events/batch",
            json!({ "events": events }),
        )
    };
    let answer = loop {
        let t0 = Instant::now();
        let result = client
            .http
            .post(format!("{}{path}", client.base))
            .bearer_auth(&client.keys[tenant_of(plan, seqs.start)])
            .json(&body)
            .send()
            .await;
        // Each exchange's round trip: a refusal and the request sent again
        // count apart, the wait between them in neither.
        let micros = t0.elapsed().as_micros() as u64;
        let _ = out.request_latency.lock().record(micros.max(1));
        match result {
            Ok(r) if r.status() == 202 => break r.json::<Value>().await.map_err(|e| e.to_string()),
            // Backpressure: nothing was accepted; a client sends it again
            // after the wait asked for, with the same `occurred_at` (the
            // emit→delivery latency includes the wait).
            Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
                let secs = r.headers()["retry-after"]
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                out.retried_events.fetch_add(count, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            Ok(r) => {
                break Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ))
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let ids: Vec<String> = match &answer {
        Ok(v) if plan.batch == 1 => v["id"].as_str().map(str::to_string).into_iter().collect(),
        Ok(v) => v["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if ids.len() as u64 != count {
        out.failed_events.fetch_add(count, Ordering::Relaxed);
        let mut f = out.failures.lock();
        if f.len() < 5 {
            f.push(answer.err().unwrap_or_else(|| "answer without ids".into()));
        }
        return;
    }
    if plan.send_times {
        let at = (sent.unix_timestamp_nanos() / 1_000_000) as u64;
        let mut sent_ms = out.sent_ms.lock();
        for id in &ids {
            sent_ms.insert(id.as_str().into(), at);
        }
    }
    let first = seqs.start;
    for (seq, id) in seqs.zip(ids) {
        out.acked[group_of(plan, seq, first)]
            .lock()
            .push(id.into_boxed_str());
    }
    out.acked_count.fetch_add(count, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(groups: usize, tenants: usize, batch: usize) -> Plan {
        Plan {
            rate: None,
            duration: None,
            events: None,
            batch,
            concurrency: 1,
            payload_bytes: 0,
            groups,
            tenants,
            send_times: false,
        }
    }

    #[test]
    fn one_tenant_keeps_events_in_group_n_mod_groups() {
        let p = plan(4, 1, 10);
        for seq in 0..100 {
            assert_eq!(group_of(&p, seq, seq - seq % 10), (seq % 4) as usize);
        }
    }

    #[test]
    fn a_request_carries_its_tenants_groups_and_every_group_gets_events() {
        let p = plan(24, 12, 50);
        let mut seen = std::collections::HashSet::new();
        for first in (0..2_400).step_by(50) {
            let tenant = tenant_of(&p, first);
            for seq in first..first + 50 {
                let g = group_of(&p, seq, first);
                assert!(g < 24);
                assert_eq!(g % 12, tenant, "group {g} of request {first}");
                seen.insert(g);
            }
        }
        assert_eq!(seen.len(), 24);
    }
}
