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

/// The same baseline measured by `wrk` (an independent load generator):
/// `connections` connections on two threads POST an envelope-sized body to
/// `url` for `duration`. `None` with the reason when wrk is not installed
/// or its output cannot be read.
pub fn measure_wrk(
    url: &str,
    payload_bytes: usize,
    connections: usize,
    duration: Duration,
) -> Result<RawResult, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("post.lua");
    let body = serde_json::json!({
        "id": "raw_wrk", "type": "loadtest.raw", "schema_version": 1, "tenant_id": "raw",
        "occurred_at": "2026-01-01T00:00:00Z",
        "data": { "pad": "x".repeat(payload_bytes.saturating_sub(40)) },
    })
    .to_string();
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = {}\n",
        serde_json::Value::String(body)
    );
    std::fs::write(&script, lua).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("wrk")
        .args(["-t2", &format!("-c{}", connections.max(2))])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| format!("wrk: {e} (install it: apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text, connections).ok_or_else(|| format!("unreadable wrk output: {text}"))
}

/// Reads `N requests in S s` and the non-2xx count from wrk's summary.
fn parse_wrk(text: &str, concurrency: usize) -> Option<RawResult> {
    let line = text.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_whitespace();
    let total: u64 = words.next()?.parse().ok()?;
    let seconds_word = line
        .split(" requests in ")
        .nth(1)?
        .split(',')
        .next()?
        .trim();
    let seconds = humantime::parse_duration(seconds_word)
        .ok()?
        .as_secs_f64()
        .max(1e-9);
    let errors: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let requests = total.saturating_sub(errors);
    Some(RawResult {
        requests,
        errors,
        seconds,
        per_second: requests as f64 / seconds,
        concurrency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_summaries() {
        let out = "Running 5s test @ http://127.0.0.1:8088/raw\n  2 threads and 64 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n  \
                   500000 requests in 5.00s, 80.00MB read\n  Non-2xx or 3xx responses: 10\n\
                   Requests/sec: 100000.00\n";
        let r = parse_wrk(out, 64).unwrap();
        assert_eq!(r.requests, 499_990);
        assert_eq!(r.errors, 10);
        assert!((r.per_second - 99_998.0).abs() < 1.0);
        assert!(parse_wrk("nothing", 64).is_none());
    }
}
