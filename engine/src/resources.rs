//! Tenant-owned resources beyond the three data artifacts: API keys, the
//! event-type catalogue and recovery jobs.
//!
//! Field names are wire names (the API serialises these types as they are).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An API key as listed: never the key itself, which Herald keeps only as a
/// SHA-256 hash and shows once, when it is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    /// `key_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// A name given at creation, for humans.
    pub name: Option<String>,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was revoked; a revoked key no longer authenticates.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// What the key may do. A key stored before keys had scopes has
    /// `["admin"]`: full access, as it had.
    #[serde(default = "Scope::full")]
    pub scopes: Vec<Scope>,
    /// When it stops authenticating (401 from then on); `null`: never.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// What an API key may do. Every tenant route needs one scope; `admin`
/// grants every scope (it manages keys, so it could mint any of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Scope {
    /// Emit events (single and batch); register event-type schemas.
    #[serde(rename = "events:write")]
    EventsWrite,
    /// Read events, event types, recovery jobs; follow the event stream.
    #[serde(rename = "events:read")]
    EventsRead,
    /// Re-deliver: replay an event, recover a time range.
    #[serde(rename = "events:replay")]
    EventsReplay,
    /// Read subscriptions and the delivery log.
    #[serde(rename = "webhooks:read")]
    WebhooksRead,
    /// Create, change, pause, resume, delete subscriptions; rotate secrets.
    #[serde(rename = "webhooks:write")]
    WebhooksWrite,
    /// Everything, including the tenant's API keys.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 6] = [
        Scope::EventsWrite,
        Scope::EventsRead,
        Scope::EventsReplay,
        Scope::WebhooksRead,
        Scope::WebhooksWrite,
        Scope::Admin,
    ];

    /// The wire name (`events:write`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::EventsRead => "events:read",
            Scope::EventsReplay => "events:replay",
            Scope::WebhooksRead => "webhooks:read",
            Scope::WebhooksWrite => "webhooks:write",
            Scope::Admin => "admin",
        }
    }

    /// The scope of a wire name.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The scopes of a key with full access: `["admin"]`.
    pub fn full() -> Vec<Scope> {
        vec![Scope::Admin]
    }

    /// Whether `granted` allows what `self` guards.
    pub fn granted_by(self, granted: &[Scope]) -> bool {
        granted.iter().any(|g| *g == self || *g == Scope::Admin)
    }

    /// The stored form: wire names separated by spaces.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads the stored form; `None` (a key stored before scopes existed)
    /// is full access. Names this version does not know are dropped (they
    /// grant nothing here).
    pub fn split(stored: Option<&str>) -> Vec<Scope> {
        match stored {
            None => Scope::full(),
            Some(s) => s.split_whitespace().filter_map(Scope::parse).collect(),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What authenticating a live (not revoked) key yields.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyGrant {
    /// The key's tenant.
    pub tenant_id: String,
    /// The key's id.
    pub key_id: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// When it expires (unix ms), if ever.
    pub expires_at_ms: Option<i64>,
}

impl KeyGrant {
    /// Whether the key has expired at `now_ms`.
    pub fn expired_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }
}

/// One registered version of an event type: the JSON Schema its payloads
/// must satisfy. Versions are immutable once registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventTypeSchema {
    /// Owning tenant.
    pub tenant_id: String,
    /// Dotted event type.
    pub event_type: String,
    /// The payload schema version this schema is for.
    pub schema_version: u32,
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise).
    pub schema: serde_json::Value,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// State of a recovery job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RecoveryStatus {
    /// Still scheduling replays.
    Running,
    /// Every replay is scheduled (`done` keeps counting their completion).
    Completed,
}

/// Where a recovery finds the events it re-delivers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RecoverySource {
    /// The subscription's delivery history: events it was delivered (or
    /// attempted) in the range.
    #[default]
    Deliveries,
    /// The event log: every event of the tenant appended in the range that
    /// the subscription matches, read by timestamp a page at a time (also
    /// events the subscription never saw, e.g. from before it existed).
    Log,
}

/// A bulk recovery: re-delivers, as replays, what one subscription had in a
/// time range. Durable: after a restart it resumes where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryJob {
    /// `rcv_…`.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The subscription recovered.
    pub subscription_id: String,
    /// Start of the range (events received at or after).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// End of the range (events received before).
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Only events whose latest delivery outcome is `failed` or `dead`
    /// (with the `deliveries` source).
    pub only_failed: bool,
    /// Where the events come from.
    #[serde(default)]
    pub source: RecoverySource,
    /// Lifecycle state.
    pub status: RecoveryStatus,
    /// Events to re-deliver, counted when the job was created (with the
    /// `log` source: the records of the range in the tenant's partition, an
    /// upper bound; other tenants' records there are skipped).
    pub total: u64,
    /// Replays scheduled so far.
    pub scheduled: u64,
    /// Scheduled replays whose delivery is finished (delivered or dead).
    pub done: u64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last progress.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A recovery candidate: an event the subscription had, and the latest
/// delivery of it there (the replay links to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryCandidate {
    /// The event.
    pub event_id: String,
    /// Its latest delivery to the subscription.
    pub delivery_id: String,
}

/// A tenant's limits, set by the Herald admin; an absent limit is none
/// (beyond the server's own, such as the 256 KiB payload limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantQuotas {
    /// Subscriptions the tenant may have at once; creating one more is
    /// refused (422 `quota-exceeded`).
    #[serde(default)]
    pub max_subscriptions: Option<u32>,
    /// Largest event payload, in bytes of JSON, when below the server's
    /// limit; a larger one is refused (422 `quota-exceeded`).
    #[serde(default)]
    pub max_event_bytes: Option<u32>,
    /// Events per second the tenant may emit, counted per API process
    /// over one second (a batch counts each event); past it emits are
    /// refused with 429 and `Retry-After`, and nothing of them is accepted.
    #[serde(default)]
    pub events_per_second: Option<u32>,
}
