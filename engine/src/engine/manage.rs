//! Managing what a tenant owns: list, update, pause, resume and delete
//! subscriptions, and create, list and revoke API keys.
//!
//! Every subscription change is written to the store first and then applied
//! to the in-memory matching index, so fan-out follows it at once. A paused
//! subscription still gets deliveries; the workers hold them in the schedule
//! and a resume makes them due at once, in event order. Those of a disabled
//! or deleted one are recorded dead by the workers when they fall due.

use std::collections::BTreeMap;

use base64::Engine as _;
use time::OffsetDateTime;

use super::{
    query::{page_cursor, validate_cursor},
    Engine,
};
use crate::audit::{self, action, AuditRecord};
use crate::input::{hash_key, validate_event_types, validate_headers, validate_limits};
use crate::{
    clock::now_ms,
    error::EngineError,
    ids,
    model::{SubscriptionStatus, WebhookSubscription},
    resources::{ApiKey, Scope},
};

/// Prefix of API key ids.
pub const API_KEY: &str = "key";

/// What a new API key is to be: every field optional.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    /// A name for humans (1 to 200 printable characters).
    pub name: Option<String>,
    /// Scope names (`events:write`, …; see [`Scope`]); `None`: full access
    /// (`["admin"]`). Given, it must list at least one known scope.
    pub scopes: Option<Vec<String>>,
    /// When the key stops authenticating; must be in the future.
    pub expires_at: Option<OffsetDateTime>,
}

impl NewApiKey {
    /// The validated scopes (sorted, without repeats) and expiry.
    fn validate(&self) -> Result<Vec<Scope>, EngineError> {
        if self
            .name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > 200 || n.chars().any(char::is_control))
        {
            return Err(EngineError::invalid(
                "name",
                "1 to 200 printable characters",
            ));
        }
        let scopes = match &self.scopes {
            None => Scope::full(),
            Some(names) => {
                let known = || Scope::join(&Scope::ALL).replace(' ', ", ");
                if names.is_empty() {
                    return Err(EngineError::invalid(
                        "scopes",
                        format!(
                            "list at least one scope ({}), or omit it for full access",
                            known()
                        ),
                    ));
                }
                let mut scopes = names
                    .iter()
                    .map(|n| {
                        Scope::parse(n).ok_or_else(|| {
                            EngineError::invalid(
                                "scopes",
                                format!("unknown scope {n:?}; known scopes: {}", known()),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                scopes.sort();
                scopes.dedup();
                scopes
            }
        };
        if self
            .expires_at
            .is_some_and(|t| t <= OffsetDateTime::now_utc())
        {
            return Err(EngineError::invalid(
                "expires_at",
                "must be in the future (RFC 3339), or omitted for a key that does not expire",
            ));
        }
        Ok(scopes)
    }
}

/// A change to a subscription; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionUpdate {
    /// New endpoint URL.
    pub url: Option<String>,
    /// New event type filters.
    pub event_types: Option<Vec<String>>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New custom headers (replace the old ones).
    pub headers: Option<BTreeMap<String, String>>,
    /// New rate limit (`Some(None)` removes it).
    pub rate_limit: Option<Option<u32>>,
    /// New delivery order (applies to deliveries created from now on).
    pub ordering: Option<crate::model::Ordering>,
    /// New payload form (applies to attempts made from now on).
    pub payload: Option<crate::model::PayloadForm>,
    /// New in-flight limit (`Some(None)` removes it).
    pub max_in_flight: Option<Option<u32>>,
    /// New attempt timeout in seconds (`Some(None)` removes it).
    pub timeout_seconds: Option<Option<u32>>,
    /// New payload filter (`Some(None)` removes it).
    pub filter: Option<Option<String>>,
    /// New signature scheme; moving to one that uses Ed25519 gives the
    /// subscription a key if it has none.
    pub signature: Option<crate::model::SignatureScheme>,
    /// New Kafka destination settings (`Some(None)` removes them).
    pub kafka: Option<Option<crate::kafka_target::KafkaSettings>>,
    /// New endpoint authentication (`Some(None)` removes it).
    pub auth: Option<Option<crate::endpoint_auth::EndpointAuth>>,
    /// New TLS settings (`Some(None)` removes them).
    pub tls: Option<Option<crate::endpoint_auth::ClientTls>>,
}

/// A page of subscriptions.
#[derive(Debug, Clone)]
pub struct SubscriptionPage {
    /// Newest first.
    pub data: Vec<WebhookSubscription>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

impl Engine {
    /// A tenant's subscriptions, newest first.
    pub async fn list_subscriptions(
        &self,
        tenant_id: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<SubscriptionPage, EngineError> {
        let cursor = validate_cursor(cursor, ids::SUBSCRIPTION)?;
        let mut data = self
            .store
            .list_subscriptions(tenant_id, cursor.as_deref(), limit + 1)
            .await?;
        let next_cursor = page_cursor(&mut data, limit, |s| s.id.clone());
        Ok(SubscriptionPage { data, next_cursor })
    }

    /// Changes a subscription's URL, filters, description, headers or rate
    /// limit. Everything is validated before anything changes.
    pub async fn update_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        update: SubscriptionUpdate,
    ) -> Result<WebhookSubscription, EngineError> {
        if let Some(url) = &update.url {
            self.validate_url(url).await?;
        }
        if let Some(types) = &update.event_types {
            validate_event_types(types)?;
        }
        if let Some(kafka) = &update.kafka {
            super::destination::validate_kafka_settings(update.url.as_deref(), kafka.as_ref())?;
        }
        if let Some(Some(d)) = &update.description {
            if d.len() > 1024 {
                return Err(EngineError::invalid("description", "at most 1024 bytes"));
            }
        }
        if let Some(h) = &update.headers {
            validate_headers(h)?;
        }
        validate_limits(
            update.rate_limit.flatten(),
            update.max_in_flight.flatten(),
            update.timeout_seconds.flatten(),
        )?;
        crate::input::validate_payload_filter(update.filter.as_ref().and_then(|f| f.as_deref()))?;
        let _guard = self.lock_subscription(id).await;
        if update.auth.is_some()
            || update.tls.is_some()
            || update.url.is_some()
            || update.headers.is_some()
        {
            // The settings must fit the subscription as it will be.
            let current = self.subscription(tenant_id, id).await?;
            super::destination::validate_endpoint_auth(
                &self.guard,
                update.url.as_deref().unwrap_or(&current.url),
                update.headers.as_ref().unwrap_or(&current.headers),
                update.auth.clone().unwrap_or(current.auth).as_ref(),
                update.tls.clone().unwrap_or(current.tls).as_ref(),
            )?;
        }
        let new_key = crate::ed25519::SigningKey::generate();
        self.change_subscription(tenant_id, id, action::SUBSCRIPTION_UPDATED, move |sub| {
            let update = update.clone();
            if let Some(scheme) = update.signature {
                sub.signature = scheme;
                if scheme.ed25519() && sub.signing_keys.is_empty() {
                    sub.signing_keys.push(crate::model::KeyEntry {
                        key: new_key.clone(),
                        expires_at: None,
                    });
                }
            }
            if let Some(url) = update.url {
                sub.url = url;
            }
            if let Some(types) = update.event_types {
                sub.event_types = types;
            }
            if let Some(d) = update.description {
                sub.description = d;
            }
            if let Some(h) = update.headers {
                sub.headers = h;
            }
            if let Some(r) = update.rate_limit {
                sub.rate_limit = r;
            }
            if let Some(p) = update.payload {
                sub.payload = p;
            }
            if let Some(o) = update.ordering {
                sub.ordering = o;
            }
            if let Some(m) = update.max_in_flight {
                sub.max_in_flight = m;
            }
            if let Some(t) = update.timeout_seconds {
                sub.timeout_seconds = t;
            }
            if let Some(f) = update.filter {
                sub.filter = f;
            }
            if let Some(k) = update.kafka {
                sub.kafka = k;
            }
            if let Some(a) = update.auth {
                sub.auth = a;
            }
            if let Some(t) = update.tls {
                sub.tls = t;
            }
        })
        .await
    }

    /// Pauses deliveries to a subscription: new events still create
    /// deliveries, which wait in the schedule until it is resumed.
    pub async fn pause_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<WebhookSubscription, EngineError> {
        let _guard = self.lock_subscription(id).await;
        self.change_subscription(tenant_id, id, action::SUBSCRIPTION_PAUSED, |sub| {
            sub.status = SubscriptionStatus::Paused;
        })
        .await
    }

    /// Resumes a paused (or disabled) subscription: its held deliveries are
    /// due at once. A failure to release them is returned (the subscription
    /// is active already; resume again, or they go at their re-check time).
    pub async fn resume_subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<WebhookSubscription, EngineError> {
        let sub = {
            let _guard = self.lock_subscription(id).await;
            self.change_subscription(tenant_id, id, action::SUBSCRIPTION_RESUMED, |sub| {
                sub.status = SubscriptionStatus::Active;
                sub.disabled_reason = None;
                sub.failing_since = None;
            })
            .await?
        };
        let released = self.store.release_held(id, now_ms(), usize::MAX).await?;
        tracing::info!(subscription_id = id, released, "held deliveries released");
        self.wake.notify_one();
        Ok(sub)
    }

    /// Deletes a subscription; its pending deliveries are dropped.
    pub async fn delete_subscription(&self, tenant_id: &str, id: &str) -> Result<(), EngineError> {
        let _guard = self.lock_subscription(id).await;
        let record = AuditRecord::new(tenant_id, action::SUBSCRIPTION_DELETED).subscription(id);
        if !audit::recorded(record, self.store.delete_subscription(tenant_id, id)).await? {
            return Err(EngineError::NotFound("subscription"));
        }
        self.subscriptions.remove(id);
        tracing::info!(tenant_id, subscription_id = id, "subscription deleted");
        Ok(())
    }

    /// Applies `change` to the stored subscription through the store's
    /// compare-and-set (it runs on the stored value, again if a concurrent
    /// writer got there first, so it never undoes a worker's auto-disable),
    /// then to the matching index, recording `what` (an [`action`]) in the
    /// audit trail. `NotFound` if there is no such subscription.
    pub(super) async fn change_subscription(
        &self,
        tenant_id: &str,
        id: &str,
        what: &'static str,
        mut change: impl FnMut(&mut WebhookSubscription) + Send + 'static,
    ) -> Result<WebhookSubscription, EngineError> {
        let record = AuditRecord::new(tenant_id, what).subscription(id);
        let (sub, _) = audit::recorded(
            record,
            self.store.modify_subscription(
                tenant_id,
                id,
                Box::new(move |sub| {
                    change(sub);
                    sub.updated_at = OffsetDateTime::now_utc();
                    true
                }),
            ),
        )
        .await?
        .ok_or(EngineError::NotFound("subscription"))?;
        self.subscriptions.upsert(sub.clone());
        tracing::info!(tenant_id, subscription_id = id, "{what}");
        Ok(sub)
    }

    // ---- API keys ----

    /// Adds an API key to a tenant; returns it with the key itself, which is
    /// shown only here (Herald keeps its SHA-256 hash).
    /// Bad input (a bad name, an unknown scope, an expiry not in the
    /// future) is `Invalid` and creates nothing.
    pub async fn create_api_key(
        &self,
        tenant_id: &str,
        request: NewApiKey,
    ) -> Result<(ApiKey, String), EngineError> {
        let scopes = request.validate()?;
        let (mut record, key) = new_key(tenant_id, request.name);
        record.scopes = scopes;
        record.expires_at = request.expires_at;
        let audited = AuditRecord::new(tenant_id, action::API_KEY_CREATED)
            .target(&record.id)
            .detail(
                "scopes",
                serde_json::to_value(&record.scopes).unwrap_or_default(),
            );
        audit::recorded(audited, self.store.create_api_key(&record, hash_key(&key))).await?;
        tracing::info!(tenant_id, key_id = %record.id, "API key created");
        Ok((record, key))
    }

    /// A tenant's API keys (never the keys themselves), oldest first, after
    /// the key id `cursor`; returns the page and the next cursor.
    pub async fn list_api_keys(
        &self,
        tenant_id: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<ApiKey>, Option<String>), EngineError> {
        let cursor = validate_cursor(cursor, API_KEY)?;
        if !self.store.tenant_exists(tenant_id).await? {
            return Err(EngineError::NotFound("tenant"));
        }
        let mut keys: Vec<ApiKey> = self
            .store
            .list_api_keys(tenant_id)
            .await?
            .into_iter()
            .filter(|k| cursor.as_ref().is_none_or(|c| &k.id > c))
            .take(limit + 1)
            .collect();
        let next = page_cursor(&mut keys, limit, |k| k.id.clone());
        Ok((keys, next))
    }

    /// Revokes an API key: it stops authenticating at once (through another
    /// process sharing the store, within a second: see [`super::tenants`]).
    pub async fn revoke_api_key(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<ApiKey, EngineError> {
        let record = AuditRecord::new(tenant_id, action::API_KEY_REVOKED).target(key_id);
        let revoke = self.store.revoke_api_key(tenant_id, key_id, now_ms());
        let key = audit::recorded(record, revoke)
            .await?
            .ok_or(EngineError::NotFound("API key"))?;
        self.keys.forget_all();
        tracing::info!(tenant_id, key_id, "API key revoked");
        Ok(key)
    }
}

/// A fresh key and its listing record.
pub(super) fn new_key(tenant_id: &str, name: Option<String>) -> (ApiKey, String) {
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let key = format!(
        "hk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let record = ApiKey {
        id: ids::new_id(API_KEY),
        tenant_id: tenant_id.to_string(),
        name,
        prefix: key[..10].to_string(),
        created_at: OffsetDateTime::now_utc(),
        revoked_at: None,
        scopes: Scope::full(),
        expires_at: None,
    };
    (record, key)
}
