//! The in-memory subscription index used by fan-out.
//!
//! Matching must stay cheap with 100k subscriptions: exact filters are one
//! hash lookup per event, and `prefix.*` wildcards one lookup per dot in the
//! event type (`a.b.c` looks up `a.*` and `a.b.*`), plus the tenant's `*`
//! subscriptions. The index follows every change made through the engine.

use std::{collections::HashMap, sync::Arc};

use parking_lot::RwLock;

pub use crate::filters::{filter_matches, validate_filter};
use crate::{
    model::{DomainEvent, SubscriptionStatus, WebhookSubscription},
    payload_filter::{FilterVars, PayloadFilter},
    store::Store,
};

/// Reloads `index` if a shared store's subscriptions version is not the
/// one of the index's snapshot. A store error leaves the index as it was
/// (and is logged).
///
/// Any number of callers (the fan-out before each batch, a periodic task)
/// share the index; they take turns (one reload at a time, each reading the
/// version, then the snapshot), so a snapshot never replaces one read after
/// it. The check is "moved", not "grew": the CQL store's version is the
/// writer's clock, and a writer whose clock is behind another's still
/// makes every process reload.
pub async fn refresh(store: &dyn Store, index: &SubscriptionIndex) {
    let _turn = index.reloading.lock().await;
    let version = match store.subscriptions_version().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the subscriptions' version");
            return;
        }
    };
    if index.version() == Some(version) {
        return;
    }
    let edits = index.edits();
    // Read after the version: the snapshot holds at least that version.
    let resumed = match store.all_subscriptions().await {
        Ok(subs) => index.replace(version, edits, subs),
        Err(e) => {
            tracing::warn!(error = %e, "could not reload subscriptions");
            return;
        }
    };
    // Resumed through another process, whose release may have come before
    // this one's workers saw the resume and held a delivery again: release
    // once more, rather than leave it to its re-check time.
    for id in resumed {
        if let Err(e) = store
            .release_held(&id, crate::clock::now_ms(), usize::MAX)
            .await
        {
            tracing::warn!(error = %e, subscription_id = %id, "could not release a resumed subscription's held deliveries; they go at their re-check");
        }
    }
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<WebhookSubscription>>,
    /// (tenant, exact type or `prefix.`) → subscription ids.
    keyed: HashMap<(String, String), Vec<String>>,
    /// Compiled payload filters by subscription id (`None`: it did not compile).
    filters: HashMap<String, Option<Arc<PayloadFilter>>>,
    /// The store's subscriptions version of the last [`SubscriptionIndex::replace`].
    version: Option<u64>,
    /// Local changes ([`SubscriptionIndex::upsert`], [`SubscriptionIndex::remove`]) so far.
    edits: u64,
}

/// Subscriptions by id and by what they match.
#[derive(Default)]
pub struct SubscriptionIndex {
    inner: RwLock<Inner>,
    /// Held by [`refresh`] while it reloads.
    reloading: tokio::sync::Mutex<()>,
}

impl SubscriptionIndex {
    /// An index holding `subs`.
    pub fn new(subs: impl IntoIterator<Item = WebhookSubscription>) -> Self {
        let index = Self::default();
        for s in subs {
            index.upsert(s);
        }
        index
    }

    /// Adds or replaces a subscription.
    pub fn upsert(&self, sub: WebhookSubscription) {
        let mut inner = self.inner.write();
        inner.edits += 1;
        remove_keys(&mut inner, &sub.id);
        for filter in &sub.event_types {
            let key = filter.strip_suffix('*').unwrap_or(filter).to_string();
            inner
                .keyed
                .entry((sub.tenant_id.clone(), key))
                .or_default()
                .push(sub.id.clone());
        }
        if let Some(source) = &sub.filter {
            let compiled = PayloadFilter::compile(source)
                .inspect_err(|e| {
                    tracing::warn!(subscription = %sub.id, error = %e,
                        "stored payload filter does not compile: it matches nothing");
                })
                .ok()
                .map(Arc::new);
            inner.filters.insert(sub.id.clone(), compiled);
        }
        inner.by_id.insert(sub.id.clone(), Arc::new(sub));
    }

    /// Replaces the whole index with `subs`, a snapshot of the store read
    /// after it was at `version` and after the index had seen `edits` local
    /// changes ([`SubscriptionIndex::edits`]). If a local change came in
    /// since, the snapshot may predate it (a resume would read as paused
    /// again): it is dropped, and the next refresh reloads. Returns the
    /// subscriptions the snapshot shows active that the index held as not.
    pub fn replace(
        &self,
        version: u64,
        edits: u64,
        subs: impl IntoIterator<Item = WebhookSubscription>,
    ) -> Vec<String> {
        let fresh = Self::new(subs);
        let mut next = std::mem::take(&mut *fresh.inner.write());
        let mut inner = self.inner.write();
        if inner.edits != edits {
            inner.version = None;
            return Vec::new();
        }
        let resumed = next
            .by_id
            .values()
            .filter(|s| s.status == SubscriptionStatus::Active)
            .filter(|s| {
                inner
                    .by_id
                    .get(&s.id)
                    .is_some_and(|old| old.status != SubscriptionStatus::Active)
            })
            .map(|s| s.id.clone())
            .collect();
        next.version = Some(version);
        next.edits = edits;
        *inner = next;
        resumed
    }

    /// How many local changes the index has seen (read before a snapshot).
    pub fn edits(&self) -> u64 {
        self.inner.read().edits
    }

    /// The store version of the snapshot the index was last replaced with.
    pub fn version(&self) -> Option<u64> {
        self.inner.read().version
    }

    /// Removes a subscription.
    pub fn remove(&self, id: &str) {
        let mut inner = self.inner.write();
        inner.edits += 1;
        remove_keys(&mut inner, id);
        inner.by_id.remove(id);
    }

    /// Removes every subscription of `tenant` (a scan of the index);
    /// returns how many.
    pub fn remove_tenant(&self, tenant: &str) -> usize {
        let ids: Vec<String> = {
            let inner = self.inner.read();
            inner
                .by_id
                .values()
                .filter(|s| s.tenant_id == tenant)
                .map(|s| s.id.clone())
                .collect()
        };
        for id in &ids {
            self.remove(id);
        }
        ids.len()
    }

    /// How many subscriptions `tenant` has (a scan of the index).
    pub fn count_of(&self, tenant: &str) -> usize {
        let inner = self.inner.read();
        inner
            .by_id
            .values()
            .filter(|s| s.tenant_id == tenant)
            .count()
    }

    /// One subscription by id.
    pub fn get(&self, id: &str) -> Option<Arc<WebhookSubscription>> {
        self.inner.read().by_id.get(id).cloned()
    }

    /// The subscriptions of `tenant` that want `event_type` and take new
    /// deliveries, each once: active ones and paused ones (a paused
    /// subscription's deliveries are held until it is resumed), never
    /// disabled ones.
    pub fn matching(&self, tenant: &str, event_type: &str) -> Vec<Arc<WebhookSubscription>> {
        let inner = self.inner.read();
        let mut ids: Vec<&String> = Vec::new();
        let mut look = |key: &str| {
            if let Some(v) = inner.keyed.get(&(tenant.to_string(), key.to_string())) {
                ids.extend(v.iter());
            }
        };
        look(event_type);
        if !event_type.starts_with(crate::filters::OPERATIONAL_PREFIX) {
            look("");
        }
        for (i, b) in event_type.bytes().enumerate() {
            if b == b'.' {
                look(&event_type[..=i]);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| inner.by_id.get(id))
            .filter(|s| takes_deliveries(s.status))
            .cloned()
            .collect()
    }

    /// [`SubscriptionIndex::matching`] for `event`, less the subscriptions
    /// whose payload filter does not match it (an evaluation error is no
    /// match). Filters were compiled when their subscription came in.
    pub fn matching_event(&self, event: &DomainEvent) -> Vec<Arc<WebhookSubscription>> {
        let mut subs = self.matching(&event.tenant_id, &event.event_type);
        if subs.iter().all(|s| s.filter.is_none()) {
            return subs;
        }
        let vars = FilterVars::of_event(event);
        let inner = self.inner.read();
        subs.retain(|s| {
            s.filter.is_none()
                || inner
                    .filters
                    .get(&s.id)
                    .and_then(|f| f.as_ref())
                    .is_some_and(|f| f.matches(&vars))
        });
        subs
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.inner.read().by_id.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a subscription in `status` gets deliveries of new events: active
/// and paused ones do (paused ones hold them), disabled ones do not.
pub fn takes_deliveries(status: SubscriptionStatus) -> bool {
    match status {
        SubscriptionStatus::Active | SubscriptionStatus::Paused => true,
        SubscriptionStatus::Disabled => false,
    }
}

fn remove_keys(inner: &mut Inner, id: &str) {
    inner.filters.remove(id);
    let Some(old) = inner.by_id.get(id).cloned() else {
        return;
    };
    for filter in &old.event_types {
        let key = (
            old.tenant_id.clone(),
            filter.strip_suffix('*').unwrap_or(filter).to_string(),
        );
        if let Some(v) = inner.keyed.get_mut(&key) {
            v.retain(|s| s != id);
            if v.is_empty() {
                inner.keyed.remove(&key);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use time::OffsetDateTime;

    use super::*;

    /// A plain active subscription (other modules' tests use it too).
    pub(crate) fn sub(id: &str, tenant: &str, filters: &[&str]) -> WebhookSubscription {
        let now = OffsetDateTime::now_utc();
        WebhookSubscription {
            id: id.into(),
            tenant_id: tenant.into(),
            url: "https://example.com".into(),
            event_types: filters.iter().map(|s| s.to_string()).collect(),
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

    fn ids(v: Vec<Arc<WebhookSubscription>>) -> Vec<String> {
        v.iter().map(|s| s.id.clone()).collect()
    }

    #[tokio::test]
    async fn refresh_reloads_when_the_version_moved_either_way() {
        use crate::{
            encryption::SecretCipher,
            store::{embedded::EmbeddedStore, SubscriptionStore},
        };
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), SecretCipher::random()).unwrap();
        store
            .create_subscription(&sub("a", "t", &["x.*"]))
            .await
            .unwrap();
        let index = SubscriptionIndex::default();
        refresh(&store, &index).await;
        assert_eq!(ids(index.matching("t", "x.y")), ["a"]);
        let seen = index.version();
        refresh(&store, &index).await;
        assert_eq!(index.version(), seen, "nothing moved: no reload");
        // A snapshot at a higher version than the store's (a CQL writer
        // whose clock ran ahead of the next one's): still reloaded.
        index.replace(u64::MAX, index.edits(), []);
        store
            .create_subscription(&sub("b", "t", &["x.*"]))
            .await
            .unwrap();
        refresh(&store, &index).await;
        assert_eq!(ids(index.matching("t", "x.y")), ["a", "b"]);
        assert_ne!(index.version(), Some(u64::MAX));
    }

    #[test]
    fn a_snapshot_read_before_a_local_change_does_not_undo_it() {
        let index = SubscriptionIndex::default();
        let mut paused = sub("a", "t", &["x.*"]);
        paused.status = SubscriptionStatus::Paused;
        assert!(index.replace(1, index.edits(), [paused.clone()]).is_empty());
        // A reload starts (reads the edit count, then the store, which
        // still shows the subscription paused); meanwhile it is resumed here.
        let edits = index.edits();
        index.upsert(sub("a", "t", &["x.*"]));
        index.replace(2, edits, [paused.clone()]);
        let a = index.get("a").unwrap();
        assert_eq!(a.status, SubscriptionStatus::Active, "the resume stands");
        assert_eq!(index.version(), None, "the next refresh reloads");
        // A snapshot read after the change is taken; one that shows a
        // paused subscription active names it (its held deliveries go).
        index.replace(3, index.edits(), [paused]);
        assert_eq!(index.version(), Some(3));
        let resumed = index.replace(4, index.edits(), [sub("a", "t", &["x.*"])]);
        assert_eq!(resumed, ["a"]);
        assert!(index.replace(5, index.edits(), []).is_empty());
        assert!(index.get("a").is_none());
    }

    #[test]
    fn filters_match_exact_prefix_and_all() {
        assert!(filter_matches("a.b", "a.b"));
        assert!(!filter_matches("a.b", "a.bc"));
        assert!(filter_matches("a.*", "a.b.c"));
        assert!(!filter_matches("a.*", "ab.c"));
        assert!(!filter_matches("a.*", "a"));
        assert!(filter_matches("*", "anything"));
        assert!(!filter_matches("*", "herald.delivery.dead"));
        assert!(filter_matches("herald.*", "herald.delivery.dead"));
        assert!(validate_filter("work_order.*").is_ok());
        assert!(validate_filter("work order").is_err());
        assert!(validate_filter("a..b").is_err());
        assert!(validate_filter("a*").is_err());
    }

    #[test]
    fn index_matches_like_the_filters_and_follows_changes() {
        let index = SubscriptionIndex::new([
            sub("s1", "t", &["order.created"]),
            sub("s2", "t", &["order.*", "order.created"]),
            sub("s3", "t", &["*"]),
            sub("s4", "other", &["order.created"]),
            sub("s5", "t", &["order.item.*"]),
        ]);
        assert_eq!(
            ids(index.matching("t", "order.created")),
            ["s1", "s2", "s3"]
        );
        assert_eq!(
            ids(index.matching("t", "order.item.added")),
            ["s2", "s3", "s5"]
        );
        assert_eq!(ids(index.matching("t", "invoice.paid")), ["s3"]);
        assert_eq!(ids(index.matching("other", "order.created")), ["s4"]);
        assert!(
            index.matching("t", "herald.circuit.opened").is_empty(),
            "* excludes operational events"
        );

        index.upsert(sub("s1", "t", &["invoice.paid"]));
        assert_eq!(ids(index.matching("t", "order.created")), ["s2", "s3"]);
        assert!(ids(index.matching("t", "invoice.paid")) == ["s1", "s3"]);
        index.remove("s3");
        assert_eq!(ids(index.matching("t", "invoice.paid")), ["s1"]);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn paused_subscriptions_are_matched_and_disabled_ones_are_not() {
        let with = |id: &str, status| {
            let mut s = sub(id, "t", &["order.*"]);
            s.status = status;
            s
        };
        let index = SubscriptionIndex::new([
            with("active", SubscriptionStatus::Active),
            with("disabled", SubscriptionStatus::Disabled),
            with("paused", SubscriptionStatus::Paused),
        ]);
        // Fan-out schedules what `matching` returns: a paused subscription's
        // deliveries are held, a disabled one gets none.
        assert_eq!(
            ids(index.matching("t", "order.created")),
            ["active", "paused"]
        );
        index.upsert(with("paused", SubscriptionStatus::Disabled));
        index.upsert(with("disabled", SubscriptionStatus::Paused));
        assert_eq!(
            ids(index.matching("t", "order.created")),
            ["active", "disabled"],
            "the index follows status changes"
        );
    }

    #[test]
    fn matching_event_applies_compiled_filters_and_follows_changes() {
        let mut big = sub("a", "t", &["inv.*"]);
        big.filter = Some("data.quantity > 100".into());
        let mut broken = sub("b", "t", &["inv.*"]);
        broken.filter = Some("data.quantity >".into());
        let index = SubscriptionIndex::new([big.clone(), broken, sub("c", "t", &["inv.*"])]);
        let now = OffsetDateTime::now_utc();
        let mut e = DomainEvent {
            id: "evt_1".into(),
            tenant_id: "t".into(),
            event_type: "inv.adjusted".into(),
            schema_version: 1,
            dedupe_key: None,
            occurred_at: now,
            received_at: now,
            payload: serde_json::json!({"quantity": 150}).into(),
            source: crate::model::EventSource::Api,
            aggregate_type: None,
            aggregate_id: None,
            trace_id: None,
        };
        assert_eq!(
            ids(index.matching_event(&e)),
            ["a", "c"],
            "a stored filter that does not compile matches nothing"
        );
        e.payload = serde_json::json!({"quantity": 5}).into();
        assert_eq!(ids(index.matching_event(&e)), ["c"]);
        big.filter = None;
        index.upsert(big);
        assert_eq!(
            ids(index.matching_event(&e)),
            ["a", "c"],
            "upsert recompiles"
        );
    }
}
