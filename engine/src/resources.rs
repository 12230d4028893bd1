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
