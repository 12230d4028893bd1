//! The audit trail: who changed a tenant's configuration, what and when.
//!
//! Every change (a subscription created, changed, paused, resumed,
//! disabled, its secret rotated, deleted; an API key created or revoked; a
//! recovery or replay requested; an event type registered; quotas set) is
//! one append-only [`AuditRecord`]. Records name fields and ids, never a
//! secret or the value of a sensitive field.
//!
//! Two task-locals carry what a record needs from the caller to the store
//! without widening every store method:
//! - the [`Actor`], set by the API's authentication for the whole request
//!   ([`as_actor`]); a change made outside any request is Herald's own;
//! - the pending record of the change about to be written, set by the
//!   engine around the one store call that makes the change
//!   ([`recorded`]). The store takes it ([`take_pending`]) and writes it
//!   with the change: in the same transaction (SQLite), or write-ahead and
//!   withdrawn if the change is refused (CQL). A store call that makes no
//!   change writes no record.

use std::{cell::RefCell, future::Future};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Prefix of audit record ids.
pub const PREFIX: &str = "aud";

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A tenant API key (its id, never the key).
    ApiKey {
        /// The key's id (`key_…`).
        id: String,
    },
    /// The holder of the admin token.
    Admin,
    /// Herald itself (for example the auto-disable after failures).
    Herald,
}

/// The trail of operations on tenants themselves (a tenant's deletion),
/// which must outlive the tenant whose own trail goes with it: a reserved
/// id no tenant can have (tenant ids start with a letter or a digit).
/// `GET /api/v1/admin/audit` lists it.
pub const OPERATOR_TRAIL: &str = "_herald";

/// Actions recorded.
pub mod action {
    /// A subscription was created.
    pub const SUBSCRIPTION_CREATED: &str = "subscription.created";
    /// A subscription's settings changed (`details.fields` names them).
    pub const SUBSCRIPTION_UPDATED: &str = "subscription.updated";
    /// A subscription was paused.
    pub const SUBSCRIPTION_PAUSED: &str = "subscription.paused";
    /// A subscription was resumed.
    pub const SUBSCRIPTION_RESUMED: &str = "subscription.resumed";
    /// A subscription was disabled (`details.reason` says why).
    pub const SUBSCRIPTION_DISABLED: &str = "subscription.disabled";
    /// A subscription's signing secret was rotated (never the secret).
    pub const SUBSCRIPTION_SECRET_ROTATED: &str = "subscription.secret_rotated";
    /// A subscription was deleted.
    pub const SUBSCRIPTION_DELETED: &str = "subscription.deleted";
    /// An API key was created.
    pub const API_KEY_CREATED: &str = "api_key.created";
    /// An API key was revoked.
    pub const API_KEY_REVOKED: &str = "api_key.revoked";
    /// A recovery job was requested.
    pub const RECOVERY_REQUESTED: &str = "recovery.requested";
    /// A replay of one event was requested.
    pub const REPLAY_REQUESTED: &str = "replay.requested";
    /// An event-type schema version was registered.
    pub const EVENT_TYPE_REGISTERED: &str = "event_type.registered";
    /// The admin set a tenant's quotas.
    pub const TENANT_QUOTAS_SET: &str = "tenant.quotas_set";
    /// The admin deleted a tenant (`target`: the tenant). Kept in the
    /// [`OPERATOR_TRAIL`](super::OPERATOR_TRAIL), which outlives the tenant.
    pub const TENANT_DELETED: &str = "tenant.deleted";

    /// Every action, for validating filters.
    pub const ALL: [&str; 14] = [
        SUBSCRIPTION_CREATED,
        SUBSCRIPTION_UPDATED,
        SUBSCRIPTION_PAUSED,
        SUBSCRIPTION_RESUMED,
        SUBSCRIPTION_DISABLED,
        SUBSCRIPTION_SECRET_ROTATED,
        SUBSCRIPTION_DELETED,
        API_KEY_CREATED,
        API_KEY_REVOKED,
        RECOVERY_REQUESTED,
        REPLAY_REQUESTED,
        EVENT_TYPE_REGISTERED,
        TENANT_QUOTAS_SET,
        TENANT_DELETED,
    ];
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// `aud_…`, time-ordered.
    pub id: String,
    /// The tenant whose configuration changed.
    pub tenant_id: String,
    /// When (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: Actor,
    /// What ([`action`]).
    pub action: String,
    /// The subscription concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// Another resource concerned (a key, a job, an event, an event type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Non-secret details (field names, a reason, a version).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: Value,
}

impl AuditRecord {
    /// A record of `action` on `tenant_id` now, by the current [`actor`].
    pub fn new(tenant_id: &str, action: &str) -> Self {
        let id = crate::ids::new_id(PREFIX);
        Self {
            at: id_time(&id),
            id,
            tenant_id: tenant_id.to_string(),
            actor: actor(),
            action: action.to_string(),
            subscription_id: None,
            target: None,
            details: Value::Object(Default::default()),
        }
    }

    /// Names the subscription concerned.
    pub fn subscription(mut self, id: &str) -> Self {
        self.subscription_id = Some(id.to_string());
        self
    }

    /// Names the other resource concerned.
    pub fn target(mut self, id: &str) -> Self {
        self.target = Some(id.to_string());
        self
    }

    /// Adds a detail.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(map) = &mut self.details {
            map.insert(key.to_string(), value.into());
        }
        self
    }

    /// Unix milliseconds of `at`.
    pub fn at_ms(&self) -> i64 {
        (self.at.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The time inside a UUIDv7 id (its first 48 bits, unix milliseconds), so
/// a record's `at` and its id's order agree.
fn id_time(id: &str) -> OffsetDateTime {
    let ms = id
        .split_once('_')
        .and_then(|(_, hex)| i64::from_str_radix(hex.get(..12)?, 16).ok())
        .unwrap_or_else(crate::clock::now_ms);
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// What a listing keeps.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<String>,
    /// Only records about this subscription.
    pub subscription_id: Option<String>,
    /// Only records at or after these unix milliseconds.
    pub since_ms: Option<i64>,
    /// Only records before these unix milliseconds.
    pub until_ms: Option<i64>,
}

impl AuditFilter {
    /// Whether `r` passes the filter.
    pub fn keeps(&self, r: &AuditRecord) -> bool {
        let ms = r.at_ms();
        self.action.as_ref().is_none_or(|a| *a == r.action)
            && self
                .subscription_id
                .as_ref()
                .is_none_or(|s| r.subscription_id.as_ref() == Some(s))
            && self.since_ms.is_none_or(|s| ms >= s)
            && self.until_ms.is_none_or(|u| ms < u)
    }
}

tokio::task_local! {
    static ACTOR: Actor;
    static PENDING: RefCell<Option<AuditRecord>>;
}

/// Runs `fut` with `actor` as the author of every change it makes.
pub async fn as_actor<F: Future>(actor: Actor, fut: F) -> F::Output {
    ACTOR.scope(actor, fut).await
}

/// The author of changes made now: the request's, else Herald.
pub fn actor() -> Actor {
    ACTOR.try_with(Clone::clone).unwrap_or(Actor::Herald)
}

/// Runs `fut` (one store call that makes a change) with `record` pending:
/// the store writes it with the change, or not at all if nothing changes.
pub async fn recorded<F: Future>(record: AuditRecord, fut: F) -> F::Output {
    PENDING.scope(RefCell::new(Some(record)), fut).await
}

/// The record pending for the change the store is about to write (once).
pub fn take_pending() -> Option<AuditRecord> {
    PENDING.try_with(|p| p.borrow_mut().take()).ok().flatten()
}

/// The names of the top-level fields whose values differ between two JSON
/// objects (never the values), sorted.
pub fn changed_fields(before: &Value, after: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut names: Vec<String> = b
        .keys()
        .chain(a.keys())
        .filter(|k| b.get(*k) != a.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `record` with `details.fields`: the names of the subscription's fields
/// that differ from `before` (its JSON form before the change), leaving out
/// `updated_at`; no names if either side did not serialize.
pub fn with_changed_fields<T: Serialize>(
    record: AuditRecord,
    before: Option<Result<Value, serde_json::Error>>,
    after: &T,
) -> AuditRecord {
    let fields = match (before, serde_json::to_value(after)) {
        (Some(Ok(b)), Ok(a)) => changed_fields(&b, &a),
        _ => Vec::new(),
    };
    let fields: Vec<String> = fields.into_iter().filter(|f| f != "updated_at").collect();
    record.detail("fields", fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn actor_and_pending_flow_through_task_locals() {
        assert_eq!(actor(), Actor::Herald);
        assert!(take_pending().is_none());
        let admin = as_actor(Actor::Admin, async { AuditRecord::new("t", "x") }).await;
        assert_eq!(admin.actor, Actor::Admin);
        let taken = recorded(admin.clone(), async { (take_pending(), take_pending()) }).await;
        assert_eq!(taken, (Some(admin), None));
    }

    #[test]
    fn records_serialize_with_a_tagged_actor() {
        let r = AuditRecord::new("t", action::API_KEY_CREATED).target("key_1");
        let mut r = r;
        r.actor = Actor::ApiKey { id: "key_9".into() };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["actor"],
            serde_json::json!({"kind": "api_key", "id": "key_9"})
        );
        assert!(v["id"].as_str().unwrap().starts_with("aud_"));
        assert_eq!(serde_json::from_value::<AuditRecord>(v).unwrap(), r);
    }

    #[test]
    fn changed_fields_names_only_differences() {
        let b = serde_json::json!({"url": "a", "secret": "s1", "same": 1});
        let a = serde_json::json!({"url": "b", "secret": "s2", "same": 1, "new": true});
        assert_eq!(changed_fields(&b, &a), ["new", "secret", "url"]);
    }
}
