//! [`EventStore`]: the event index and the dedupe window.

use herald_engine::{
    model::{DomainEvent, Outcome, ScheduledDelivery},
    store::{EventFilter, FanOut, LogFilter, PruneCursor, Pruned},
};

use crate::{
    backend::Harness,
    fixtures::{attempt, delivery, event, now, POSITION},
};

contract!(
    a_dedupe_key_is_held_by_one_event_until_it_expires,
    events_list_newest_first_with_filters,
    recording_again_changes_nothing,
    a_large_batch_is_indexed_whole_with_its_dedupe_keys,
    retention_prunes_only_what_nothing_waits_for,
);

async fn a_dedupe_key_is_held_by_one_event_until_it_expires(h: &Harness) {
    let s = &h.store;
    let until = now() + 60_000;
    let mut first = event("acme", "order.created");
    first.dedupe_key = Some("k1".into());
    let mut second = event("acme", "order.created");
    second.dedupe_key = Some("k1".into());
    let mut elsewhere = event("globex", "order.created");
    elsewhere.dedupe_key = Some("k1".into());
    s.record_event(&first, POSITION, until).await.unwrap();
    s.record_event(&second, POSITION, until).await.unwrap();
    s.record_event(&elsewhere, POSITION, until).await.unwrap();

    let holder = |tenant: &'static str, at: i64| {
        let s = s.clone();
        async move {
            s.event_by_dedupe_key(tenant, "k1", at)
                .await
                .unwrap()
                .map(|e| e.id)
        }
    };
    assert_eq!(holder("acme", now()).await, Some(first.id.clone()));
    assert_eq!(
        holder("globex", now()).await,
        Some(elsewhere.id.clone()),
        "keys are per tenant"
    );
    assert_eq!(holder("acme", until + 1).await, None, "expired");
    assert!(s
        .event_by_dedupe_key("acme", "k2", now())
        .await
        .unwrap()
        .is_none());
    // Purging at the end of the window frees the key for a new event.
    s.purge_expired(until + 1).await.unwrap();
    assert_eq!(holder("acme", until + 1).await, None);
}

async fn events_list_newest_first_with_filters(h: &Harness) {
    let s = &h.store;
    let mut made = Vec::new();
    for t in [
        "order.created",
        "order.paid",
        "invoice.sent",
        "order.created",
        "invoice.sent",
    ] {
        let e = event("acme", t);
        s.record_event(&e, POSITION, 0).await.unwrap();
        made.push(e);
    }
    s.record_event(&event("globex", "order.created"), POSITION, 0)
        .await
        .unwrap();
    let ids = |v: Vec<herald_engine::model::DomainEvent>| -> Vec<String> {
        v.into_iter().map(|e| e.id).collect()
    };
    let newest_first: Vec<String> = made.iter().rev().map(|e| e.id.clone()).collect();
    let all = s
        .list_events("acme", &EventFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(ids(all), newest_first);

    let page = |before: Option<String>, event_type: Option<&str>| EventFilter {
        before,
        event_type: event_type.map(str::to_string),
    };
    let first = s.list_events("acme", &page(None, None), 2).await.unwrap();
    let next = s
        .list_events("acme", &page(Some(first[1].id.clone()), None), 10)
        .await
        .unwrap();
    assert_eq!(
        ids(first).into_iter().chain(ids(next)).collect::<Vec<_>>(),
        newest_first
    );

    let exact = s
        .list_events("acme", &page(None, Some("order.created")), 10)
        .await
        .unwrap();
    assert_eq!(ids(exact), [made[3].id.clone(), made[0].id.clone()]);
    let family = s
        .list_events("acme", &page(None, Some("order.*")), 10)
        .await
        .unwrap();
    assert_eq!(
        ids(family),
        [made[3].id.clone(), made[1].id.clone(), made[0].id.clone()]
    );

    assert_eq!(
        s.get_event("acme", &made[2].id)
            .await
            .unwrap()
            .map(|e| e.event_type),
        Some("invoice.sent".into())
    );
    assert!(
        s.get_event("globex", &made[2].id).await.unwrap().is_none(),
        "another tenant's event is not found"
    );
}

async fn recording_again_changes_nothing(h: &Harness) {
    let s = &h.store;
    let batch: Vec<_> = (0..3)
        .map(|_| (event("acme", "order.created"), POSITION))
        .collect();
    s.record_events(batch.clone(), 0).await.unwrap();
    s.record_events(batch.clone(), 0).await.unwrap();
    s.record_event(&batch[0].0, POSITION, 0).await.unwrap();
    let listed = s
        .list_events("acme", &EventFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].id, batch[0].0.id);
    assert_eq!(listed[2].payload, batch[0].0.payload);
}

/// A batch of 60 events of 2 KiB — several times a CQL batch's size limit
/// in one `(tenant, day)` partition — is listed whole, and each dedupe key
/// in it is held by its event.
async fn a_large_batch_is_indexed_whole_with_its_dedupe_keys(h: &Harness) {
    let s = &h.store;
    let batch: Vec<_> = (0..60)
        .map(|i| {
            let mut e = event("acme", "order.created");
            e.payload = serde_json::json!({ "i": i, "pad": "p".repeat(2048) }).into();
            e.dedupe_key = (i % 20 == 0).then(|| format!("batch-{i}"));
            (e, POSITION)
        })
        .collect();
    s.record_events(batch.clone(), now() + 60_000)
        .await
        .unwrap();
    let listed = s
        .list_events("acme", &EventFilter::default(), 100)
        .await
        .unwrap();
    let mut got: Vec<_> = listed.iter().map(|e| e.id.clone()).collect();
    let mut want: Vec<_> = batch.iter().map(|(e, _)| e.id.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for (e, _) in batch.iter().filter(|(e, _)| e.dedupe_key.is_some()) {
        let key = e.dedupe_key.as_deref().unwrap();
        let holder = s.event_by_dedupe_key("acme", key, now()).await.unwrap();
        assert_eq!(holder.map(|h| h.id), Some(e.id.clone()), "{key}");
    }
}

/// Retention: an event past it whose deliveries are done (scheduled, or
/// handed over unscheduled) goes with its
/// attempt logs (on a store that prunes; the CQL store expires rows by
/// TTL and prunes nothing), and nothing still waited for ever goes: an
/// event not yet fanned out, one with a delivery pending (and that
/// delivery's attempts), one whose dedupe key is live.
async fn retention_prunes_only_what_nothing_waits_for(h: &Harness) {
    let s = &h.store;
    let t = now();
    let day = 86_400_000;
    let fan_out = |e: &DomainEvent, deliveries: Vec<ScheduledDelivery>| {
        let item = FanOut {
            event: e.clone(),
            position: POSITION,
            deliveries,
            lease_until_ms: None,
            unscheduled: false,
            parked: Vec::new(),
            indexed: false,
        };
        s.fan_out(vec![item], t + day, t)
    };
    let done = event("acme", "order.created");
    let retrying = event("acme", "order.created");
    let mut keyed = event("acme", "order.created");
    keyed.dedupe_key = Some("k1".into());
    let unfanned = event("acme", "order.created");
    // Fanned out unscheduled (the log kept its delivery), then delivered.
    let handed = event("acme", "order.created");
    for e in [&done, &retrying, &keyed, &unfanned, &handed] {
        s.record_event(e, POSITION, t + day).await.unwrap();
    }
    let d_done = delivery(&done, "sub_a", t - 1_000);
    let d_retry = delivery(&retrying, "sub_a", t - 1_000);
    fan_out(&done, vec![d_done.clone()]).await.unwrap();
    fan_out(&retrying, vec![d_retry.clone()]).await.unwrap();
    fan_out(&keyed, Vec::new()).await.unwrap();
    let d_handed = delivery(&handed, "sub_a", t - 1_000);
    let item = FanOut {
        event: handed.clone(),
        position: POSITION,
        deliveries: vec![d_handed.clone()],
        lease_until_ms: Some(t + 60_000),
        unscheduled: true,
        parked: Vec::new(),
        indexed: false,
    };
    s.fan_out(vec![item], t + day, t).await.unwrap();
    let handed_delivered = attempt(&d_handed, Outcome::Delivered);
    s.log_attempt(handed_delivered).await.unwrap();
    assert_eq!(s.claim_due(t, t + 60_000, 10).await.unwrap().len(), 2);
    let delivered = attempt(&d_done, Outcome::Delivered);
    s.record_attempt(delivered, None).await.unwrap();
    let failed = attempt(&d_retry, Outcome::Failed);
    let mut retry = d_retry.clone();
    retry.attempt = 2;
    retry.due_at_ms = t + day;
    s.record_attempt(failed.clone(), Some(retry)).await.unwrap();

    // Everything above is older than the cutoff; a batch of 1 at a time.
    let cutoff = now() + 1_000;
    let (mut events, mut delivery_logs, mut steps) = (0, 0, 0);
    let mut from = PruneCursor::default();
    loop {
        let p = s.prune_before(cutoff, &from, 1).await.unwrap();
        assert!(p.events <= 1 && p.delivery_logs <= 1, "{p:?}");
        events += p.events;
        delivery_logs += p.delivery_logs;
        steps += 1;
        match p.next {
            Some(next) => from = next,
            None => break,
        }
    }
    let logs_of = |e: &DomainEvent| LogFilter {
        event_id: Some(e.id.clone()),
        ..LogFilter::default()
    };
    if h.prunes() {
        assert_eq!((events, delivery_logs), (2, 2));
        // One row of each table examined per step, kept ones included.
        assert_eq!(steps, 5 + 1, "five events, then the end of the pass");
        for gone in [&done, &handed] {
            assert!(s.get_event("acme", &gone.id).await.unwrap().is_none());
            let filter = logs_of(gone);
            let logs = s.list_delivery_logs("acme", &filter, 10).await.unwrap();
            assert!(logs.is_empty());
        }
    } else {
        assert_eq!((events, delivery_logs, steps), (0, 0, 1));
    }
    for kept in [&retrying, &keyed, &unfanned] {
        let found = s.get_event("acme", &kept.id).await.unwrap();
        assert_eq!(found.as_ref().map(|e| &e.id), Some(&kept.id));
    }
    let filter = logs_of(&retrying);
    let logs = s.list_delivery_logs("acme", &filter, 10).await.unwrap();
    assert_eq!(logs.len(), 1, "a pending delivery's attempts stay");
    let holder = s.event_by_dedupe_key("acme", "k1", now()).await.unwrap();
    assert_eq!(holder.map(|e| e.id), Some(keyed.id.clone()));
    // Nothing younger than the cutoff goes.
    let start = PruneCursor::default();
    let p = s.prune_before(t - day, &start, 100).await.unwrap();
    assert_eq!(p, Pruned::default());
}
