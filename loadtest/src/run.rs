//! A load run: start (or reach) Herald, start the receiver farm, create a
//! tenant and its subscriptions through the API, measure the raw-client
//! baseline, emit, wait for every delivery, account for every pair, report.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use herald_engine::{ed25519::PublicKey, signing::SigningSecret};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::{
    accounting::{account, group_subscriptions},
    emitter::{self, Plan},
    farm::Farm,
    faults::{self, Fault},
    raw,
    receiver::Verifier,
    report::{Machine, Percentiles, Report},
    server::{Sampler, Server, Spawn},
};

/// `run` settings.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of a running Herald (started with --allow-target 127.0.0.0/8);
    /// without it the run starts its own embedded `herald serve`.
    #[arg(long)]
    target: Option<String>,
    /// The running server's admin token (with --target).
    #[arg(long, env = "HERALD_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Pid of the running server, to sample its CPU and RSS (with --target).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The `herald` binary to start (default: next to this executable).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// `--retry-schedule` of the started server.
    #[arg(long, default_value = "1s,1s,2s,2s,5s,5s,10s,10s")]
    retry_schedule: String,
    /// Extra argument for the started `herald serve` (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// An independent receiver's base URL (nginx, say) that takes every
    /// delivery instead of the built-in farm: subscription `i` is created at
    /// `<URL>/s/<i>`, the raw baseline goes to `<URL>/raw`. Needs
    /// --receiver-log. See `scripts/nginx-receiver`.
    #[arg(long, requires = "receiver_log")]
    external_receiver: Option<String>,
    /// The independent receiver's access log, one line per request:
    /// `$msec $status $uri $http_webhook_id`; deliveries are counted from it,
    /// and emit-to-delivery latency is its time less the event's send time.
    #[arg(long, requires = "external_receiver")]
    receiver_log: Option<PathBuf>,
    /// Also measure the raw baseline with `wrk` (on by default with
    /// --external-receiver; needs wrk on the PATH).
    #[arg(long)]
    raw_wrk: bool,
    /// Receiver endpoints (ports) in the farm.
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    /// Subscriptions, spread over the endpoints.
    #[arg(long, default_value_t = 4)]
    subscriptions: usize,
    /// Subscriptions each event goes to (divides --subscriptions).
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Tenants the subscription groups are spread over (group g belongs to
    /// tenant g mod N; each request carries one tenant's events), so that
    /// events spread over the event log's partitions (keyed by tenant).
    /// Divides --subscriptions / --fanout.
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Events to emit (default 10000 unless --duration is given).
    #[arg(long)]
    events: Option<u64>,
    /// Emit for this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Open-loop target, events per second (default: flat out).
    #[arg(long)]
    rate: Option<f64>,
    /// A payload filter (CEL) every subscription carries; it must match
    /// every event the run emits (`data.seq` and `data.pad`, type
    /// `loadtest.g<N>.tick`), or the run reports the events it drops as lost.
    #[arg(long)]
    payload_filter: Option<String>,
    /// The signatures every subscription's deliveries carry: `hmac` (`v1`),
    /// `ed25519` (`v1a`; the farm then verifies with the public key, which
    /// costs it about twice Herald's signing) or `both` (the farm checks `v1`).
    #[arg(long, default_value = "hmac", value_parser = ["hmac", "ed25519", "both"])]
    signature: String,
    /// Events per request; above 1 uses the batch endpoint.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent emit clients (flat out) or most requests in flight (open loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Payload size in bytes of JSON.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Receiver delay before answering.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Share of requests the receivers answer 503 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Stop waiting when no delivery arrived for this long after the emit
    /// (longer than the server's breaker open time, 30 s by default).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Raw-client baseline duration (0s to skip).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    raw_duration: Duration,
    /// Raw-client baseline concurrency.
    #[arg(long, default_value_t = 64)]
    raw_concurrency: usize,
    /// Report files: PATH.json and PATH.md.
    #[arg(long, default_value = "loadtest-report")]
    report: PathBuf,
    /// Scenario label in the report.
    #[arg(long, default_value = "load run")]
    label: String,
    /// Exit 0 even when pairs are lost (e.g. when measuring a dead endpoint's backlog).
    #[arg(long)]
    allow_loss: bool,
    /// A fault to inject, from the start of the emit (repeatable):
    /// `kill9@5s` and `sigterm@5s` (the server this run started, which is
    /// then started again on the same data dir), `outage@5s+30s` (receivers
    /// answer 503), `hang@5s+20s` (receivers never answer).
    #[arg(long = "fault")]
    faults: Vec<Fault>,
}

/// Runs the load, prints and writes the report; fails on a lost pair or a
/// bad signature (unless --allow-loss).
pub async fn main(args: Args) -> anyhow::Result<()> {
    if args.fanout == 0 || args.subscriptions % args.fanout != 0 {
        bail!("--fanout must divide --subscriptions");
    }
    if !(0.0..=1.0).contains(&args.failure_rate) {
        bail!("--failure-rate is a share between 0 and 1");
    }
    if args.endpoints == 0 || args.batch == 0 || args.batch > herald_engine::MAX_BATCH_EVENTS {
        bail!(
            "--endpoints must be at least 1 and --batch 1 to {}",
            herald_engine::MAX_BATCH_EVENTS
        );
    }
    let groups = args.subscriptions / args.fanout;
    if args.tenants == 0 || groups % args.tenants != 0 {
        bail!(
            "--tenants must divide the subscription groups (--subscriptions / --fanout = {groups})"
        );
    }
    if args.target.is_some()
        && args
            .faults
            .iter()
            .any(|f| matches!(f.kind, faults::Kind::Kill9 | faults::Kind::Sigterm))
    {
        bail!("kill9 and sigterm faults need a server this run starts (drop --target)");
    }
    let server = match &args.target {
        Some(t) => Server::running(
            t.clone(),
            args.admin_token
                .clone()
                .context("--target needs --admin-token")?,
            args.server_pid,
        ),
        None => {
            Server::spawn(Spawn {
                bin: args.herald_bin.clone(),
                retry_schedule: args.retry_schedule.clone(),
                extra: args.server_args.clone(),
            })
            .await?
        }
    };
    let server = Arc::new(tokio::sync::Mutex::new(server));
    let result = drive(&args, server.clone(), groups).await;
    server.lock().await.stop().await;
    let report = result?;
    println!("\n{}", report.markdown());
    report.write(&args.report)?;
    println!(
        "report written to {} and {}",
        args.report.with_extension("json").display(),
        args.report.with_extension("md").display()
    );
    let a = &report.accounts;
    let bad_faults = report.faults.iter().filter(|f| !f.ok).count();
    if (a.lost > 0 && !args.allow_loss) || report.bad_signatures > 0 || bad_faults > 0 {
        bail!(
            "{} pairs lost, {} bad signatures, {bad_faults} faults not handled as required",
            a.lost,
            report.bad_signatures
        );
    }
    Ok(())
}

async fn drive(
    args: &Args,
    server_handle: Arc<tokio::sync::Mutex<Server>>,
    groups: usize,
) -> anyhow::Result<Report> {
    // The address and token stay the same across fault restarts.
    let server = &{
        let s = server_handle.lock().await;
        Server::running(s.base.clone(), s.admin_token.clone(), s.pid)
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let mut farm = Farm::start(
        args.endpoints,
        args.subscriptions,
        args.latency,
        args.failure_rate,
    )
    .await?;
    farm.external = args
        .external_receiver
        .as_ref()
        .map(|u| u.trim_end_matches('/').to_string());
    let follower = match &args.receiver_log {
        Some(path) => Some(crate::external::LogFollower::open(path)?.spawn(farm.state.clone())),
        None => None,
    };
    let keys = setup(&http, server, &farm, args, groups).await?;

    let raw = if args.raw_duration.is_zero() {
        None
    } else {
        println!(
            "raw baseline: {} clients POSTing to {} endpoints for {:?}…",
            args.raw_concurrency, args.endpoints, args.raw_duration
        );
        let r = raw::measure(
            &farm,
            &http,
            args.payload_bytes,
            args.raw_concurrency,
            args.raw_duration,
        )
        .await;
        println!("raw baseline: {:.0} requests/s", r.per_second);
        Some(r)
    };
    let raw_wrk = if args.raw_duration.is_zero() || !(args.raw_wrk || farm.external.is_some()) {
        None
    } else {
        let url = farm.raw_url(0);
        println!(
            "raw baseline: wrk POSTing to {url} for {:?}…",
            args.raw_duration
        );
        match raw::measure_wrk(
            &url,
            args.payload_bytes,
            args.raw_concurrency,
            args.raw_duration,
        ) {
            Ok(r) => {
                println!("raw baseline (wrk): {:.0} requests/s", r.per_second);
                Some(r)
            }
            Err(e) => {
                println!("raw baseline (wrk) not measured: {e}");
                None
            }
        }
    };

    let plan = Plan {
        rate: args.rate,
        duration: args.duration,
        events: args.events.or(if args.duration.is_none() {
            Some(10_000)
        } else {
            None
        }),
        batch: args.batch,
        concurrency: args.concurrency,
        payload_bytes: args.payload_bytes,
        groups,
        tenants: args.tenants,
        send_times: args.receiver_log.is_some(),
    };
    let sampler = server
        .pid
        .map(|pid| Sampler::start(pid, Duration::from_millis(500)));
    let client = emitter::Client {
        http: http.clone(),
        base: server.base.clone(),
        keys,
    };
    let fanout = args.fanout as u64;
    let bar = ProgressBar::new(plan.events.map_or(0, |n| n * fanout));
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} pairs {per_sec} {msg}",
        )?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let started_unix_ms =
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
    let (emitted, emitting) = emitter::start(client, plan.clone());
    let injecting = tokio::spawn(faults::inject(
        args.faults.clone(),
        server_handle.clone(),
        farm.state.clone(),
    ));
    let state = farm.state.clone();
    let mut per_second: Vec<u64> = Vec::new();
    let mut last_second = (Instant::now(), 0u64);
    let mut emit_seconds = None;
    let mut last_change = (Instant::now(), 0u64);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let done_at = loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = &mut ctrl_c => { emitted.stop(); }
        }
        let now = Instant::now();
        let delivered = state.deliveries.load(Ordering::Relaxed);
        if now - last_second.0 >= Duration::from_secs(1) {
            per_second.push(delivered - last_second.1);
            last_second = (now, delivered);
        }
        if delivered != last_change.1 {
            last_change = (now, delivered);
        }
        let acked = emitted.acked_count.load(Ordering::Relaxed);
        let first = state.first_deliveries.load(Ordering::Relaxed);
        if plan.events.is_none() || emit_seconds.is_some() {
            bar.set_length((acked * fanout).max(first));
        }
        bar.set_position(first);
        let proc = sampler
            .as_ref()
            .and_then(Sampler::peek)
            .map_or(String::new(), |s| {
                format!("· cpu {:.2} · rss {:.0} MiB", s.cpu_cores, s.rss_mib)
            });
        bar.set_message(format!("· {acked} events acked {proc}"));
        if emit_seconds.is_none() && emitting.is_finished() {
            emit_seconds = Some(started.elapsed().as_secs_f64());
            last_change = (now, delivered);
        }
        if emit_seconds.is_some() && injecting.is_finished() {
            if first >= acked * fanout {
                let a = account(&emitted, &state, args.fanout);
                if a.lost == 0 {
                    break last_change.0;
                }
            }
            if now - last_change.0 > args.drain_timeout {
                break last_change.0;
            }
        }
    };
    bar.finish_and_clear();
    if let Some(f) = follower {
        f.abort();
    }
    let injected = if injecting.is_finished() {
        injecting.await??
    } else {
        injecting.abort();
        bail!("stopped before every fault was injected");
    };
    let emit_seconds = emit_seconds.unwrap_or_default();
    let (samples, cpu) = sampler.map_or((Vec::new(), None), Sampler::finish);
    let accounts = account(&emitted, &state, args.fanout);
    let acked = emitted.acked_count.load(Ordering::Relaxed);
    // From the first emit to the last delivery as the receiver timed it
    // (the poll loop sees it up to a tick later).
    let last_ms = state.last_delivery_ms.load(Ordering::Relaxed);
    let total = if last_ms > started_unix_ms {
        (last_ms - started_unix_ms) as f64 / 1000.0
    } else {
        done_at.duration_since(started).as_secs_f64()
    }
    .max(1e-9);
    let delivery_rate = accounts.delivered as f64 / total;
    let window: Vec<u64> = per_second
        .iter()
        .copied()
        .take(emit_seconds as usize)
        .skip(2)
        .collect();
    let sustained = if window.is_empty() {
        delivery_rate
    } else {
        window.iter().sum::<u64>() as f64 / window.len() as f64
    };
    let ratio = raw
        .as_ref()
        .filter(|r| r.per_second > 0.0)
        .map(|r| delivery_rate / r.per_second);
    let ratio_to_wrk = raw_wrk
        .as_ref()
        .filter(|r| r.per_second > 0.0)
        .map(|r| delivery_rate / r.per_second);
    let failures = emitted.failures.lock().clone();
    let emit_request_ms = Percentiles::of(&emitted.request_latency.lock());
    Ok(Report {
        label: args.label.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::detect(),
        target: args
            .target
            .clone()
            .unwrap_or_else(|| format!("embedded ({})", server.base)),
        scenario: json!({
            "endpoints": args.endpoints, "subscriptions": args.subscriptions, "fanout": args.fanout,
            "tenants": args.tenants,
            "batch": args.batch, "rate": args.rate, "concurrency": args.concurrency,
            "payload_bytes": args.payload_bytes, "receiver_latency_ms": args.latency.as_secs_f64() * 1000.0,
            "failure_rate": args.failure_rate,
        }),
        events_acknowledged: acked,
        events_failed: emitted.failed_events.load(Ordering::Relaxed),
        events_retried: emitted.retried_events.load(Ordering::Relaxed),
        emit_seconds,
        emit_rate: acked as f64 / emit_seconds.max(1e-9),
        sends_behind_schedule: emitted.behind_schedule.load(Ordering::Relaxed),
        emit_request_ms,
        accounts,
        delivery_rate,
        sustained_delivery_rate: sustained,
        latency_ms: Percentiles::of(&if args.receiver_log.is_some() {
            crate::external::latency(&emitted, &state)
        } else {
            farm.latency()
        }),
        bad_signatures: state.bad_signatures.load(Ordering::Relaxed),
        injected_failures: state.injected_failures.load(Ordering::Relaxed),
        receiver: farm.external.as_ref().map_or_else(
            || "built-in farm (signatures verified)".to_string(),
            |u| format!("independent: {u} (deliveries counted and latency timed from its access log, in whole ms; signatures not checked)"),
        ),
        raw,
        ratio_to_raw: ratio,
        raw_wrk,
        ratio_to_wrk,
        server_cpu_cores: cpu,
        server_peak_rss_mib: samples.iter().map(|s| s.rss_mib).reduce(f64::max),
        deliveries_per_second: per_second,
        server_samples: samples,
        failures,
        faults: injected,
    })
}

/// Creates the tenants and the subscriptions (subscription `i` listens to
/// `loadtest.g{i / fanout}.*`, as a subscription of tenant `group mod
/// tenants`); returns the tenants' keys.
async fn setup(
    http: &reqwest::Client,
    server: &Server,
    farm: &Farm,
    args: &Args,
    groups: usize,
) -> anyhow::Result<Vec<String>> {
    let run = format!(
        "loadtest-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    let mut keys = Vec::with_capacity(args.tenants);
    for t in 0..args.tenants {
        let tenant = if args.tenants == 1 {
            run.clone()
        } else {
            format!("{run}-t{t}")
        };
        let r = http
            .post(format!("{}/api/v1/admin/tenants", server.base))
            .bearer_auth(&server.admin_token)
            .json(&json!({ "id": tenant }))
            .send()
            .await
            .with_context(|| format!("is Herald running at {}?", server.base))?;
        if r.status() != 201 {
            bail!(
                "creating tenant {tenant}: {} {}",
                r.status(),
                r.text().await?
            );
        }
        keys.push(
            r.json::<Value>().await?["api_key"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let tenant = if args.tenants == 1 {
        run
    } else {
        format!("{run}-t0…{}", args.tenants - 1)
    };
    println!(
        "tenant {tenant}: creating {} subscriptions on {} endpoints ({groups} groups of {})…",
        args.subscriptions, args.endpoints, args.fanout
    );
    let tenants = args.tenants;
    let subs: Vec<(usize, String, usize)> = (0..groups)
        .flat_map(|g| {
            group_subscriptions(g, args.fanout)
                .map(move |i| (i, format!("loadtest.g{g}.*"), g % tenants))
        })
        .collect();
    let keys = Arc::new(keys);
    let farm_state = farm.state.clone();
    let urls: Vec<String> = (0..args.subscriptions).map(|i| farm.url(i)).collect();
    let urls = Arc::new(urls);
    let mut pending = tokio::task::JoinSet::new();
    let payload_filter = args.payload_filter.clone();
    let signature = args.signature.clone();
    for chunk in subs.chunks(subs.len().div_ceil(16).max(1)) {
        let (chunk, http, base, keys, urls, state, payload_filter, signature) = (
            chunk.to_vec(),
            http.clone(),
            server.base.clone(),
            keys.clone(),
            urls.clone(),
            farm_state.clone(),
            payload_filter.clone(),
            signature.clone(),
        );
        pending.spawn(async move {
            for (i, filter, tenant) in chunk {
                let key = &keys[tenant];
                let mut body =
                    json!({ "url": urls[i], "event_types": [filter], "signature": signature });
                if let Some(f) = &payload_filter {
                    body["filter"] = json!(f);
                }
                let r = loop {
                    let r = http
                        .post(format!("{base}/api/v1/portal/webhooks/subscribe"))
                        .bearer_auth(key)
                        .json(&body)
                        .send()
                        .await?;
                    if r.status() != 429 {
                        break r;
                    }
                    // The tenant's rate limit: wait as told, then go on.
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                };
                if r.status() != 201 {
                    bail!(
                        "subscribing {}: {} {}",
                        urls[i],
                        r.status(),
                        r.text().await?
                    );
                }
                let sub = r.json::<Value>().await?;
                let verifier = match (sub["secret"].as_str(), sub["public_key"].as_str()) {
                    (Some(secret), _) => Verifier::Hmac(SigningSecret::parse(secret)?),
                    (None, Some(key)) => Verifier::Ed25519(PublicKey::parse(key)?),
                    (None, None) => bail!(
                        "subscribing {}: no secret and no public key: {sub}",
                        urls[i]
                    ),
                };
                let _ = state.secrets[i].set(verifier);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    Ok(Arc::unwrap_or_clone(keys))
}
