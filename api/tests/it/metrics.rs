//! `/metrics`: the exposition after real traffic has the expected series and
//! values, no label carries tenant data, and a real Prometheus scrapes it
//! (the Prometheus test needs the binaries `scripts/check-deploy` unpacks
//! into `.cache/`, or `HERALD_PROMETHEUS_DIR`; it fails without them).

use std::{collections::BTreeMap, path::PathBuf, process::Stdio, time::Duration};

use serde_json::{json, Value};

use crate::support::{eventually, Herald, Receiver};

/// One sample of the text exposition.
#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label pair");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("numeric value"),
            }
        })
        .collect()
}

/// The value of the one series `name` whose labels include `labels`.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().map(|s| s.value)
}

async fn scrape(herald: &Herald) -> (String, Vec<Sample>) {
    let r = herald
        .http
        .get(herald.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test]
async fn exposition_counts_deliveries_failures_circuits_and_routes_without_tenant_labels() {
    let herald = Herald::start_with(|c| {
        c.retry_schedule = "1s,1s,1s,1s".parse().unwrap();
        c.delivery.breaker_failure_threshold = 2;
        c.delivery.breaker_open_for = Duration::from_secs(600);
    })
    .await;
    let key = herald.tenant("metrics-tenant").await;
    let good = Receiver::start(200).await;
    let bad = Receiver::start(500).await;
    let bad_sub = herald.subscribe(&key, &bad.url, &["order.failed"]).await;
    herald.subscribe(&key, &good.url, &["order.placed"]).await;
    for i in 0..3 {
        herald.emit(&key, "order.placed", json!({ "n": i })).await;
    }
    herald.emit(&key, "order.failed", json!({})).await;
    let (status, _) = herald.get(&key, "/api/v1/no/such/route").await;
    assert_eq!(status, 404);
    let (status, _) = herald
        .get(
            &key,
            "/api/v1/integrations/events/evt_0000000000000000000000000",
        )
        .await;
    assert_eq!(status, 404);

    let samples = eventually(
        "3 deliveries, the failing circuit open and the lag refreshed",
        Duration::from_secs(20),
        || async {
            let (_, samples) = scrape(&herald).await;
            let delivered = value(
                &samples,
                "herald_deliveries_total",
                &[("outcome", "delivered")],
            );
            let opened = value(
                &samples,
                "herald_circuit_breaker_transitions_total",
                &[("to", "open")],
            );
            let lag = value(
                &samples,
                "herald_consumer_lag_records",
                &[("partition", "0")],
            );
            // The default count bound, no rate measured on four events.
            let bound = value(&samples, "herald_emit_backlog_bound_events", &[]);
            (delivered == Some(3.0)
                && opened == Some(1.0)
                && lag.is_some()
                && bound == Some(30_000.0))
            .then_some(samples)
        },
    )
    .await;

    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(
        v("herald_events_ingested_total", &[("source", "api")]),
        Some(4.0)
    );
    assert_eq!(
        v("herald_events_ingested_total", &[("source", "cdc")]),
        Some(0.0)
    );
    assert_eq!(
        v(
            "herald_delivery_attempts_total",
            &[("outcome", "delivered"), ("error", "none")]
        ),
        Some(3.0)
    );
    // Two failures opened the circuit (threshold 2); the next attempt was refused unsent.
    assert_eq!(
        v(
            "herald_delivery_attempts_total",
            &[("outcome", "failed"), ("error", "http_status")]
        ),
        Some(2.0)
    );
    assert_eq!(bad.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        v("herald_circuit_breakers", &[("state", "open")]),
        Some(1.0)
    );
    assert_eq!(
        v("herald_deliveries_total", &[("outcome", "dead")]),
        Some(0.0)
    );
    assert_eq!(v("herald_delivery_duration_seconds_count", &[]), Some(5.0));
    assert_eq!(v("herald_emit_to_delivery_seconds_count", &[]), Some(3.0));
    assert_eq!(v("herald_relay_dead_letters_total", &[]), Some(0.0));
    assert_eq!(v("herald_relay_records_total", &[]), Some(0.0));
    // 8 partitions of the embedded log, each reported; all fanned out by now.
    let lag: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "herald_consumer_lag_records")
        .collect();
    assert_eq!(lag.len(), 8, "{lag:?}");
    assert!(lag.iter().all(|s| s.value == 0.0), "{lag:?}");
    // The backlog holds the failing delivery, waiting for the circuit.
    assert!(v("herald_retry_backlog_deliveries", &[]).is_some());

    let route = |r: &str, m: &str, s: &str| {
        v(
            "herald_http_requests_total",
            &[("route", r), ("method", m), ("status", s)],
        )
    };
    assert_eq!(
        route("/api/v1/integrations/events", "POST", "2xx"),
        Some(4.0)
    );
    assert_eq!(
        route("/api/v1/portal/webhooks/subscribe", "POST", "2xx"),
        Some(2.0)
    );
    assert_eq!(route("/api/v1/admin/tenants", "POST", "2xx"), Some(1.0));
    assert_eq!(
        route("/api/v1/integrations/events/{id}", "GET", "4xx"),
        Some(1.0)
    );
    assert_eq!(route("unmatched", "GET", "4xx"), Some(1.0));
    assert!(
        v(
            "herald_http_request_duration_seconds_count",
            &[("route", "/api/v1/integrations/events"), ("method", "POST")]
        ) == Some(4.0)
    );

    // No label value names a tenant, a subscription, an event, a URL or a raw path.
    let allowed = [
        "source",
        "outcome",
        "error",
        "state",
        "to",
        "partition",
        "route",
        "method",
        "status",
        "le",
    ];
    let sub_id = bad_sub["id"].as_str().unwrap();
    for s in &samples {
        assert!(s.name.starts_with("herald_"), "{s:?}");
        for (k, v) in &s.labels {
            assert!(
                allowed.contains(&k.as_str()),
                "unexpected label {k} in {s:?}"
            );
            for leak in [
                "metrics-tenant",
                "evt_",
                "sub_",
                sub_id,
                "127.0.0.1",
                "/hook",
                "/no/such",
            ] {
                assert!(!v.contains(leak), "label {k}={v} leaks {leak}");
            }
        }
    }
}

/// Where the Debian `prometheus` package was unpacked.
fn prometheus_dir() -> PathBuf {
    let dir = std::env::var_os("HERALD_PROMETHEUS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/prometheus/pkg/usr/bin"),
        PathBuf::from,
    );
    assert!(
        dir.join("prometheus").is_file() && dir.join("promtool").is_file(),
        "no prometheus/promtool in {}: run scripts/check-deploy (it unpacks Debian's prometheus package there) \
         or set HERALD_PROMETHEUS_DIR",
        dir.display()
    );
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_herald_and_counts_every_delivery() {
    const N: usize = 7;
    let bin = prometheus_dir();
    let herald = Herald::start().await;
    let key = herald.tenant("acme").await;
    let receiver = Receiver::start(200).await;
    herald.subscribe(&key, &receiver.url, &["*"]).await;

    // `promtool check metrics` lints the exposition (names, types, help, units).
    let (text, _) = scrape(&herald).await;
    let mut lint = std::process::Command::new(bin.join("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let target = herald.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = KillOnDrop(
        std::process::Command::new(bin.join("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prom = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("prometheus ready", Duration::from_secs(30), || async {
        let r = http.get(format!("{prom}/-/ready")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    for i in 0..N {
        herald.emit(&key, "order.placed", json!({ "n": i })).await;
    }
    eventually(
        "the receiver got every event",
        Duration::from_secs(10),
        || async { (receiver.received().len() == N).then_some(()) },
    )
    .await;

    let query = |q: &'static str| {
        let http = http.clone();
        let prom = prom.clone();
        async move {
            let r: Value = http
                .get(format!("{prom}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            assert_eq!(r["status"], "success", "{r}");
            r["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_string)
        }
    };
    let delivered = eventually(
        "prometheus reports every delivery",
        Duration::from_secs(30),
        || async {
            query(r#"sum(herald_deliveries_total{job="herald",outcome="delivered"})"#)
                .await
                .filter(|v| v == &N.to_string())
        },
    )
    .await;
    assert_eq!(delivered, N.to_string());
    let ingested = query(r#"herald_events_ingested_total{source="api"}"#).await;
    assert_eq!(ingested, Some(N.to_string()));
    // The scrape itself is seen as healthy by Prometheus.
    assert_eq!(query(r#"up{job="herald"}"#).await, Some("1".into()));
}

/// `herald_*` names in a text, histogram suffixes kept.
pub(crate) fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("herald_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_herald_exports() {
    let herald = Herald::start().await;
    herald.tenant("acme").await;
    let samples = eventually("the lag gauges", Duration::from_secs(15), || async {
        let (_, samples) = scrape(&herald).await;
        let ready = samples
            .iter()
            .any(|s| s.name == "herald_consumer_lag_records")
            && samples
                .iter()
                .any(|s| s.name == "herald_http_requests_total");
        ready.then_some(samples)
    })
    .await;
    let exported: std::collections::BTreeSet<_> = samples.iter().map(|s| s.name.clone()).collect();
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/files");
    let dashboard = std::fs::read_to_string(chart.join("dashboard.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10));
    let alerts = std::fs::read_to_string(chart.join("alerts.yaml")).unwrap();
    for (file, text) in [("dashboard.json", &dashboard), ("alerts.yaml", &alerts)] {
        let used = metric_names(text);
        assert!(used.len() >= 5, "{file} uses {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics Herald does not export: {unknown:?}"
        );
    }
    // And every metric Herald exports is on the dashboard.
    let on_dashboard = metric_names(&dashboard);
    for name in &exported {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        assert!(
            on_dashboard.iter().any(|d| d.starts_with(base)),
            "{name} is exported but not on the dashboard"
        );
    }
}
