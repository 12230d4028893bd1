//! The physical limit: how fast this process's own HTTP client can POST
//! signed, envelope-sized requests to the same receivers, without Herald in
//! between. Herald's delivery rate is reported as a share of it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use herald_engine::signing::signature_header;
use serde::Serialize;
use time::OffsetDateTime;

use crate::farm::Farm;

/// The baseline's result.
#[derive(Debug, Clone, Serialize)]
pub struct RawResult {
    /// Requests answered 2xx.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests per second.
    pub per_second: f64,
    /// Concurrent clients.
    pub concurrency: usize,
}

/// POSTs flat out with `concurrency` clients for `duration`, spread over
/// the farm's endpoints, each request signed like a delivery.
pub async fn measure(
    farm: &Farm,
    http: &reqwest::Client,
    payload_bytes: usize,
    concurrency: usize,
    duration: Duration,
) -> RawResult {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(payload_bytes.saturating_sub(40));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let (ok, errors, seq, http) = (ok.clone(), errors.clone(), seq.clone(), http.clone());
            let url = farm.raw_url(w);
            let secret = farm.state.raw_secret.clone();
            let pad = pad.clone();
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let id = format!("raw_{n}");
                    let now = OffsetDateTime::now_utc();
                    let body = serde_json::to_vec(&serde_json::json!({
                        "id": id, "type": "loadtest.raw", "schema_version": 1,
                        "tenant_id": "raw", "dedupe_key": null,
                        "occurred_at": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                        "data": { "seq": n, "pad": pad },
                    }))
                    .unwrap_or_default();
                    let ts = now.unix_timestamp();
                    let sig = signature_header(std::iter::once(&secret), &id, ts, &body);
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("webhook-id", &id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", sig)
                        .body(body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = ok.load(Ordering::Relaxed);
    RawResult {
        requests,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: requests as f64 / seconds,
        concurrency,
    }
}
