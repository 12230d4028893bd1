//! Tenant deletion in CQL. The `deleting` mark is a conditional write; the
//! tenant's keys are removed right after it (authentication rows first).
//! The purge walks what the tenant owns through the tables partitioned by
//! tenant (keys, subscriptions, events and logs by day, event types,
//! recovery jobs, audit by day) and deletes the rows those point to in the
//! tables keyed otherwise (events by id, dedupe claims, logs by event and
//! by subscription, ordered and held deliveries) before the partitions
//! that name them, so a purge interrupted by a crash finds them again. The
//! schedule has no tenant index: its rows of the tenant are found by a
//! filtered scan (an admin operation, run once per deletion). `limit` is
//! not applied: one call deletes everything it finds.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::{day_of_ms, decode, ScyllaStore};
use crate::{
    model::{DomainEvent, WebhookDeliveryLog},
    store::{StoreError, TenantPurgeStore, TenantState},
};

fn state_of(raw: Option<String>) -> TenantState {
    match raw.as_deref() {
        None => TenantState::Active,
        Some("deleted") => TenantState::Deleted,
        Some(_) => TenantState::Deleting,
    }
}

impl ScyllaStore {
    /// The tenants whose state passes `keep` (a scan of the small
    /// `tenants` table).
    async fn tenants_where(
        &self,
        keep: impl Fn(TenantState) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        self.scan(
            "SELECT tenant_id, state FROM tenants",
            (),
            |(id, state): (String, Option<String>)| {
                if keep(state_of(state)) {
                    out.push(id);
                }
                Ok(())
            },
        )
        .await?;
        out.sort();
        Ok(out)
    }

    /// Removes the tenant's API keys: authentication rows, then the listing.
    async fn purge_keys(&self, tenant: &str) -> Result<usize, StoreError> {
        let mut hashes = Vec::new();
        self.scan(
            "SELECT key_hash FROM api_keys_by_tenant WHERE tenant_id = ?",
            (tenant,),
            |(hash,): (Vec<u8>,)| {
                hashes.push(hash);
                Ok(())
            },
        )
        .await?;
        for hash in &hashes {
            self.exec("DELETE FROM api_keys WHERE key_hash = ?", (hash,))
                .await?;
        }
        self.exec(
            "DELETE FROM api_keys_by_tenant WHERE tenant_id = ?",
            (tenant,),
        )
        .await?;
        Ok(hashes.len())
    }

    /// The days a history table may hold, newest first.
    fn history_days(&self, keep_days: i32) -> impl Iterator<Item = i32> {
        let today = day_of_ms(crate::clock::now_ms());
        (today - keep_days - 1..=today + 1).rev()
    }

    /// Subscriptions and pending deliveries; returns the rows deleted and
    /// adds every subscription id seen to `subs`.
    async fn purge_subscriptions(
        &self,
        tenant: &str,
        subs: &mut BTreeSet<String>,
    ) -> Result<usize, StoreError> {
        let mut found = Vec::new();
        self.scan(
            "SELECT id FROM subscriptions WHERE tenant_id = ?",
            (tenant,),
            |(id,): (String,)| {
                found.push(id);
                Ok(())
            },
        )
        .await?;
        let mut deliveries = Vec::new();
        self.scan(
            "SELECT delivery_id, subscription_id, due_at FROM schedule WHERE tenant_id = ? ALLOW FILTERING",
            (tenant,),
            |(delivery, sub, due): (String, Option<String>, Option<i64>)| {
                deliveries.push((delivery, sub, due));
                Ok(())
            },
        )
        .await?;
        subs.extend(found.iter().cloned());
        subs.extend(deliveries.iter().filter_map(|(_, s, _)| s.clone()));
        for sub in subs.iter() {
            self.exec(
                "DELETE FROM schedule_order WHERE subscription_id = ?",
                (sub,),
            )
            .await?;
            self.exec(
                "DELETE FROM schedule_held WHERE subscription_id = ?",
                (sub,),
            )
            .await?;
        }
        // The due index first: its row is found through the schedule's.
        for (delivery, _, due) in &deliveries {
            if let Some(due) = due {
                self.unindex_due(delivery, *due).await?;
            }
            self.exec("DELETE FROM schedule WHERE delivery_id = ?", (delivery,))
                .await?;
        }
        if !found.is_empty() {
            self.exec("DELETE FROM subscriptions WHERE tenant_id = ?", (tenant,))
                .await?;
            self.bump_subscriptions_version().await?;
        }
        Ok(found.len() + deliveries.len())
    }

    /// Events (by day and by id), their dedupe claims and logs by event.
    async fn purge_events(&self, tenant: &str) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for day in self.history_days(self.retention_days) {
            let mut events = Vec::new();
            self.scan(
                "SELECT body FROM events_by_day WHERE tenant_id = ? AND day = ?",
                (tenant, day),
                |(body,): (String,)| {
                    events.push(decode::<DomainEvent>(&body)?);
                    Ok(())
                },
            )
            .await?;
            if events.is_empty() {
                continue;
            }
            for e in &events {
                self.exec("DELETE FROM events WHERE id = ?", (&e.id,))
                    .await?;
                if let Some(key) = &e.dedupe_key {
                    self.exec(
                        "DELETE FROM dedupe WHERE tenant_id = ? AND dedupe_key = ?",
                        (tenant, key),
                    )
                    .await?;
                }
            }
            self.purge_logs_by_event(tenant, events.iter().map(|e| &*e.id))
                .await?;
            self.exec(
                "DELETE FROM events_by_day WHERE tenant_id = ? AND day = ?",
                (tenant, day),
            )
            .await?;
            deleted += events.len();
        }
        Ok(deleted)
    }

    /// The attempts of `events` listed by event: each ten-second slot's
    /// partition once, and the older table's partition per event.
    async fn purge_logs_by_event<'e>(
        &self,
        tenant: &str,
        events: impl Iterator<Item = &'e str>,
    ) -> Result<(), StoreError> {
        let events: BTreeSet<&str> = events.collect();
        let slots: BTreeSet<i64> = events.iter().map(|e| super::event_slot(e)).collect();
        for slot in slots {
            self.exec(
                "DELETE FROM logs_by_event_slot WHERE tenant_id = ? AND slot = ?",
                (tenant, slot),
            )
            .await?;
        }
        if self.legacy_by_event {
            for event in events {
                self.exec(
                    "DELETE FROM logs_by_event WHERE tenant_id = ? AND event_id = ?",
                    (tenant, event),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Delivery logs three ways and the per-subscription state.
    async fn purge_logs(
        &self,
        tenant: &str,
        subs: &mut BTreeSet<String>,
    ) -> Result<usize, StoreError> {
        let mut days = Vec::new();
        for day in self.history_days(self.retention_days) {
            let mut logs = Vec::new();
            self.scan(
                "SELECT body FROM logs_by_tenant WHERE tenant_id = ? AND day = ?",
                (tenant, day),
                |(body,): (String,)| {
                    logs.push(decode::<WebhookDeliveryLog>(&body)?);
                    Ok(())
                },
            )
            .await?;
            subs.extend(logs.iter().map(|log| log.subscription_id.clone()));
            self.purge_logs_by_event(tenant, logs.iter().map(|log| &*log.event_id))
                .await?;
            if !logs.is_empty() {
                days.push((day, logs.len()));
            }
        }
        for sub in subs.iter() {
            for day in self.history_days(self.retention_days) {
                self.exec(
                    "DELETE FROM logs_by_subscription WHERE tenant_id = ? AND subscription_id = ? AND day = ?",
                    (tenant, sub, day),
                )
                .await?;
                self.exec(
                    "DELETE FROM sub_event_state WHERE tenant_id = ? AND subscription_id = ? AND day = ?",
                    (tenant, sub, day),
                )
                .await?;
            }
        }
        // The listing last: a crash before here finds these logs again.
        for (day, _) in &days {
            self.exec(
                "DELETE FROM logs_by_tenant WHERE tenant_id = ? AND day = ?",
                (tenant, day),
            )
            .await?;
        }
        Ok(days.iter().map(|(_, n)| n).sum())
    }

    /// Event types, recovery jobs and audit records.
    async fn purge_rest(&self, tenant: &str) -> Result<usize, StoreError> {
        let mut types = 0;
        self.scan(
            "SELECT schema_version FROM event_types WHERE tenant_id = ?",
            (tenant,),
            |(_,): (Option<i32>,)| {
                types += 1;
                Ok(())
            },
        )
        .await?;
        self.exec("DELETE FROM event_types WHERE tenant_id = ?", (tenant,))
            .await?;
        let mut jobs = Vec::new();
        self.scan(
            "SELECT id FROM recoveries WHERE tenant_id = ?",
            (tenant,),
            |(id,): (String,)| {
                jobs.push(id);
                Ok(())
            },
        )
        .await?;
        for id in &jobs {
            for cql in [
                "DELETE FROM recoveries_unfinished WHERE id = ?",
                "DELETE FROM recovery_leases WHERE id = ?",
                "DELETE FROM recovery_deliveries WHERE recovery_id = ?",
                "DELETE FROM recovery_done WHERE recovery_id = ?",
            ] {
                self.exec(cql, (id,)).await?;
            }
        }
        self.exec("DELETE FROM recoveries WHERE tenant_id = ?", (tenant,))
            .await?;
        let mut audit = 0;
        let audit_days: Vec<i32> = self.history_days(self.audit_ttl / 86_400 + 1).collect();
        for days in audit_days.chunks(100) {
            let mut found = 0;
            self.scan(
                "SELECT id FROM audit_log WHERE tenant_id = ? AND day IN ?",
                (tenant, days.to_vec()),
                |(_,): (String,)| {
                    found += 1;
                    Ok(())
                },
            )
            .await?;
            if found > 0 {
                self.exec(
                    "DELETE FROM audit_log WHERE tenant_id = ? AND day IN ?",
                    (tenant, days.to_vec()),
                )
                .await?;
                audit += found;
            }
        }
        Ok(types + jobs.len() + audit)
    }
}

#[async_trait]
impl TenantPurgeStore for ScyllaStore {
    async fn tenant_state(&self, tenant_id: &str) -> Result<Option<TenantState>, StoreError> {
        let row: Option<(String, Option<String>)> = self
            .row(
                "SELECT tenant_id, state FROM tenants WHERE tenant_id = ?",
                (tenant_id,),
            )
            .await?;
        Ok(row.map(|(_, state)| state_of(state)))
    }

    async fn begin_tenant_deletion(
        &self,
        tenant_id: &str,
    ) -> Result<Option<TenantState>, StoreError> {
        let Some(before) = self.tenant_state(tenant_id).await? else {
            return Ok(None);
        };
        if before == TenantState::Active {
            // Conditional, so that it never creates a tenant row.
            self.lwt(
                "UPDATE tenants SET state = 'deleting' WHERE tenant_id = ? IF EXISTS",
                (tenant_id,),
            )
            .await?;
            self.purge_keys(tenant_id).await?;
            // Followers re-read the tenants gone (see `tenants_gone`).
            self.bump_subscriptions_version().await?;
        }
        Ok(Some(before))
    }

    async fn purge_tenant(&self, tenant_id: &str, _limit: usize) -> Result<usize, StoreError> {
        let mut subs = BTreeSet::new();
        let mut deleted = self.purge_keys(tenant_id).await?;
        deleted += self.purge_subscriptions(tenant_id, &mut subs).await?;
        deleted += self.purge_events(tenant_id).await?;
        deleted += self.purge_logs(tenant_id, &mut subs).await?;
        deleted += self.purge_rest(tenant_id).await?;
        Ok(deleted)
    }

    async fn finish_tenant_deletion(&self, tenant_id: &str) -> Result<(), StoreError> {
        // Crypto-shredding: the subscriptions are purged; their key goes
        // before the tenant is marked deleted (a resumed deletion deletes it
        // again).
        self.delete_tenant_key(tenant_id).await?;
        self.lwt(
            "UPDATE tenants SET state = 'deleted', quotas = null WHERE tenant_id = ? IF EXISTS",
            (tenant_id,),
        )
        .await?;
        Ok(())
    }

    async fn tenants_deleting(&self) -> Result<Vec<String>, StoreError> {
        self.tenants_where(|state| state == TenantState::Deleting)
            .await
    }

    async fn tenants_gone(&self) -> Result<Vec<String>, StoreError> {
        self.tenants_where(|state| state != TenantState::Active)
            .await
    }
}
