//! Per-tenant quotas: the admin sets them ([`TenantQuotas`]), the emit and
//! subscribe paths enforce them.
//!
//! Quotas are read through a cache that keeps each tenant's for
//! [`CACHE_FOR`], so a change made through another process applies within
//! that (a change made here applies at once). The events-per-second quota
//! is a rate limiter per tenant and process (GCRA, a burst of one second's
//! worth): N API replicas admit up to N times the rate in all. The
//! subscription count is checked against the subscription index, which
//! follows the store.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, Quota, RateLimiter,
};
use parking_lot::Mutex;

use super::Engine;
use crate::audit::{self, action, AuditRecord};
use crate::{
    error::EngineError, input::MAX_PAYLOAD_BYTES, model::DomainEvent, resources::TenantQuotas,
};

/// How long a tenant's quotas are cached.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Quotas and rate limiters of the tenants seen lately.
#[derive(Default)]
pub(super) struct QuotaCache {
    tenants: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    quotas: Arc<TenantQuotas>,
    read_at: Instant,
    /// The events-per-second limiter, with the rate it was made for.
    rate: Option<(u32, Arc<DefaultDirectRateLimiter>)>,
}

impl QuotaCache {
    /// Forgets a tenant (deleted).
    pub(super) fn forget(&self, tenant: &str) {
        self.tenants.lock().remove(tenant);
    }

    fn fresh(&self, tenant: &str) -> Option<Arc<TenantQuotas>> {
        let tenants = self.tenants.lock();
        let c = tenants.get(tenant)?;
        (c.read_at.elapsed() < CACHE_FOR).then(|| c.quotas.clone())
    }

    fn put(&self, tenant: &str, quotas: TenantQuotas) -> Arc<TenantQuotas> {
        let quotas = Arc::new(quotas);
        let mut tenants = self.tenants.lock();
        let entry = tenants.entry(tenant.to_string()).or_insert_with(|| Cached {
            quotas: quotas.clone(),
            read_at: Instant::now(),
            rate: None,
        });
        entry.quotas = quotas.clone();
        entry.read_at = Instant::now();
        quotas
    }

    /// The tenant's limiter for `rate` events per second (kept while the
    /// rate stays the same, so its state carries over cache refreshes).
    fn limiter(&self, tenant: &str, rate: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
        let mut tenants = self.tenants.lock();
        let entry = tenants.entry(tenant.to_string()).or_insert_with(|| Cached {
            quotas: Arc::default(),
            read_at: Instant::now() - CACHE_FOR,
            rate: None,
        });
        match &entry.rate {
            Some((r, l)) if *r == rate.get() => l.clone(),
            _ => {
                let l = Arc::new(RateLimiter::direct(Quota::per_second(rate)));
                entry.rate = Some((rate.get(), l.clone()));
                l
            }
        }
    }
}

impl Engine {
    /// A tenant's quotas; `NotFound` if there is no such tenant.
    pub async fn tenant_quotas(&self, tenant_id: &str) -> Result<TenantQuotas, EngineError> {
        let quotas = self
            .store
            .tenant_quotas(tenant_id)
            .await?
            .ok_or(EngineError::NotFound("tenant"))?;
        self.quotas.put(tenant_id, quotas.clone());
        Ok(quotas)
    }

    /// Replaces a tenant's quotas (a limit left out is lifted); `NotFound`
    /// if there is no such tenant.
    pub async fn set_tenant_quotas(
        &self,
        tenant_id: &str,
        quotas: TenantQuotas,
    ) -> Result<TenantQuotas, EngineError> {
        validate(&quotas)?;
        let record = AuditRecord::new(tenant_id, action::TENANT_QUOTAS_SET)
            .detail("quotas", serde_json::to_value(&quotas).unwrap_or_default());
        audit::recorded(record, self.store.set_tenant_quotas(tenant_id, &quotas)).await?;
        self.quotas.put(tenant_id, quotas.clone());
        tracing::info!(tenant_id, ?quotas, "tenant quotas set");
        Ok(quotas)
    }

    /// The tenant's quotas as enforced (cached; an unknown tenant has none).
    async fn enforced_quotas(&self, tenant_id: &str) -> Result<Arc<TenantQuotas>, EngineError> {
        if let Some(q) = self.quotas.fresh(tenant_id) {
            return Ok(q);
        }
        let quotas = self
            .store
            .tenant_quotas(tenant_id)
            .await?
            .unwrap_or_default();
        Ok(self.quotas.put(tenant_id, quotas))
    }

    /// Checks `events` (valid, about to be appended) against the tenant's
    /// payload-size and rate quotas. Nothing of a refused call is accepted.
    pub(super) async fn admit_events(
        &self,
        tenant_id: &str,
        events: &[DomainEvent],
    ) -> Result<(), EngineError> {
        let quotas = self.enforced_quotas(tenant_id).await?;
        if let Some(max) = quotas.max_event_bytes {
            for (i, e) in events.iter().enumerate() {
                let size = e.payload.size();
                if size > max as usize {
                    let at = if events.len() > 1 {
                        format!("events[{i}].payload")
                    } else {
                        "payload".into()
                    };
                    return Err(EngineError::QuotaExceeded {
                        field: if events.len() > 1 {
                            "events"
                        } else {
                            "payload"
                        },
                        message: format!(
                            "{at} is {size} bytes; this tenant's quota is {max} bytes per event"
                        ),
                        retry_after: None,
                    });
                }
            }
        }
        let (Some(rate), Some(n)) = (
            quotas.events_per_second.and_then(NonZeroU32::new),
            NonZeroU32::new(events.len() as u32),
        ) else {
            return Ok(());
        };
        match self.quotas.limiter(tenant_id, rate).check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(EngineError::QuotaExceeded {
                field: "tenant",
                message: format!(
                    "this tenant may emit {rate} events per second; retry after the time given in Retry-After"
                ),
                retry_after: Some(not_until.wait_time_from(DefaultClock::default().now())),
            }),
            Err(_) => Err(EngineError::QuotaExceeded {
                field: "events",
                message: format!(
                    "a batch of {n} events is more than this tenant's {rate} events per second; send smaller batches"
                ),
                retry_after: None,
            }),
        }
    }

    /// Checks that the tenant may have one more subscription.
    pub(super) async fn admit_subscription(&self, tenant_id: &str) -> Result<(), EngineError> {
        let quotas = self.enforced_quotas(tenant_id).await?;
        let Some(max) = quotas.max_subscriptions else {
            return Ok(());
        };
        let have = self.subscriptions.count_of(tenant_id);
        if have >= max as usize {
            return Err(EngineError::QuotaExceeded {
                field: "tenant",
                message: format!(
                    "this tenant has {have} subscriptions and its quota is {max}; delete one first"
                ),
                retry_after: None,
            });
        }
        Ok(())
    }
}

/// Refuses limits that could never be met or exceed the server's own.
fn validate(q: &TenantQuotas) -> Result<(), EngineError> {
    if q.max_event_bytes
        .is_some_and(|b| b == 0 || b as usize > MAX_PAYLOAD_BYTES)
    {
        return Err(EngineError::invalid(
            "max_event_bytes",
            format!("give 1 to {MAX_PAYLOAD_BYTES} (the server's own limit), or null for none"),
        ));
    }
    if q.events_per_second == Some(0) {
        return Err(EngineError::invalid(
            "events_per_second",
            "give at least 1, or null for none",
        ));
    }
    Ok(())
}
