//! The `herald` command line (DESIGN §8): flags and `HERALD_*` variables are
//! equivalent, and `herald serve` with nothing set runs the embedded server.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use herald_engine::{
    config::{self, EngineConfig, KafkaConfig, RetrySchedule, ScyllaConfig},
    encryption::KeyRing,
    Engine,
};
use ipnet::IpNet;
use tokio::net::TcpListener;

use crate::{app, worker_app, AppState};

/// Herald: webhook and domain-event delivery with guarantees.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

/// Which parts of Herald a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// API, relay and workers in one process.
    All,
    /// The REST API only (distributed mode).
    Api,
    /// The CDC relay only (distributed mode).
    Relay,
    /// Fan-out and delivery workers only (distributed mode).
    Worker,
}

/// `herald serve` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded log and store live.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,
    /// Admin token [default: generated on first start, printed once, kept in the data dir].
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// CIDRs that may receive deliveries despite the SSRF rules (comma-separated), e.g. 127.0.0.0/8.
    #[arg(
        long = "allow-target",
        env = "HERALD_ALLOW_TARGETS",
        value_delimiter = ','
    )]
    pub allow_targets: Vec<IpNet>,
    /// Send every HTTP delivery (and OAuth2 token request) through this HTTP
    /// CONNECT proxy, e.g. http://user:password@proxy.internal:3128; the SSRF
    /// rules still apply to each target.
    #[arg(long, env = "HERALD_EGRESS_PROXY", hide_env_values = true)]
    pub egress_proxy: Option<herald_engine::egress_proxy::EgressProxy>,
    /// Delays between delivery attempts; a delivery is dead after the last.
    #[arg(
        long,
        env = "HERALD_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h,24h,24h"
    )]
    pub retry_schedule: RetrySchedule,
    /// Which parts to run.
    #[arg(long, env = "HERALD_ROLE", value_enum, default_value = "all")]
    pub role: Role,
    /// Kafka bootstrap servers (host:port,...): use Kafka as the event log.
    #[arg(long, env = "HERALD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic names start with this (`<prefix>.events`).
    #[arg(long, env = "HERALD_KAFKA_TOPIC_PREFIX", default_value = "herald")]
    pub kafka_topic_prefix: String,
    /// Partitions of the events topic when Herald creates it.
    #[arg(long, env = "HERALD_KAFKA_PARTITIONS", default_value_t = 8)]
    pub kafka_partitions: u32,
    /// How long an emit waits for Kafka's acknowledgement before answering 503.
    #[arg(long, env = "HERALD_KAFKA_APPEND_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_append_timeout: std::time::Duration,
    /// How long a silent worker keeps its Kafka partitions before the group moves them.
    #[arg(long, env = "HERALD_KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_session_timeout: std::time::Duration,
    /// The Debezium outbox topic the CDC relay consumes [default: `<prefix>.cdc.outbox`].
    #[arg(long, env = "HERALD_CDC_TOPIC")]
    pub cdc_topic: Option<String>,
    /// This relay's stable instance name (its Kafka transactional id is
    /// `<prefix>-relay-<id>`); every relay running at once needs its own, and
    /// a restarted relay must reuse it to fence its predecessor (the Helm
    /// chart passes the relay StatefulSet's pod name, e.g. `herald-relay-0`).
    #[arg(long, env = "HERALD_RELAY_ID", default_value = "0")]
    pub relay_id: String,
    /// This worker's stable name, e.g. its pod's name (Kafka only): a worker
    /// restarted under the same name takes its partitions back at once
    /// instead of after --kafka-session-timeout (Kafka static membership).
    /// Every worker running at once needs its own; a stopped one's
    /// partitions move only when its session times out.
    #[arg(long, env = "HERALD_WORKER_ID")]
    pub worker_id: Option<String>,
    /// ScyllaDB/Cassandra contact points (`host:port,...`): keep the store in CQL.
    #[arg(long, env = "HERALD_SCYLLA_NODES")]
    pub scylla_nodes: Option<String>,
    /// Keyspace of the CQL store (created if missing).
    #[arg(long, env = "HERALD_SCYLLA_KEYSPACE", default_value = "herald")]
    pub scylla_keyspace: String,
    /// Replication of a new keyspace, a CQL map.
    #[arg(
        long,
        env = "HERALD_SCYLLA_REPLICATION",
        default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )]
    pub scylla_replication: String,
    /// How long the CQL store keeps events and delivery logs (tables' TTL).
    #[arg(long, env = "HERALD_SCYLLA_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub scylla_retention: std::time::Duration,
    /// Days audit records are kept (1 to 3650): pruned in SQLite, a per-row
    /// TTL in the CQL store.
    #[arg(long, env = "HERALD_AUDIT_RETENTION_DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub audit_retention_days: u32,
    /// Partitions of a new embedded event log.
    #[arg(long, env = "HERALD_LOG_PARTITIONS", default_value_t = 8)]
    pub log_partitions: u32,
    /// How long the embedded log and store keep events and delivery logs
    /// (never one with a delivery still pending, or a live dedupe key).
    #[arg(long, env = "HERALD_RETENTION", default_value = "30days",
          value_parser = parse_retention)]
    pub retention: std::time::Duration,
    /// Size of the embedded log's segment files (bytes, at least 4096): the
    /// unit its retention deletes.
    #[arg(long, env = "HERALD_LOG_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_segment_bytes: u64,
    /// Requests per second (and burst) each tenant may make; 0 = unlimited.
    #[arg(long, env = "HERALD_TENANT_RATE_LIMIT", default_value_t = crate::DEFAULT_TENANT_RATE_LIMIT)]
    pub tenant_rate_limit: u32,
    /// Bytes of emit request bodies served at once; an emit beyond them is
    /// answered 503 with Retry-After (backpressure before memory runs
    /// out). 0 = unbounded.
    #[arg(long, env = "HERALD_MAX_EMIT_BYTES_IN_FLIGHT",
          default_value_t = crate::admission::DEFAULT_EMIT_BUDGET_BYTES)]
    pub max_emit_bytes_in_flight: usize,
    /// Accepted events not yet delivered past which emits are answered
    /// 503 with Retry-After, so an accepted event waits about this over the
    /// delivery rate at most, not minutes (each API process reads the
    /// fan-out's lag four times a second). 0 = unbounded.
    #[arg(long, env = "HERALD_MAX_EMIT_BACKLOG",
          default_value_t = herald_engine::config::DEFAULT_MAX_EMIT_BACKLOG)]
    pub max_emit_backlog: u64,
    /// Lowers --max-emit-backlog to the events delivered in this long at
    /// the rate delivery was measured to keep up with a backlog (at least
    /// 250 events), so an event fanned out to many subscriptions waits
    /// about this long too, not minutes (2s measured well). 0s (the
    /// default) = the count alone: the rate is that of the slowest
    /// subscription, so one with a rate limit would hold every emit of
    /// its partition to that pace.
    #[arg(long, env = "HERALD_MAX_BACKLOG_WAIT", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_backlog_wait: std::time::Duration,
    /// Concurrent requests per endpoint.
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT_PER_ENDPOINT", default_value_t = 32)]
    pub max_in_flight_per_endpoint: usize,
    /// Deliveries one endpoint's queue holds in memory; past it they are
    /// parked in the schedule and released as the queue drains.
    #[arg(long, env = "HERALD_MAX_QUEUED_PER_ENDPOINT", default_value_t = 2048,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_queued_per_endpoint: usize,
    /// An endpoint that answers fast may queue this long at its pace (its
    /// in-flight limit over its recent latency) when that is more than
    /// --max-queued-per-endpoint, up to twice its fair share of the
    /// hand-off limit; 0s: never more.
    #[arg(long, env = "HERALD_QUEUE_PACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub queue_pace: std::time::Duration,
    /// Total timeout of one delivery attempt.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Consecutive failures that open an endpoint's circuit.
    #[arg(long, env = "HERALD_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// Failure ratio over the breaker window that opens a circuit (0–1).
    #[arg(long, env = "HERALD_BREAKER_FAILURE_RATIO", default_value_t = 0.5)]
    pub breaker_failure_ratio: f64,
    /// Requests the window must hold before the failure ratio can open a circuit.
    #[arg(long, env = "HERALD_BREAKER_MIN_REQUESTS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_min_requests: u32,
    /// Sliding window of the failure ratio.
    #[arg(long, env = "HERALD_BREAKER_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub breaker_window: std::time::Duration,
    /// Longest an open circuit waits between probes (its open time doubles after each failed probe up to this).
    #[arg(long, env = "HERALD_BREAKER_MAX_OPEN_FOR", default_value = "10m", value_parser = humantime::parse_duration)]
    pub breaker_max_open_for: std::time::Duration,
    /// Disable a subscription failing without a single success for this long.
    #[arg(long, env = "HERALD_DISABLE_AFTER", default_value = "5days", value_parser = humantime::parse_duration)]
    pub disable_after: std::time::Duration,
    /// How long an open circuit waits before probing the endpoint again.
    #[arg(long, env = "HERALD_BREAKER_OPEN_FOR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub breaker_open_for: std::time::Duration,
    /// Replays a second that recovery jobs schedule at most (per process).
    #[arg(long, env = "HERALD_RECOVERY_RATE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub recovery_rate: u32,
    /// Extra lease time of a claimed delivery beyond four request timeouts;
    /// after a worker dies, its claimed deliveries are due again after the lease.
    #[arg(long, env = "HERALD_LEASE_MARGIN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_margin: std::time::Duration,
    /// Key that encrypts signing secrets at rest: 32 random bytes in base64
    /// (`openssl rand -base64 32`); to rotate, give the new key first and the
    /// old one after it, comma-separated [default: the embedded store
    /// generates one into <data-dir>/secret.key; the CQL store needs it set].
    #[arg(long, env = "HERALD_SECRET_ENCRYPTION_KEY", hide_env_values = true)]
    pub secret_encryption_key: Option<KeyArg>,
}

/// The raw `--secret-encryption-key` value. Parsed by [`ServeArgs::engine_config`]
/// (whose errors never echo it, unlike clap's); `Debug` redacts it.
#[derive(Clone)]
pub struct KeyArg(String);

impl From<String> for KeyArg {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for KeyArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyArg(<redacted>)")
    }
}

/// Names the key setting in messages.
const KEY_FLAG: &str = "--secret-encryption-key / HERALD_SECRET_ENCRYPTION_KEY";

impl ServeArgs {
    fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let secret_keys = match &self.secret_encryption_key {
            Some(KeyArg(raw)) => {
                Some(KeyRing::parse(raw).map_err(|e| anyhow::anyhow!("{KEY_FLAG}: {e}"))?)
            }
            None => None,
        };
        let mut config = EngineConfig {
            secret_keys,
            data_dir: self.data_dir.clone(),
            allow_targets: self.allow_targets.clone(),
            egress_proxy: self.egress_proxy.clone(),
            retry_schedule: self.retry_schedule.clone(),
            log_partitions: self.log_partitions,
            kafka: self.kafka_brokers.as_ref().map(|brokers| KafkaConfig {
                brokers: brokers.clone(),
                topic_prefix: self.kafka_topic_prefix.clone(),
                partitions: self.kafka_partitions,
                append_timeout: self.kafka_append_timeout,
                session_timeout: self.kafka_session_timeout,
                cdc_topic: self.cdc_topic.clone(),
                relay_id: self.relay_id.clone(),
                worker_id: self.worker_id.clone(),
            }),
            role: match self.role {
                Role::Api => config::Role::Api,
                Role::Worker => config::Role::Worker,
                Role::Relay => config::Role::Relay,
                Role::All => config::Role::All,
            },
            recovery_rate: self.recovery_rate,
            retention: self.retention,
            log_segment_bytes: self.log_segment_bytes,
            max_emit_backlog: self.max_emit_backlog,
            max_backlog_wait: self.max_backlog_wait,
            audit_retention: std::time::Duration::from_secs(
                u64::from(self.audit_retention_days) * 86_400,
            ),
            ..EngineConfig::default()
        };
        config.delivery.lease_margin = self.lease_margin;
        config.delivery.max_in_flight_per_endpoint = self.max_in_flight_per_endpoint;
        config.delivery.max_queued_per_endpoint = self.max_queued_per_endpoint;
        config.delivery.queue_pace = self.queue_pace;
        config.delivery.request_timeout = self.request_timeout;
        config.delivery.breaker_open_for = self.breaker_open_for;
        config.delivery.breaker_failure_threshold = self.breaker_failures;
        config.delivery.breaker_failure_ratio = self.breaker_failure_ratio;
        config.delivery.breaker_min_requests = self.breaker_min_requests;
        config.delivery.breaker_window = self.breaker_window;
        config.delivery.breaker_max_open_for = self.breaker_max_open_for;
        config.delivery.disable_after = self.disable_after;
        config.scylla = self.scylla_nodes.as_ref().map(|nodes| ScyllaConfig {
            nodes: nodes
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            keyspace: self.scylla_keyspace.clone(),
            replication: self.scylla_replication.clone(),
            retention: self.scylla_retention,
            audit_retention: config.audit_retention,
        });
        Ok(config)
    }
}

/// Reads the admin token: given, or kept in the data dir, or generated now
/// (then written there with mode 0600 and printed once).
fn admin_token(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(t) = &args.admin_token {
        if t.len() < 16 {
            bail!("the admin token must be at least 16 characters long");
        }
        return Ok(t.clone());
    }
    let path = args.data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    use base64::Engine as _;
    let token = format!(
        "hadm_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    println!(
        "Generated the admin token (shown once; also kept in {}):\n  {token}",
        path.display()
    );
    Ok(token)
}

/// Refuses settings that cannot work together, saying what to change.
fn validate(args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(scylla) = args.engine_config()?.scylla {
        if let Err(e) = scylla.validate() {
            bail!("{e}");
        }
        if args.secret_encryption_key.is_none() {
            bail!(
                "the CQL store (--scylla-nodes / HERALD_SCYLLA_NODES) needs {KEY_FLAG}: \
                 32 random bytes in base64 (`openssl rand -base64 32`), the same for every \
                 process; a key generated on one node's local disk would not reach the others"
            );
        }
    }
    if !(args.breaker_failure_ratio > 0.0 && args.breaker_failure_ratio <= 1.0) {
        bail!("--breaker-failure-ratio must be above 0 and at most 1, e.g. 0.5");
    }
    match (args.role, &args.kafka_brokers) {
        (Role::Api | Role::Worker | Role::Relay, None) => bail!(
            "--role {} needs the distributed event log: set --kafka-brokers / HERALD_KAFKA_BROKERS \
             (the embedded log serves one process, --role all)",
            match args.role {
                Role::Api => "api",
                Role::Worker => "worker",
                _ => "relay",
            }
        ),
        (_, Some(b)) if b.trim().is_empty() => {
            bail!("--kafka-brokers is empty: give host:port[,host:port...] or unset it")
        }
        _ => {}
    }
    if !instance_name(&args.relay_id) {
        bail!("--relay-id: 1 to 100 characters of a-z, A-Z, 0-9, '.', '_' and '-'");
    }
    if args
        .worker_id
        .as_deref()
        .is_some_and(|id| !instance_name(id))
    {
        bail!("--worker-id: 1 to 100 characters of a-z, A-Z, 0-9, '.', '_' and '-'");
    }
    if args.kafka_partitions == 0 || args.kafka_partitions > 10_000 {
        bail!("--kafka-partitions must be between 1 and 10000");
    }
    if args.kafka_topic_prefix.is_empty()
        || args.kafka_topic_prefix.len() > 200
        || !args
            .kafka_topic_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        bail!("--kafka-topic-prefix: 1 to 200 characters of a-z, A-Z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

/// Whether `name` can name a relay or worker instance in Kafka ids.
fn instance_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Runs `herald serve` until SIGINT or SIGTERM, then drains.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    validate(&args)?;
    herald_engine::test_hooks::check().map_err(anyhow::Error::msg)?;
    // Workers and relays serve no API, so they need no admin token.
    let admin_token = if matches!(args.role, Role::Worker | Role::Relay) {
        String::new()
    } else {
        admin_token(&args)?
    };
    let engine = Engine::start(args.engine_config()?)
        .await
        .with_context(|| format!("starting the engine in {}", args.data_dir.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, role = ?args.role, "herald is serving");
    println!("herald listening on http://{local}");
    let state = AppState::new(engine.clone(), admin_token)
        .with_rate_limit(args.tenant_rate_limit)
        .with_emit_budget(args.max_emit_bytes_in_flight);
    let router = if matches!(args.role, Role::Worker | Role::Relay) {
        worker_app(state)
    } else {
        app(state)
    };
    crate::server::serve(listener, router, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("draining deliveries in flight");
    engine.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A retention: a duration from 1 s (scaled-time tests) to 10 years.
fn parse_retention(raw: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| format!("{e} (e.g. 30days, 12h)"))?;
    if d < std::time::Duration::from_secs(1)
        || d > std::time::Duration::from_secs(10 * 365 * 86_400)
    {
        return Err("give a duration between 1s and 10 years, e.g. 30days".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["herald", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a,
        }
    }

    #[test]
    fn a_worker_id_is_optional_and_named_like_a_pod() {
        let plain = args(&["--role", "worker", "--kafka-brokers", "k:9092"]);
        validate(&plain).unwrap();
        assert_eq!(
            plain.engine_config().unwrap().kafka.unwrap().worker_id,
            None
        );
        let named = args(&[
            "--role",
            "worker",
            "--kafka-brokers",
            "k:9092",
            "--worker-id",
            "herald-worker-7d9f-x2k4",
        ]);
        validate(&named).unwrap();
        assert_eq!(
            named
                .engine_config()
                .unwrap()
                .kafka
                .unwrap()
                .worker_id
                .as_deref(),
            Some("herald-worker-7d9f-x2k4")
        );
        for bad in ["", "has space", "slash/y"] {
            let a = args(&["--kafka-brokers", "k:9092", "--worker-id", bad]);
            let err = validate(&a).unwrap_err().to_string();
            assert!(
                err.starts_with("--worker-id: 1 to 100 characters"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn relay_role_needs_kafka_and_a_clean_relay_id() {
        let err = validate(&args(&["--role", "relay"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--role relay needs the distributed event log"),
            "{err}"
        );
        let ok = args(&[
            "--role",
            "relay",
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--relay-id",
            "r-1",
        ]);
        validate(&ok).unwrap();
        let config = ok.engine_config().unwrap();
        assert_eq!(config.role, config::Role::Relay);
        let kafka = config.kafka.unwrap();
        assert_eq!(kafka.cdc_topic(), "herald.cdc.outbox");
        assert_eq!(kafka.dead_letter_topic(), "herald.cdc.dead-letter");
        assert_eq!(kafka.relay_id, "r-1");
        let custom = args(&[
            "--kafka-brokers",
            "k:9092",
            "--cdc-topic",
            "app.public.herald_outbox",
        ]);
        assert_eq!(
            custom.engine_config().unwrap().kafka.unwrap().cdc_topic(),
            "app.public.herald_outbox"
        );
        // Kubernetes pod names (the chart's relay ids): DNS labels of up to
        // 63 characters, a StatefulSet's ending in its ordinal.
        let longest_pod = format!("{}-12", "r".repeat(60));
        for pod in [
            "herald-relay-0",
            "prod.herald-relay-11",
            longest_pod.as_str(),
        ] {
            let a = args(&[
                "--role",
                "relay",
                "--kafka-brokers",
                "k:9092",
                "--relay-id",
                pod,
            ]);
            validate(&a).unwrap_or_else(|e| panic!("{pod}: {e}"));
            assert_eq!(a.engine_config().unwrap().kafka.unwrap().relay_id, pod);
        }
        let bad = args(&[
            "--role",
            "relay",
            "--kafka-brokers",
            "k:9092",
            "--relay-id",
            "a b",
        ]);
        assert!(validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("--relay-id"));
    }

    #[test]
    fn audit_retention_is_days_for_both_stores() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(
            args(&[]).engine_config().unwrap().audit_retention,
            day * 365
        );
        let config = args(&["--audit-retention-days", "30", "--scylla-nodes", "n:9042"])
            .engine_config()
            .unwrap();
        assert_eq!(config.audit_retention, day * 30);
        assert_eq!(config.scylla.unwrap().audit_retention, day * 30);
        for bad in ["0", "3651", "x"] {
            let argv = ["herald", "serve", "--audit-retention-days", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_and_segment_size_reach_the_engine_and_bad_values_say_what_to_give() {
        let config = args(&[]).engine_config().unwrap();
        assert_eq!(
            config.retention,
            std::time::Duration::from_secs(30 * 86_400)
        );
        assert_eq!(config.log_segment_bytes, 64 * 1024 * 1024);
        let config = args(&["--retention", "2h", "--log-segment-bytes", "65536"])
            .engine_config()
            .unwrap();
        assert_eq!(config.retention, std::time::Duration::from_secs(7200));
        assert_eq!(config.log_segment_bytes, 65536);
        for (flag, bad) in [
            ("--retention", "0s"),
            ("--retention", "11years"),
            ("--retention", "soon"),
            ("--log-segment-bytes", "100"),
        ] {
            let err = Cli::try_parse_from(["herald", "serve", flag, bad]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag} {bad}: {err}");
        }
    }

    #[test]
    fn secret_encryption_key_is_parsed_without_echoing_it_and_required_with_cql() {
        let key = "aGVyYWxkLWNxbC10ZXN0cy1lbmNyeXB0aW9uLWtleSE=";
        let config = args(&["--secret-encryption-key", key])
            .engine_config()
            .unwrap();
        let ring = config.secret_keys.unwrap();
        assert_eq!(ring.ids().len(), 1);
        let old = herald_engine::encryption::EncryptionKey::generate().to_base64();
        let both = args(&["--secret-encryption-key", &format!("{key},{old}")]);
        assert_eq!(
            both.engine_config()
                .unwrap()
                .secret_keys
                .unwrap()
                .ids()
                .len(),
            2
        );
        assert!(!format!("{both:?}").contains(key), "Debug redacts the key");

        let short = "c2hvcnQ=";
        let err = validate(&args(&["--secret-encryption-key", short]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("HERALD_SECRET_ENCRYPTION_KEY"), "{err}");
        assert!(err.contains("exactly 32"), "{err}");
        assert!(!err.contains(short), "{err}");

        let err = validate(&args(&["--scylla-nodes", "127.0.0.1:9042"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--secret-encryption-key"), "{err}");
        assert!(err.contains("HERALD_SECRET_ENCRYPTION_KEY"), "{err}");
        validate(&args(&[
            "--scylla-nodes",
            "127.0.0.1:9042",
            "--secret-encryption-key",
            key,
        ]))
        .unwrap();
    }
}
