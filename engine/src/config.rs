//! Engine configuration: serde structs with defaults that give a working
//! embedded server with no configuration at all.

use std::{path::PathBuf, time::Duration};

use ipnet::IpNet;

use crate::encryption::KeyRing;

/// The consumer group of the fan-out workers (with Kafka, `<prefix>-fanout`,
/// which is this name for the default prefix).
pub const FANOUT_GROUP: &str = "herald-fanout";

/// Everything the engine needs to start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the embedded log and store live.
    pub data_dir: PathBuf,
    /// CIDRs that may receive deliveries despite the SSRF rules.
    pub allow_targets: Vec<IpNet>,
    /// The HTTP CONNECT proxy every HTTP delivery goes through, if any.
    pub egress_proxy: Option<crate::egress_proxy::EgressProxy>,
    /// Delays between attempts; a delivery is dead after the last one.
    pub retry_schedule: RetrySchedule,
    /// Number of partitions of the embedded event log.
    pub log_partitions: u32,
    /// How long a `(tenant, dedupe_key)` pair stays unique.
    pub dedupe_window: Duration,
    /// Delivery tuning.
    pub delivery: DeliveryConfig,
    /// The CQL store (ScyllaDB or Cassandra); `None` keeps the embedded SQLite store.
    pub scylla: Option<ScyllaConfig>,
    /// The Kafka event log; `None` runs the embedded log.
    pub kafka: Option<KafkaConfig>,
    /// Which tasks this process runs.
    pub role: Role,
    /// The keys that encrypt subscription signing secrets at rest, the
    /// sealing key first. `None`: the embedded store keeps a generated key
    /// in `<data_dir>/secret.key`; the CQL store refuses to start.
    pub secret_keys: Option<KeyRing>,
    /// Replays a second that recovery jobs schedule at most (all jobs of
    /// this process together), so a recovering endpoint is not flooded.
    pub recovery_rate: u32,
    /// How long audit records are kept (pruned in SQLite, a TTL in CQL).
    pub audit_retention: Duration,
    /// How long the embedded log and SQLite store keep events and delivery
    /// logs (never one with a delivery still pending). The CQL store uses
    /// [`ScyllaConfig::retention`], Kafka the topic's `retention.ms`.
    pub retention: Duration,
    /// Size of the embedded log's segment files, the unit its retention
    /// deletes.
    pub log_segment_bytes: u64,
    /// Accepted events not yet delivered (fan-out's lag behind the log)
    /// past which a process that takes emits refuses more (the API answers
    /// 503 with `Retry-After`), so an accepted event waits at most about
    /// this over the delivery rate; 0 = unbounded.
    pub max_emit_backlog: u64,
    /// Lowers that bound to the events delivery settles in this long at
    /// the rate it was measured to settle them with a backlog (never below
    /// [`crate::MIN_WAIT_BOUND`] events), so that events fanned out
    /// to many subscriptions wait about this long too; zero = no lowering.
    pub max_backlog_wait: Duration,
}

/// Default of [`EngineConfig::max_emit_backlog`]: under 2 s of deliveries
/// at the embedded rate measured on two cores, where it cost no throughput
/// (docs/performance.md, *A bound on the delivery backlog*). A cluster that
/// delivers more per second wants proportionally more.
pub const DEFAULT_MAX_EMIT_BACKLOG: u64 = 30_000;

/// Default of [`EngineConfig::max_backlog_wait`]: off. The rate it is
/// measured at is how fast fan-out commits past the log, which the
/// slowest subscription sets: a subscription with a rate limit of 50/s
/// (its deliveries may queue in memory for 30 s at its pace) lowered the
/// bound to 250 events and refused the tenant's emits after 376
/// (`policies::rate_limit_is_honoured`). Set it (2 s was measured,
/// docs/performance.md) where events fan out widely and no subscription
/// is held back on purpose.
pub const DEFAULT_MAX_BACKLOG_WAIT: Duration = Duration::ZERO;

/// Which parts of the engine a process runs (DESIGN §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Everything: the operations the API calls, fan-out and delivery.
    #[default]
    All,
    /// Only the operations the API calls: emits are appended to the log,
    /// nothing is fanned out or delivered by this process.
    Api,
    /// Only fan-out, the scheduler and delivery.
    Worker,
    /// Only the CDC relay (needs Kafka): outbox topic in, event log out.
    Relay,
}

impl Role {
    /// Whether this process fans out and delivers.
    pub fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    /// Whether this process takes emits (serves the API).
    pub fn takes_emits(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    /// Whether this process runs the CDC relay (when Kafka is configured).
    pub fn runs_relay(self) -> bool {
        matches!(self, Role::All | Role::Relay)
    }
}

/// Where the Kafka event log lives and how it behaves.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,host:port`.
    pub brokers: String,
    /// Topic names start with this: `<prefix>.events`.
    pub topic_prefix: String,
    /// Partitions of the events topic when Herald creates it.
    pub partitions: u32,
    /// How long an append may wait for the brokers' acknowledgement before
    /// the emit fails as unavailable (503).
    pub append_timeout: Duration,
    /// How long a silent consumer keeps its partitions.
    pub session_timeout: Duration,
    /// The CDC topic the relay consumes [default: `<prefix>.cdc.outbox`].
    pub cdc_topic: Option<String>,
    /// This relay instance's stable name: its Kafka `transactional.id` is
    /// `<prefix>-relay-<relay_id>`, so a restarted relay fences its crashed
    /// predecessor at once. Each concurrently running relay needs its own.
    pub relay_id: String,
    /// This worker's stable name (a pod's name), if it has one. Set, its
    /// fan-out is a static member of the consumer group
    /// (`group.instance.id`) and its schedule changelog's transactional id
    /// is `<prefix>-schedule-<worker_id>`: restarted under the same name
    /// after a crash, it takes its partitions back at once rather than
    /// after the dead process's session timeout, and aborts that process's
    /// open changelog transaction at once rather than after its timeout. A
    /// static member that stops does not leave the group, so its partitions
    /// move only when its session times out. Each running worker needs its
    /// own: a second process with the same name fences the first.
    pub worker_id: Option<String>,
}

impl KafkaConfig {
    /// Defaults for the given brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: "herald".into(),
            partitions: 8,
            append_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            cdc_topic: None,
            relay_id: "0".into(),
            worker_id: None,
        }
    }

    /// The events topic, `<prefix>.events`.
    pub fn events_topic(&self) -> String {
        format!("{}.events", self.topic_prefix)
    }

    /// The schedule changelog, `<prefix>.schedule`: the retries workers
    /// keep in memory, compacted, co-partitioned with the events topic.
    pub fn schedule_topic(&self) -> String {
        format!("{}.schedule", self.topic_prefix)
    }

    /// The CDC topic Debezium writes the outbox to.
    pub fn cdc_topic(&self) -> String {
        self.cdc_topic
            .clone()
            .unwrap_or_else(|| format!("{}.cdc.outbox", self.topic_prefix))
    }

    /// Where the relay puts CDC records it cannot use, `<prefix>.cdc.dead-letter`.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.cdc.dead-letter", self.topic_prefix)
    }
}

/// Where and how the CQL store keeps its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` (the driver discovers the rest of the cluster).
    pub nodes: Vec<String>,
    /// Keyspace holding Herald's tables; created at start if missing.
    pub keyspace: String,
    /// The keyspace's replication, a CQL map such as
    /// `{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}`.
    pub replication: String,
    /// How long events and delivery logs are kept (the tables' default TTL).
    pub retention: Duration,
    /// How long audit records are kept (their per-row TTL); the engine sets
    /// it from [`EngineConfig::audit_retention`].
    pub audit_retention: Duration,
}

impl ScyllaConfig {
    /// One node, keyspace `herald`, replication factor 1, 30 days' retention.
    pub fn new(nodes: Vec<String>) -> Self {
        Self {
            nodes,
            keyspace: "herald".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            retention: Duration::from_secs(30 * 24 * 3600),
            audit_retention: Duration::from_secs(365 * 24 * 3600),
        }
    }

    /// Checks the settings; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() || self.nodes.iter().any(|n| n.trim().is_empty()) {
            return Err(
                "HERALD_SCYLLA_NODES: give contact points like 10.0.0.1:9042,10.0.0.2:9042".into(),
            );
        }
        let ks = &self.keyspace;
        let valid_ks = !ks.is_empty()
            && ks.len() <= 48
            && ks.starts_with(|c: char| c.is_ascii_lowercase())
            && ks
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_ks {
            return Err(format!(
                "HERALD_SCYLLA_KEYSPACE {ks:?}: use 1-48 lowercase letters, digits or '_', starting with a letter"
            ));
        }
        let r = self.replication.trim();
        if !(r.starts_with('{') && r.ends_with('}') && r.contains("'class'") && !r.contains(';')) {
            return Err(format!(
                "HERALD_SCYLLA_REPLICATION {r:?}: give a CQL map like {{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}}"
            ));
        }
        if self.retention < Duration::from_secs(3600)
            || self.retention > Duration::from_secs(10 * 365 * 24 * 3600)
        {
            return Err(
                "HERALD_SCYLLA_RETENTION: give a duration between 1h and 10 years, e.g. 30days"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The embedded log's default segment size (64 MiB).
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./herald-data"),
            allow_targets: Vec::new(),
            egress_proxy: None,
            retry_schedule: RetrySchedule::default(),
            log_partitions: 8,
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            delivery: DeliveryConfig::default(),
            scylla: None,
            kafka: None,
            role: Role::All,
            secret_keys: None,
            recovery_rate: 1000,
            audit_retention: Duration::from_secs(365 * 24 * 3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            log_segment_bytes: DEFAULT_LOG_SEGMENT_BYTES,
            max_emit_backlog: DEFAULT_MAX_EMIT_BACKLOG,
            max_backlog_wait: DEFAULT_MAX_BACKLOG_WAIT,
        }
    }
}

/// Tuning of the delivery workers.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Number of endpoint shards (tokio tasks owning endpoint state).
    pub shards: usize,
    /// Connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Total timeout per attempt, from request start to the end of the body.
    pub request_timeout: Duration,
    /// Concurrent requests per endpoint.
    pub max_in_flight_per_endpoint: usize,
    /// Consecutive failures that open an endpoint's circuit.
    pub breaker_failure_threshold: u32,
    /// How long an open circuit waits before one half-open probe.
    pub breaker_open_for: Duration,
    /// Failure ratio over `breaker_window` that opens a circuit.
    pub breaker_failure_ratio: f64,
    /// Sliding window of the failure ratio.
    pub breaker_window: Duration,
    /// Requests the window must hold before the ratio counts.
    pub breaker_min_requests: u32,
    /// Longest open period after repeated failed probes.
    pub breaker_max_open_for: Duration,
    /// A subscription failing without a single success for this long is disabled.
    pub disable_after: Duration,
    /// Longest `Retry-After` honoured; longer asks are cut to this.
    pub max_retry_after: Duration,
    /// Fraction of random jitter added to or removed from each retry delay.
    pub retry_jitter: f64,
    /// Bytes of the response body kept in the delivery log.
    pub response_body_limit: usize,
    /// Added to four request timeouts to make a claim's lease.
    pub lease_margin: Duration,
    /// Deliveries the shards may hold: bounds memory when fan-out outruns
    /// the endpoints. Past it fan-out waits for room, its events in the log.
    pub handoff_limit: usize,
    /// How long fan-out waits for the shards to make room for the next
    /// event before it schedules the deliveries in the store instead
    /// (shards that stay full: endpoints slow to answer), so that it goes
    /// on reading the log.
    pub handoff_patience: Duration,
    /// Deliveries one endpoint's queue holds in memory (more while it
    /// answers fast: `queue_pace`); past it a worker
    /// parks them in the schedule and releases them a chunk at a time as
    /// the queue drains, so a slow endpoint never holds the whole
    /// hand-off budget and no delivery waits for a lease to end.
    pub max_queued_per_endpoint: usize,
    /// How long a queue an endpoint that answers fast may have, at its
    /// pace (its in-flight limit over its recent latency), when that is
    /// more than `max_queued_per_endpoint`, and up to twice its fair share
    /// of the hand-off limit (the limit over the endpoints the shards hold): a
    /// burst to it then waits in memory rather than parked in the store.
    /// Zero: never more than `max_queued_per_endpoint`
    /// ([`crate::delivery::limit::Pace`]).
    pub queue_pace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            shards: 4,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_in_flight_per_endpoint: 32,
            breaker_failure_threshold: 5,
            breaker_open_for: Duration::from_secs(30),
            breaker_failure_ratio: 0.5,
            breaker_window: Duration::from_secs(60),
            breaker_min_requests: 20,
            breaker_max_open_for: Duration::from_secs(600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            max_retry_after: Duration::from_secs(6 * 3600),
            retry_jitter: 0.1,
            response_body_limit: 4096,
            lease_margin: Duration::from_secs(30),
            handoff_limit: 16_384,
            handoff_patience: Duration::from_secs(1),
            max_queued_per_endpoint: 2_048,
            queue_pace: Duration::from_secs(30),
        }
    }
}

impl DeliveryConfig {
    /// How long a claimed delivery stays leased: longer than the longest
    /// attempt, including time queued for a permit. After a crash, what the
    /// dead process had claimed falls due again when its lease ends.
    pub fn lease(&self) -> Duration {
        self.request_timeout * 4 + self.lease_margin
    }
}

/// The delays between delivery attempts, e.g. `5s,5m,30m,2h,5h,10h,10h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    /// About three days: `5s,5m,30m,2h,5h,10h,10h,24h,24h` (3 days 4 h).
    fn default() -> Self {
        "5s,5m,30m,2h,5h,10h,10h,24h,24h"
            .parse()
            .expect("the default schedule parses")
    }
}

impl std::str::FromStr for RetrySchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self(Vec::new()));
        }
        s.split(',')
            .map(|part| {
                humantime::parse_duration(part.trim()).map_err(|e| {
                    format!("retry schedule entry {part:?}: {e} (write delays like 5s,5m,2h)")
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl std::fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_parses_and_reports_errors() {
        let s: RetrySchedule = "5s, 5m,2h".parse().unwrap();
        assert_eq!(
            s.0,
            vec![
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(7200)
            ]
        );
        let err = "5s,soon".parse::<RetrySchedule>().unwrap_err();
        assert!(err.contains("\"soon\""), "{err}");
        let total: Duration = RetrySchedule::default().0.iter().sum();
        assert!(
            total > Duration::from_secs(2 * 24 * 3600)
                && total < Duration::from_secs(4 * 24 * 3600)
        );
    }
}
