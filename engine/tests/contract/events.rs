//! [`EventStore`]: the event index and the dedupe window.

use herald_engine::store::EventFilter;

use crate::{
    backend::Harness,
    fixtures::{event, now, POSITION},
};

contract!(
    a_dedupe_key_is_held_by_one_event_until_it_expires,
    events_list_newest_first_with_filters,
    recording_again_changes_nothing,
    a_large_batch_is_indexed_whole_with_its_dedupe_keys,
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
            e.payload = serde_json::json!({ "i": i, "pad": "p".repeat(2048) });
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
