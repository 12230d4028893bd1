//! A load run against a running Herald: tenant, subscriptions on local
//! counting receivers, events emitted with bounded concurrency, then full
//! accounting of every (event, subscription) pair.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use herald_engine::signing::SigningSecret;
use serde_json::{json, Value};

use crate::receiver::{counting, Tally};

/// `run` settings.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of a running Herald (loopback only; start it with --allow-target 127.0.0.0/8).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The server's admin token.
    #[arg(long, env = "HERALD_ADMIN_TOKEN")]
    admin_token: String,
    /// Events to emit.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Concurrent emitting clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Receivers, each with its own subscription (every event goes to each).
    #[arg(long, default_value_t = 2)]
    receivers: usize,
    /// How long to wait for deliveries after the last emit.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

/// Runs the load and prints the report.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let tenant = format!("loadtest-{}", std::process::id());
    let r = http
        .post(format!("{}/api/v1/admin/tenants", args.target))
        .bearer_auth(&args.admin_token)
        .json(&json!({ "id": tenant }))
        .send()
        .await
        .with_context(|| format!("is Herald running at {}?", args.target))?;
    if r.status() != 201 {
        bail!(
            "creating tenant {tenant}: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let key = r.json::<Value>().await?["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let mut tallies: Vec<Arc<Mutex<Tally>>> = Vec::new();
    for _ in 0..args.receivers {
        let (url, secret_slot, tally) = counting().await?;
        let r = http
            .post(format!("{}/api/v1/portal/webhooks/subscribe", args.target))
            .bearer_auth(&key)
            .json(&json!({ "url": url, "event_types": ["loadtest.*"] }))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("subscribing {url}: {} {}", r.status(), r.text().await?);
        }
        let secret = r.json::<Value>().await?["secret"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *secret_slot.lock().unwrap() = Some(SigningSecret::parse(&secret)?);
        tallies.push(tally);
    }

    println!(
        "emitting {} events with {} clients to {} subscriptions…",
        args.events, args.concurrency, args.receivers
    );
    let started = Instant::now();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let failed = Arc::new(Mutex::new(0u64));
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let (http, target, key, acked, failed) = (
            http.clone(),
            args.target.clone(),
            key.clone(),
            acked.clone(),
            failed.clone(),
        );
        let n = args.events;
        let step = args.concurrency;
        tasks.push(tokio::spawn(async move {
            for i in (worker..n).step_by(step) {
                let r = http
                    .post(format!("{target}/api/v1/integrations/events"))
                    .bearer_auth(&key)
                    .json(&json!({ "event_type": "loadtest.tick", "payload": { "i": i } }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        if let Ok(v) = r.json::<Value>().await {
                            acked
                                .lock()
                                .unwrap()
                                .insert(v["id"].as_str().unwrap_or_default().to_string());
                        }
                    }
                    _ => *failed.lock().unwrap() += 1,
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let emit_elapsed = started.elapsed();
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    let expected = acked.len() * args.receivers;
    let deadline = Instant::now() + args.drain_timeout;
    let delivered_pairs = |tallies: &[Arc<Mutex<Tally>>]| -> usize {
        tallies
            .iter()
            .map(|t| {
                t.lock()
                    .unwrap()
                    .per_event
                    .keys()
                    .filter(|id| acked.contains(*id))
                    .count()
            })
            .sum()
    };
    while delivered_pairs(&tallies) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total_elapsed = started.elapsed();
    let delivered = delivered_pairs(&tallies);
    let mut duplicates = 0u64;
    let mut bad_signatures = 0u64;
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for t in &tallies {
        let t = t.lock().unwrap();
        duplicates += t.per_event.values().map(|n| u64::from(n - 1)).sum::<u64>();
        bad_signatures += t.bad_signatures;
        if let Some(h) = &t.latency {
            latency.add(h)?;
        }
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!("\nHerald load run against {}", args.target);
    println!(
        "  emits acknowledged : {} ({} failed)",
        acked.len(),
        failed.lock().unwrap()
    );
    println!(
        "  emit rate          : {:.0} events/s",
        acked.len() as f64 / emit_elapsed.as_secs_f64()
    );
    println!("  deliveries         : {delivered} of {expected} expected, {} lost, {duplicates} duplicates", expected - delivered);
    println!(
        "  delivery rate      : {:.0} deliveries/s (emit start to last delivery)",
        delivered as f64 / total_elapsed.as_secs_f64()
    );
    println!(
        "  emit→delivery ms   : p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1000.0
    );
    println!("  bad signatures     : {bad_signatures}");
    if delivered < expected || bad_signatures > 0 {
        bail!(
            "{} deliveries missing, {bad_signatures} bad signatures",
            expected - delivered
        );
    }
    Ok(())
}
