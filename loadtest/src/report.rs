//! The run's report: printed, and written as JSON (every figure, the
//! timelines) and Markdown (the summary table used in docs/performance.md).

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{accounting::Accounts, faults::Injected, raw::RawResult, server::Sample};

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs available.
    pub cores: usize,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Share of the last 60 s in which some task waited for a CPU
    /// (`/proc/pressure/cpu`): how much other work shared the machine.
    pub cpu_pressure_avg60: Option<f64>,
    /// Load average over the last minute.
    pub load_avg_1m: Option<f64>,
}

impl Machine {
    /// Reads `/proc/cpuinfo` and `/proc/meminfo`.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpu: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("unknown")
                .trim()
                .to_string(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
            cpu_pressure_avg60: std::fs::read_to_string("/proc/pressure/cpu")
                .ok()
                .and_then(|p| {
                    p.lines()
                        .next()?
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("avg60="))?
                        .parse()
                        .ok()
                }),
            load_avg_1m: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Free-text label of the scenario.
    pub label: String,
    /// The command line.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// Herald under test (URL; embedded = started by this run).
    pub target: String,
    /// The scenario's knobs.
    pub scenario: serde_json::Value,
    /// Events acknowledged.
    pub events_acknowledged: u64,
    /// Events whose emit failed.
    pub events_failed: u64,
    /// Events refused with 503 + `Retry-After` and sent again (each refusal).
    pub events_retried: u64,
    /// Seconds spent emitting.
    pub emit_seconds: f64,
    /// Acknowledged events per second while emitting.
    pub emit_rate: f64,
    /// Open-loop sends more than 10 ms late.
    pub sends_behind_schedule: u64,
    /// Emit request round trip, ms.
    pub emit_request_ms: Percentiles,
    /// The pair accounting.
    pub accounts: Accounts,
    /// Delivered pairs / seconds from the first emit to the last delivery.
    pub delivery_rate: f64,
    /// Mean deliveries per second over the emit window, first 2 s excluded.
    pub sustained_delivery_rate: f64,
    /// Emit-to-delivery latency (first delivery of each pair), ms.
    pub latency_ms: Percentiles,
    /// Signatures that did not verify.
    pub bad_signatures: u64,
    /// Requests the farm failed on purpose.
    pub injected_failures: u64,
    /// Who received and counted the deliveries.
    pub receiver: String,
    /// The raw-client baseline, if measured.
    pub raw: Option<RawResult>,
    /// `delivery_rate` / raw rate.
    pub ratio_to_raw: Option<f64>,
    /// The raw baseline measured by `wrk`, if measured.
    pub raw_wrk: Option<RawResult>,
    /// `delivery_rate` / wrk's raw rate.
    pub ratio_to_wrk: Option<f64>,
    /// Server CPU in cores, averaged over the load.
    pub server_cpu_cores: Option<f64>,
    /// Server peak RSS, MiB.
    pub server_peak_rss_mib: Option<f64>,
    /// Deliveries in each second of the run.
    pub deliveries_per_second: Vec<u64>,
    /// Server samples.
    pub server_samples: Vec<Sample>,
    /// First failure reasons.
    pub failures: Vec<String>,
    /// Faults injected during the run (`--fault`).
    pub faults: Vec<Injected>,
}

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let a = &self.accounts;
        let l = &self.latency_ms;
        let opt = |v: Option<f64>, unit: &str| v.map_or("—".into(), |v| format!("{v:.2}{unit}"));
        let raw = self.raw.as_ref().map_or("not measured".into(), |r| {
            format!(
                "{:.0}/s ({} clients, {:.0} s)",
                r.per_second, r.concurrency, r.seconds
            )
        });
        let wrk = self.raw_wrk.as_ref().map_or("not measured".into(), |r| {
            format!(
                "{:.0}/s ({} connections, {:.0} s)",
                r.per_second, r.concurrency, r.seconds
            )
        });
        format!(
            "### {label}\n\n`{command}`\n\n\
             | figure | value |\n|---|---|\n\
             | machine | {cpu}, {cores} cores, {mem} MiB; load avg {load}, CPU pressure {psi} |\n\
             | scenario | {scenario} |\n\
             | events acknowledged | {acked} ({failed} failed; {retried} refused with 503 + Retry-After and sent again) in {emit_s:.1} s = {emit_rate:.0}/s |\n\
             | pairs expected / delivered / duplicated / lost | {exp} / {del} / {dup} / {lost} |\n\
             | delivery rate (first emit → last delivery) | {rate:.0}/s |\n\
             | sustained delivery rate (emit window) | {sus:.0}/s |\n\
             | emit→delivery p50 / p90 / p99 / p99.9 / max | {p50:.1} / {p90:.1} / {p99:.1} / {p999:.1} / {max:.1} ms |\n\
             | emit request p50 / p99 (each exchange) | {rq50:.1} / {rq99:.1} ms |\n\
             | open-loop sends > 10 ms behind schedule | {late} |\n\
             | receiver | {receiver} |\n\
             | raw client POST rate (same receivers) | {raw} |\n\
             | Herald / raw | {ratio} |\n\
             | raw wrk POST rate (same receivers) | {wrk} |\n\
             | Herald / raw wrk | {ratio_wrk} |\n\
             | server CPU (cores) / peak RSS | {cpu_use} / {rss} |\n\
             | bad signatures / injected failures | {bad} / {inj} |\n",
            label = self.label,
            command = self.command,
            cpu = self.machine.cpu,
            cores = self.machine.cores,
            mem = self.machine.memory_mib,
            load = opt(self.machine.load_avg_1m, ""),
            psi = opt(self.machine.cpu_pressure_avg60, "%"),
            scenario = self.scenario.to_string().replace('|', "/"),
            acked = self.events_acknowledged,
            failed = self.events_failed,
            retried = self.events_retried,
            emit_s = self.emit_seconds,
            emit_rate = self.emit_rate,
            exp = a.expected,
            del = a.delivered,
            dup = a.duplicates,
            lost = a.lost,
            rate = self.delivery_rate,
            sus = self.sustained_delivery_rate,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            rq50 = self.emit_request_ms.p50,
            rq99 = self.emit_request_ms.p99,
            late = if self.scenario["rate"].is_null() {
                "— (flat out)".to_string()
            } else {
                self.sends_behind_schedule.to_string()
            },
            ratio = self.ratio_to_raw.map_or("—".into(), |r| format!("{:.0}%", r * 100.0)),
            receiver = self.receiver,
            ratio_wrk = self.ratio_to_wrk.map_or("—".into(), |r| format!("{:.0}%", r * 100.0)),
            cpu_use = opt(self.server_cpu_cores, ""),
            rss = opt(self.server_peak_rss_mib, " MiB"),
            bad = self.bad_signatures,
            inj = self.injected_failures,
        ) + &self.faults_markdown()
    }

    fn faults_markdown(&self) -> String {
        self.faults
            .iter()
            .map(|f| {
                format!(
                    "| fault {kind} at {at:.1} s | {detail}, {lasted:.1} s{bad} |\n",
                    kind = f.kind,
                    at = f.at_s,
                    detail = f.detail,
                    lasted = f.lasted_s,
                    bad = if f.ok { "" } else { " — NOT AS REQUIRED" },
                )
            })
            .collect()
    }

    /// Writes `<stem>.json` and `<stem>.md`.
    pub fn write(&self, stem: &Path) -> anyhow::Result<()> {
        if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            stem.with_extension("json"),
            serde_json::to_vec_pretty(self)?,
        )?;
        std::fs::write(stem.with_extension("md"), self.markdown())?;
        Ok(())
    }
}
