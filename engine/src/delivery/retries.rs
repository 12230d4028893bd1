//! Retries kept in memory by the worker that owns their partition, durable
//! in the schedule changelog ([`crate::log::ScheduleLog`]) instead of the
//! store's schedule: on Kafka + CQL a retry of a delivery that fan-out
//! handed over unscheduled costs one changelog record (and a tombstone when
//! it is finished), no schedule rows, no claim.
//!
//! The worker's consumer restores a partition's retries here when it is
//! assigned the partition (before reading its events) and drops them when
//! the partition goes to another worker, which restores them in turn.
//! [`super::scheduler::run_kept`] hands each retry to the shards at its
//! due time.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, OnceLock},
};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::handoff::Settle;
use crate::log::{partition_for, Pending, PendingSink, ScheduleLog};

/// Retries due further off than this go to the store's schedule: memory
/// keeps the short backoffs (the default schedule's first two, 5 s and
/// 5 min), the store the waits of hours.
pub const KEEP_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);

/// The most retries one worker keeps in memory (about 1.5 KiB each with a
/// 1 KiB event); past it, retries go to the store's schedule.
pub const KEEP_AT_MOST: usize = 50_000;

/// The in-memory schedule of the retries this worker keeps in its changelog.
pub struct Retries {
    partitions: u32,
    due: Mutex<Due>,
    pub(super) wake: Notify,
    log: OnceLock<Arc<dyn ScheduleLog>>,
    /// The claims on their events' log offsets of deliveries sent again
    /// from memory ([`Retries::again`]), by delivery id.
    settles: Mutex<HashMap<String, Settle>>,
    /// Partitions revoked and not assigned back since: their next owner
    /// restored their changelog, so nothing of theirs is written there
    /// from here ([`Retries::lost`]).
    lost: Mutex<HashSet<u32>>,
}

#[derive(Default)]
struct Due {
    /// (due time, delivery id) → the retry.
    by_time: BTreeMap<(i64, String), Pending>,
    /// delivery id → its due time.
    by_id: HashMap<String, i64>,
}

impl Due {
    fn insert(&mut self, p: Pending) {
        let id = p.delivery.delivery_id.clone();
        if let Some(old) = self.by_id.insert(id.clone(), p.delivery.due_at_ms) {
            self.by_time.remove(&(old, id.clone()));
        }
        self.by_time.insert((p.delivery.due_at_ms, id), p);
    }
}

impl std::fmt::Debug for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retries")
            .field("waiting", &self.len())
            .field("changelog", &self.log.get().is_some())
            .finish()
    }
}

impl Retries {
    /// An empty schedule for a log of `partitions` partitions.
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions,
            due: Default::default(),
            wake: Notify::new(),
            log: OnceLock::new(),
            settles: Mutex::default(),
            lost: Mutex::default(),
        }
    }

    /// Sets the changelog the retries are kept in (once, by fan-out, when
    /// its consumer keeps one).
    pub fn keep_in(&self, log: Arc<dyn ScheduleLog>) {
        let _ = self.log.set(log);
    }

    /// The changelog, when there is one: without it retries go to the
    /// store's schedule.
    pub fn log(&self) -> Option<&Arc<dyn ScheduleLog>> {
        self.log.get()
    }

    /// Whether a retry of `tenant_id` due at `due_at_ms` is kept here (its
    /// partition still owned, near enough, and room left), rather than in
    /// the store's schedule.
    pub fn takes(&self, tenant_id: &str, due_at_ms: i64, now_ms: i64) -> bool {
        due_at_ms - now_ms <= KEEP_WITHIN.as_millis() as i64
            && self.len() < KEEP_AT_MOST
            && !self.lost(tenant_id)
    }

    /// Whether `tenant_id`'s partition was revoked from this worker (and
    /// not assigned back): a delivery of it that was in flight at the
    /// revoke writes nothing to the changelog, which its new owner
    /// restored already. A retry of it goes to the store's schedule; a
    /// finished one is left for the new owner to forget (it restored it,
    /// and sends it again: a duplicate, never a loss).
    pub fn lost(&self, tenant_id: &str) -> bool {
        let lost = self.lost.lock();
        !lost.is_empty() && lost.contains(&partition_for(tenant_id, self.partitions))
    }

    /// Adds (or moves) a retry.
    pub fn add(&self, pending: Pending) {
        self.due.lock().insert(pending);
        self.wake.notify_one();
    }

    /// Sends a delivery again at its due time, from memory only, with its
    /// claim on its event's log offset: the stand-in for a lease, for a
    /// delivery that has no schedule row and whose attempt the store would
    /// not record. A crash meanwhile re-reads its event (the offset is not
    /// committed before the delivery is settled).
    pub fn again(&self, pending: Pending, settle: Option<Settle>) {
        if let Some(settle) = settle {
            self.settles
                .lock()
                .insert(pending.delivery.delivery_id.clone(), settle);
        }
        self.add(pending);
    }

    /// The offset claim [`again`](Self::again) kept for a delivery now due.
    pub(super) fn settle_of(&self, delivery_id: &str) -> Option<Settle> {
        self.settles.lock().remove(delivery_id)
    }

    /// Retries waiting, over every partition this worker owns.
    pub fn len(&self) -> usize {
        self.due.lock().by_id.len()
    }

    /// Whether no retry waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `limit` retries due at `now_ms`, earliest first.
    pub(super) fn take_due(&self, now_ms: i64, limit: usize) -> Vec<Pending> {
        let mut due = self.due.lock();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(entry) = due.by_time.first_entry() else {
                break;
            };
            if entry.key().0 > now_ms {
                break;
            }
            let p = entry.remove();
            due.by_id.remove(&p.delivery.delivery_id);
            out.push(p);
        }
        out
    }

    pub(super) fn next_due(&self) -> Option<i64> {
        self.due.lock().by_time.first_key_value().map(|(k, _)| k.0)
    }
}

impl PendingSink for Retries {
    fn restored(&self, partition: u32, pending: Vec<Pending>) {
        self.lost.lock().remove(&partition);
        let mut due = self.due.lock();
        for p in pending {
            due.insert(p);
        }
        drop(due);
        self.wake.notify_one();
    }

    fn revoked(&self, partition: u32) {
        self.lost.lock().insert(partition);
        let mut due = self.due.lock();
        let partitions = self.partitions;
        due.by_time
            .retain(|_, p| partition_for(&p.delivery.tenant_id, partitions) != partition);
        let Due { by_time, by_id } = &mut *due;
        by_id.retain(|id, at| by_time.contains_key(&(*at, id.clone())));
        // The partition's new owner reads their events again.
        self.settles.lock().retain(|id, _| by_id.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ScheduledDelivery;

    fn pending(id: &str, tenant: &str, due_at_ms: i64) -> Pending {
        let now = time::OffsetDateTime::now_utc();
        let event = crate::model::DomainEvent {
            id: "evt_1".into(),
            tenant_id: tenant.into(),
            event_type: "work_order.completed".into(),
            schema_version: 1,
            dedupe_key: None,
            occurred_at: now,
            received_at: now,
            payload: serde_json::json!({}).into(),
            source: crate::model::EventSource::Api,
            aggregate_type: None,
            aggregate_id: None,
            trace_id: None,
        };
        Pending {
            delivery: ScheduledDelivery {
                delivery_id: id.into(),
                tenant_id: tenant.into(),
                event_id: "evt_1".into(),
                subscription_id: "sub_1".into(),
                attempt: 2,
                replay_of: None,
                is_replay: false,
                due_at_ms,
                seq: 0,
                ordered: false,
            },
            event,
        }
    }

    #[test]
    fn retries_come_due_in_time_order_once_and_a_move_replaces_the_old_time() {
        let r = Retries::new(4);
        r.add(pending("b", "t1", 20));
        r.add(pending("a", "t1", 10));
        r.add(pending("c", "t1", 30));
        r.add(pending("c", "t1", 5));
        assert_eq!(r.len(), 3);
        assert_eq!(r.next_due(), Some(5));
        let ids = |v: Vec<Pending>| -> Vec<String> {
            v.into_iter().map(|p| p.delivery.delivery_id).collect()
        };
        assert_eq!(ids(r.take_due(15, 10)), ["c", "a"]);
        assert!(r.take_due(15, 10).is_empty(), "taken once");
        assert_eq!(ids(r.take_due(100, 10)), ["b"]);
        assert!(r.is_empty());
    }

    #[test]
    fn only_near_retries_are_kept_and_only_up_to_the_limit() {
        let r = Retries::new(4);
        let within = KEEP_WITHIN.as_millis() as i64;
        assert!(r.takes("t1", 1_000 + within, 1_000));
        assert!(
            !r.takes("t1", 1_001 + within, 1_000),
            "hours off: the store's schedule"
        );
        for i in 0..KEEP_AT_MOST {
            r.due.lock().insert(pending(&format!("d{i}"), "t1", 0));
        }
        assert!(!r.takes("t1", 1_000, 1_000), "full");
        r.take_due(0, 1);
        assert!(r.takes("t1", 1_000, 1_000));
    }

    #[test]
    fn a_revoked_partition_keeps_no_retry_here_until_it_is_restored() {
        let r = Retries::new(8);
        let (a, b) = ("tenant-a", "tenant-b");
        let pa = partition_for(a, 8);
        assert_ne!(pa, partition_for(b, 8), "two partitions");
        assert!(r.takes(a, 1_000, 1_000) && !r.lost(a));
        r.revoked(pa);
        assert!(r.lost(a), "its new owner restored the changelog");
        assert!(!r.takes(a, 1_000, 1_000), "a retry goes to the store");
        assert!(r.takes(b, 1_000, 1_000), "another partition is still kept");
        r.restored(pa, Vec::new());
        assert!(!r.lost(a) && r.takes(a, 1_000, 1_000), "assigned back");
    }

    #[test]
    fn a_revoked_partition_takes_its_retries_and_only_them() {
        let r = Retries::new(8);
        let tenants: Vec<String> = (0..40).map(|i| format!("tenant-{i}")).collect();
        for (i, t) in tenants.iter().enumerate() {
            r.add(pending(&format!("d{i}"), t, i as i64));
        }
        let lost = partition_for(&tenants[0], 8);
        let kept = tenants
            .iter()
            .filter(|t| partition_for(t, 8) != lost)
            .count();
        assert!(kept < 40 && kept > 0);
        r.revoked(lost);
        assert_eq!(r.len(), kept);
        let left = r.take_due(i64::MAX, 100);
        assert_eq!(left.len(), kept);
        assert!(left
            .iter()
            .all(|p| partition_for(&p.delivery.tenant_id, 8) != lost));
        r.restored(lost, vec![pending("back", &tenants[0], 1)]);
        assert_eq!(r.len(), 1);
    }
}
