//! Creating a subscription and rotating its signing secret.

use std::time::Duration;

use time::OffsetDateTime;

use crate::audit::{self, action, AuditRecord};
use crate::{
    ed25519::{PublicKey, SigningKey},
    error::EngineError,
    ids,
    input::{validate_event_types, validate_headers, validate_limits, NewSubscription},
    model::{KeyEntry, SecretEntry, SignatureScheme, SubscriptionStatus, WebhookSubscription},
    signing::SigningSecret,
};

use super::Engine;

/// Default grace period of a rotated secret.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The result of a secret rotation.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new current secret.
    pub secret: SigningSecret,
    /// Until when the previous secret keeps signing.
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// The public half of the new current Ed25519 key, when the subscription
    /// signs with Ed25519 (its previous key signs until the same time).
    pub public_key: Option<PublicKey>,
    /// Which signatures the subscription's deliveries carry.
    pub signature: SignatureScheme,
}

impl Engine {
    /// Creates a subscription.
    pub async fn subscribe(
        &self,
        tenant_id: &str,
        new: NewSubscription,
    ) -> Result<WebhookSubscription, EngineError> {
        self.validate_url(&new.url).await?;
        super::destination::validate_kafka_settings(Some(&new.url), new.kafka.as_ref())?;
        super::destination::validate_endpoint_auth(
            &self.guard,
            &new.url,
            &new.headers,
            new.auth.as_ref(),
            new.tls.as_ref(),
        )?;
        validate_event_types(&new.event_types)?;
        if new.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(EngineError::invalid("description", "at most 1024 bytes"));
        }
        validate_headers(&new.headers)?;
        validate_limits(new.rate_limit, new.max_in_flight, new.timeout_seconds)?;
        crate::input::validate_payload_filter(new.filter.as_deref())?;
        self.admit_subscription(tenant_id).await?;
        let secret = match &new.secret {
            Some(s) => SigningSecret::parse(s)
                .map_err(|e| EngineError::invalid("secret", e.to_string()))?,
            None => SigningSecret::generate(),
        };
        let now = OffsetDateTime::now_utc();
        let sub = WebhookSubscription {
            id: ids::new_id(ids::SUBSCRIPTION),
            tenant_id: tenant_id.to_string(),
            url: new.url,
            event_types: new.event_types,
            description: new.description,
            status: SubscriptionStatus::Active,
            disabled_reason: None,
            secrets: vec![SecretEntry {
                secret,
                expires_at: None,
            }],
            signature: new.signature,
            signing_keys: if new.signature.ed25519() {
                vec![KeyEntry {
                    key: SigningKey::generate(),
                    expires_at: None,
                }]
            } else {
                Vec::new()
            },
            headers: new.headers,
            rate_limit: new.rate_limit,
            ordering: new.ordering,
            payload: new.payload,
            max_in_flight: new.max_in_flight,
            timeout_seconds: new.timeout_seconds,
            filter: new.filter,
            kafka: new.kafka,
            auth: new.auth,
            tls: new.tls,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        let record =
            AuditRecord::new(tenant_id, action::SUBSCRIPTION_CREATED).subscription(&sub.id);
        audit::recorded(record, self.store.create_subscription(&sub)).await?;
        self.subscriptions.upsert(sub.clone());
        tracing::info!(tenant_id, subscription_id = %sub.id, "subscription created");
        Ok(sub)
    }

    /// Holds the change lock of subscription `id`.
    pub(super) async fn lock_subscription(&self, id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = crc32fast::hash(id.as_bytes()) as usize % self.subscription_locks.len();
        self.subscription_locks[stripe].lock().await
    }

    /// One subscription of a tenant (`NotFound` for another tenant's).
    pub async fn subscription(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<WebhookSubscription, EngineError> {
        self.store
            .get_subscription(tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("subscription"))
    }

    /// Makes `secret` (or a new one) current; the previous current secret
    /// keeps signing for `grace`, then stops. Expired secrets are dropped.
    /// A subscription that signs with Ed25519 gets a new key the same way.
    pub async fn rotate_secret(
        &self,
        tenant_id: &str,
        id: &str,
        grace: Option<Duration>,
        secret: Option<&str>,
    ) -> Result<Rotation, EngineError> {
        let grace = grace.unwrap_or(DEFAULT_GRACE);
        if grace > Duration::from_secs(30 * 24 * 3600) {
            return Err(EngineError::invalid(
                "grace_period_seconds",
                "at most 30 days (2592000)",
            ));
        }
        let new_secret = match secret {
            Some(s) => SigningSecret::parse(s)
                .map_err(|e| EngineError::invalid("secret", e.to_string()))?,
            None => SigningSecret::generate(),
        };
        let _guard = self.lock_subscription(id).await;
        let now = OffsetDateTime::now_utc();
        let expires = now + grace;
        let current = new_secret.clone();
        let new_key = SigningKey::generate();
        let rotate = move |sub: &mut WebhookSubscription| {
            let mut secrets = vec![SecretEntry {
                secret: current.clone(),
                expires_at: None,
            }];
            for mut old in sub.secrets.drain(..) {
                old.expires_at = Some(old.expires_at.map_or(expires, |t| t.min(expires)));
                if old.expires_at.is_some_and(|t| t > now) {
                    secrets.push(old);
                }
            }
            sub.secrets = secrets;
            if sub.signature.ed25519() {
                let mut keys = vec![KeyEntry {
                    key: new_key.clone(),
                    expires_at: None,
                }];
                for mut old in sub.signing_keys.drain(..) {
                    old.expires_at = Some(old.expires_at.map_or(expires, |t| t.min(expires)));
                    if old.expires_at.is_some_and(|t| t > now) {
                        keys.push(old);
                    }
                }
                sub.signing_keys = keys;
            }
            sub.updated_at = now;
            true
        };
        let record = AuditRecord::new(tenant_id, action::SUBSCRIPTION_SECRET_ROTATED)
            .subscription(id)
            .detail("grace_seconds", grace.as_secs());
        let modify = self
            .store
            .modify_subscription(tenant_id, id, Box::new(rotate));
        let (sub, _) = audit::recorded(record, modify)
            .await?
            .ok_or(EngineError::NotFound("subscription"))?;
        let public_key = sub
            .signing_keys
            .first()
            .filter(|_| sub.signature.ed25519())
            .map(|k| k.key.public_key());
        let signature = sub.signature;
        self.subscriptions.upsert(sub);
        tracing::info!(
            tenant_id,
            subscription_id = id,
            grace_seconds = grace.as_secs(),
            "secret rotated"
        );
        Ok(Rotation {
            secret: new_secret,
            previous_secret_expires_at: (!grace.is_zero()).then_some(expires),
            public_key,
            signature,
        })
    }

    pub(super) async fn validate_url(&self, raw: &str) -> Result<(), EngineError> {
        if crate::kafka_target::is_kafka_url(raw) {
            return self.validate_kafka_url(raw).await;
        }
        let url = self
            .guard
            .check_url(raw)
            .map_err(|e| EngineError::invalid("url", e.to_string()))?;
        if raw.len() > 2048 {
            return Err(EngineError::invalid("url", "at most 2048 bytes"));
        }
        // A name that resolves only to refused addresses can never be delivered to.
        if let Some(url::Host::Domain(host)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host((host, port)),
            )
            .await;
            if let Ok(Ok(addrs)) = lookup {
                let addrs: Vec<_> = addrs.collect();
                if !addrs.is_empty() && addrs.iter().all(|a| self.guard.check_ip(a.ip()).is_err()) {
                    return Err(EngineError::invalid(
                        "url",
                        format!("{host} resolves only to non-public addresses; allow them with HERALD_ALLOW_TARGETS"),
                    ));
                }
            }
        }
        Ok(())
    }
}
