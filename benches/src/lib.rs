//! Fixtures shared by the criterion benchmarks in `benches/`.
//!
//! Run them all with `cargo bench -p herald-benches`, or one with
//! `--bench NAME` (signing, matching, envelope, log_append, log_open,
//! store_write, pipeline). Figures and the machine they were taken on are in
//! docs/performance.md.

use std::collections::BTreeMap;

use herald_engine::{
    ids,
    model::{
        DomainEvent, EventSource, Outcome, ScheduledDelivery, SecretEntry, SubscriptionStatus,
        Trigger, WebhookDeliveryLog, WebhookSubscription,
    },
    signing::SigningSecret,
};
use time::OffsetDateTime;

/// An event of `tenant` with a payload of about `payload_bytes` of JSON.
pub fn event(tenant: &str, event_type: &str, payload_bytes: usize) -> DomainEvent {
    let now = OffsetDateTime::now_utc();
    DomainEvent {
        id: ids::new_id(ids::EVENT),
        tenant_id: tenant.into(),
        event_type: event_type.into(),
        schema_version: 1,
        dedupe_key: None,
        occurred_at: now,
        received_at: now,
        payload: serde_json::json!({ "work_order": 42, "pad": "x".repeat(payload_bytes.saturating_sub(30)) }).into(),
        source: EventSource::Api,
        aggregate_type: None,
        aggregate_id: None,
        trace_id: None,
    }
}

/// An active subscription of `tenant` to `filters`.
pub fn subscription(tenant: &str, url: &str, filters: &[String]) -> WebhookSubscription {
    let now = OffsetDateTime::now_utc();
    WebhookSubscription {
        id: ids::new_id(ids::SUBSCRIPTION),
        tenant_id: tenant.into(),
        url: url.into(),
        event_types: filters.to_vec(),
        description: None,
        status: SubscriptionStatus::Active,
        disabled_reason: None,
        secrets: vec![SecretEntry {
            secret: SigningSecret::generate(),
            expires_at: None,
        }],
        signature: Default::default(),
        signing_keys: Vec::new(),
        headers: BTreeMap::new(),
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

/// A first-attempt delivery of `event` to `subscription_id`, due now.
pub fn delivery(event: &DomainEvent, subscription_id: &str) -> ScheduledDelivery {
    ScheduledDelivery {
        delivery_id: ids::new_id(ids::DELIVERY),
        tenant_id: event.tenant_id.clone(),
        event_id: event.id.clone(),
        subscription_id: subscription_id.into(),
        attempt: 1,
        replay_of: None,
        is_replay: false,
        due_at_ms: 0,
        seq: 0,
        ordered: false,
    }
}

/// A successful attempt record of `d`.
pub fn attempt(d: &ScheduledDelivery, url: &str) -> WebhookDeliveryLog {
    WebhookDeliveryLog {
        id: ids::new_id(ids::ATTEMPT),
        delivery_id: d.delivery_id.clone(),
        event_id: d.event_id.clone(),
        subscription_id: d.subscription_id.clone(),
        tenant_id: d.tenant_id.clone(),
        attempt: 1,
        trigger: Trigger::Initial,
        replay_of: None,
        url: url.into(),
        created_at: OffsetDateTime::now_utc(),
        status_code: Some(200),
        latency_ms: Some(1),
        response_body: Some("ok".into()),
        location: None,
        error: None,
        error_message: None,
        outcome: Outcome::Delivered,
        next_attempt_at: None,
    }
}
