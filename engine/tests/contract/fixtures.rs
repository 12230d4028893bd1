//! Values the contract tests store.

use herald_engine::{
    clock::now_ms,
    ids,
    log::LogPosition,
    model::{
        DomainEvent, EventSource, Outcome, ScheduledDelivery, SubscriptionStatus, Trigger,
        WebhookDeliveryLog, WebhookSubscription,
    },
    resources::ApiKey,
};
use serde_json::json;
use time::OffsetDateTime;

/// The log's first position (the store only keeps it).
pub const POSITION: LogPosition = LogPosition {
    partition: 0,
    offset: 0,
};

/// A new event of `tenant` without a dedupe key.
pub fn event(tenant: &str, event_type: &str) -> DomainEvent {
    let now = OffsetDateTime::now_utc();
    DomainEvent {
        id: ids::new_id(ids::EVENT),
        tenant_id: tenant.into(),
        event_type: event_type.into(),
        schema_version: 1,
        dedupe_key: None,
        occurred_at: now,
        received_at: now,
        payload: json!({ "n": 1 }).into(),
        source: EventSource::Api,
        aggregate_type: None,
        aggregate_id: None,
        trace_id: None,
    }
}

/// A new active subscription of `tenant`.
pub fn subscription(tenant: &str) -> WebhookSubscription {
    let now = OffsetDateTime::now_utc();
    WebhookSubscription {
        id: ids::new_id(ids::SUBSCRIPTION),
        tenant_id: tenant.into(),
        url: "https://example.com/hook".into(),
        event_types: vec!["order.*".into()],
        description: None,
        status: SubscriptionStatus::Active,
        disabled_reason: None,
        secrets: Vec::new(),
        signature: Default::default(),
        signing_keys: Vec::new(),
        headers: Default::default(),
        rate_limit: None,
        ordering: Default::default(),
        payload: Default::default(),
        max_in_flight: None,
        timeout_seconds: None,
        filter: None,
        kafka: None,
        auth: None,
        tls: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    }
}

/// A first attempt of `event` to `sub`, due at `due_ms`.
pub fn delivery(event: &DomainEvent, sub: &str, due_ms: i64) -> ScheduledDelivery {
    ScheduledDelivery {
        delivery_id: ids::new_id(ids::DELIVERY),
        tenant_id: event.tenant_id.clone(),
        event_id: event.id.clone(),
        subscription_id: sub.into(),
        attempt: 1,
        replay_of: None,
        is_replay: false,
        due_at_ms: due_ms,
        seq: 0,
        ordered: false,
    }
}

/// The record of an attempt of `d` ending in `outcome`.
pub fn attempt(d: &ScheduledDelivery, outcome: Outcome) -> WebhookDeliveryLog {
    WebhookDeliveryLog {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id: d.delivery_id.clone(),
        event_id: d.event_id.clone(),
        subscription_id: d.subscription_id.clone(),
        tenant_id: d.tenant_id.clone(),
        attempt: d.attempt,
        trigger: Trigger::Initial,
        replay_of: None,
        url: "https://example.com/hook".into(),
        created_at: OffsetDateTime::now_utc(),
        status_code: Some(if outcome == Outcome::Delivered {
            200
        } else {
            500
        }),
        latency_ms: Some(1),
        response_body: None,
        location: None,
        error: None,
        error_message: None,
        outcome,
        next_attempt_at: None,
    }
}

/// An API key of `tenant` (its hash is the caller's).
pub fn key(id: &str, tenant: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        tenant_id: tenant.into(),
        name: Some("ci".into()),
        prefix: "hk_abcd".into(),
        created_at: OffsetDateTime::now_utc(),
        revoked_at: None,
        scopes: herald_engine::resources::Scope::full(),
        expires_at: None,
    }
}

/// Now, in unix milliseconds.
pub fn now() -> i64 {
    now_ms()
}
