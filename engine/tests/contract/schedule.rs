//! [`ScheduleStore`]: fan-out, claims under leases, the backlog.

use std::collections::HashSet;

use herald_engine::{
    model::{Outcome, ScheduledDelivery},
    store::{FanOut, FanOutResult},
};

use crate::{
    backend::Harness,
    fixtures::{attempt, delivery, event, now, POSITION},
};

contract!(
    fan_out_is_idempotent_and_drops_duplicates,
    fan_out_leases_what_the_caller_hands_out,
    fan_out_parks_what_the_caller_parks,
    fan_out_unscheduled_leaves_the_deliveries_to_the_log,
    fan_out_leaves_the_index_of_a_record_marked_indexed_to_its_appender,
    a_leased_delivery_is_not_claimed_twice,
    ordered_deliveries_are_claimed_head_first,
    released_leases_fall_due_at_once,
    backlog_and_next_due_follow_the_schedule,
    held_deliveries_wait_for_their_release_in_event_order,
    two_releases_at_once_leave_every_held_delivery_due,
);

fn ids<'a>(claimed: impl IntoIterator<Item = &'a ScheduledDelivery>) -> HashSet<String> {
    claimed.into_iter().map(|d| d.delivery_id.clone()).collect()
}

async fn fan_out_is_idempotent_and_drops_duplicates(h: &Harness) {
    let s = &h.store;
    let t = now();
    let mut first = event("acme", "order.created");
    first.dedupe_key = Some("k1".into());
    let deliveries = vec![
        delivery(&first, "sub_a", t - 1_000),
        delivery(&first, "sub_b", t - 1_000),
    ];
    let item = |e: &herald_engine::model::DomainEvent, d: Vec<ScheduledDelivery>| FanOut {
        event: e.clone(),
        position: POSITION,
        deliveries: d,
        lease_until_ms: None,
        unscheduled: false,
        parked: Vec::new(),
        indexed: false,
    };
    let done = s
        .fan_out(vec![item(&first, deliveries.clone())], t + 60_000, t)
        .await
        .unwrap();
    assert_eq!(done, [FanOutResult::Scheduled]);
    assert_eq!(s.schedule_backlog().await.unwrap(), 2);
    // A re-read of the log after a crash: nothing new.
    let again = s
        .fan_out(vec![item(&first, deliveries.clone())], t + 60_000, t)
        .await
        .unwrap();
    assert_eq!(again, [FanOutResult::AlreadyDone]);
    assert_eq!(s.schedule_backlog().await.unwrap(), 2);
    // Another event with the same dedupe key is dropped, and hidden.
    let mut dup = event("acme", "order.created");
    dup.dedupe_key = Some("k1".into());
    let dropped = s
        .fan_out(
            vec![item(&dup, vec![delivery(&dup, "sub_a", t - 1_000)])],
            t + 60_000,
            t,
        )
        .await
        .unwrap();
    assert_eq!(dropped, [FanOutResult::Duplicate]);
    assert_eq!(s.schedule_backlog().await.unwrap(), 2);
    assert!(s.get_event("acme", &dup.id).await.unwrap().is_none());
    assert!(s.get_event("acme", &first.id).await.unwrap().is_some());

    let claimed = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
    assert_eq!(ids(claimed.iter().map(|(d, _)| d)), ids(&deliveries));
    assert!(claimed.iter().all(|(_, e)| e.id == first.id));
}

async fn fan_out_leases_what_the_caller_hands_out(h: &Harness) {
    let s = &h.store;
    let t = now();
    let e = event("acme", "order.created");
    let handed = delivery(&e, "sub_a", t - 1_000);
    let lease_end = t + 2_000;
    s.fan_out(
        vec![FanOut {
            event: e.clone(),
            position: POSITION,
            deliveries: vec![handed.clone()],
            lease_until_ms: Some(lease_end),
            unscheduled: false,
            parked: Vec::new(),
            indexed: false,
        }],
        0,
        t,
    )
    .await
    .unwrap();
    assert_eq!(s.schedule_backlog().await.unwrap(), 1);
    assert!(
        s.claim_due(t, t + 60_000, 10).await.unwrap().is_empty(),
        "handed to a shard: not claimable while leased"
    );
    // The caller crashed: once the lease ends it is due again.
    let claimed = s
        .claim_due(lease_end + 1, lease_end + 60_000, 10)
        .await
        .unwrap();
    assert_eq!(ids(claimed.iter().map(|(d, _)| d)), ids([&handed]));
}

/// An event fanned out unscheduled (its deliveries handed over, kept by the
/// log until settled) leaves no schedule rows, is listed, and is fanned out
/// again when the log is re-read; its dedupe key is claimed all the same.
async fn fan_out_unscheduled_leaves_the_deliveries_to_the_log(h: &Harness) {
    let s = &h.store;
    let t = now();
    let mut e = event("acme", "order.created");
    e.dedupe_key = Some("k-unscheduled".into());
    let deliveries = vec![
        delivery(&e, "sub_a", t - 1_000),
        delivery(&e, "sub_b", t - 1_000),
    ];
    let item = |e: &herald_engine::model::DomainEvent, unscheduled: bool| FanOut {
        event: e.clone(),
        position: POSITION,
        deliveries: deliveries.clone(),
        lease_until_ms: unscheduled.then_some(t + 60_000),
        unscheduled,
        parked: Vec::new(),
        indexed: false,
    };
    let fan_out = |items: Vec<FanOut>| s.fan_out(items, t + 60_000, t);
    assert_eq!(
        fan_out(vec![item(&e, true)]).await.unwrap(),
        [FanOutResult::Scheduled]
    );
    assert_eq!(s.schedule_backlog().await.unwrap(), 0, "no schedule rows");
    assert!(s.claim_due(t, t + 60_000, 10).await.unwrap().is_empty());
    assert!(s.get_event("acme", &e.id).await.unwrap().is_some());
    // A re-read after a crash (the offset was not committed): fanned out
    // again, still without rows.
    assert_eq!(
        fan_out(vec![item(&e, true)]).await.unwrap(),
        [FanOutResult::Scheduled]
    );
    assert_eq!(s.schedule_backlog().await.unwrap(), 0);
    // sub_a's delivery is recorded delivered, sub_b's failed (its retry not
    // kept anywhere): a re-read leaves out sub_a only, where the store looks.
    s.log_attempt(attempt(&deliveries[0], Outcome::Delivered))
        .await
        .unwrap();
    s.log_attempt(attempt(&deliveries[1], Outcome::Failed))
        .await
        .unwrap();
    let expected = if h.resumes() {
        FanOutResult::Resumed(vec!["sub_a".into()])
    } else {
        FanOutResult::Scheduled
    };
    assert_eq!(
        fan_out(vec![item(&e, true)]).await.unwrap(),
        std::slice::from_ref(&expected)
    );
    // Another event with the same key is dropped.
    let mut dup = event("acme", "order.created");
    dup.dedupe_key = e.dedupe_key.clone();
    assert_eq!(
        fan_out(vec![item(&dup, true)]).await.unwrap(),
        [FanOutResult::Duplicate]
    );
    // A re-read when the shards had no room: scheduled this time (what is
    // not settled), then done.
    let rescheduled = if h.resumes() {
        &deliveries[1..]
    } else {
        &deliveries[..]
    };
    assert_eq!(
        fan_out(vec![item(&e, false)]).await.unwrap(),
        std::slice::from_ref(&expected)
    );
    assert_eq!(
        s.schedule_backlog().await.unwrap(),
        rescheduled.len() as u64
    );
    let claimed = s.claim_due(t, t + 60_000, 10).await.unwrap();
    assert_eq!(ids(claimed.iter().map(|(d, _)| d)), ids(rescheduled));
    // Its deliveries are in the schedule now: a store that looks skips it.
    let last = if h.resumes() {
        FanOutResult::AlreadyDone
    } else {
        FanOutResult::Scheduled
    };
    assert_eq!(fan_out(vec![item(&e, true)]).await.unwrap(), [last]);
}

/// Two processes claim at once, and again: every delivery is taken once.
/// A delivery fan-out parks (its circuit is open) is held from the start:
/// not claimable, and due once released.
async fn fan_out_parks_what_the_caller_parks(h: &Harness) {
    let s = &h.store;
    let t = now();
    let e = event("acme", "order.created");
    let due = delivery(&e, "sub_a", t - 1_000);
    let parked = delivery(&e, "sub_b", t + 3_600_000);
    let item = FanOut {
        event: e.clone(),
        position: POSITION,
        deliveries: vec![due.clone()],
        lease_until_ms: None,
        unscheduled: false,
        parked: vec![parked.clone()],
        indexed: false,
    };
    let done = s.fan_out(vec![item.clone()], 0, t).await.unwrap();
    assert_eq!(done, [FanOutResult::Scheduled]);
    assert_eq!(s.schedule_backlog().await.unwrap(), 2, "both scheduled");
    let claimed = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
    assert_eq!(
        ids(claimed.iter().map(|(d, _)| d)),
        ids([&due]),
        "the parked one waits"
    );
    assert_eq!(s.release_held("sub_b", now(), 10).await.unwrap(), 1);
    let released = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
    assert_eq!(ids(released.iter().map(|(d, _)| d)), ids([&parked]));
    // A re-read of the log after a crash parks nothing twice.
    let again = s.fan_out(vec![item], 0, t).await.unwrap();
    assert_eq!(again, [FanOutResult::AlreadyDone]);
    assert_eq!(s.release_held("sub_b", now(), 10).await.unwrap(), 0);
}

async fn a_leased_delivery_is_not_claimed_twice(h: &Harness) {
    let (a, b) = (h.store.clone(), h.other().await);
    let e = event("acme", "order.created");
    a.record_event(&e, POSITION, 0).await.unwrap();
    let t = now();
    let all: Vec<ScheduledDelivery> = (0..30).map(|_| delivery(&e, "sub_a", t - 1_000)).collect();
    a.schedule(all.clone()).await.unwrap();
    assert_eq!(a.schedule_backlog().await.unwrap(), 30);
    let lease = t + 60_000;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (x, y) = tokio::join!(a.claim_due(t, lease, 10), b.claim_due(t, lease, 10));
        seen.extend(x.unwrap().into_iter().map(|(d, _)| d.delivery_id));
        seen.extend(y.unwrap().into_iter().map(|(d, _)| d.delivery_id));
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a delivery was claimed twice");
    assert_eq!(ids(&all), seen.iter().cloned().collect());
    assert!(a.claim_due(t + 1_000, lease, 10).await.unwrap().is_empty());
    // Claims do not shrink the backlog: only settled deliveries leave.
    assert_eq!(a.schedule_backlog().await.unwrap(), 30);
}

async fn ordered_deliveries_are_claimed_head_first(h: &Harness) {
    let s = &h.store;
    let t = now();
    let chain: Vec<ScheduledDelivery> = (1..=3)
        .map(|seq| {
            let e = event("acme", "order.created");
            let mut d = delivery(&e, "sub_ordered", t - 1_000);
            d.ordered = true;
            d.seq = seq;
            d
        })
        .collect();
    for d in &chain {
        let e = herald_engine::model::DomainEvent {
            id: d.event_id.clone(),
            ..event("acme", "order.created")
        };
        s.record_event(&e, POSITION, 0).await.unwrap();
    }
    // Scheduled last to first: the order is the sequence, not the writes.
    s.schedule(chain.iter().rev().cloned().collect())
        .await
        .unwrap();
    for d in &chain {
        let claimed = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
        assert_eq!(
            ids(claimed.iter().map(|(c, _)| c)),
            ids([d]),
            "seq {}",
            d.seq
        );
        assert!(
            s.claim_due(now(), now() + 60_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "the next waits for its head"
        );
        s.record_attempt(attempt(d, Outcome::Delivered), None)
            .await
            .unwrap();
    }
    assert_eq!(s.schedule_backlog().await.unwrap(), 0);
}

async fn released_leases_fall_due_at_once(h: &Harness) {
    let s = &h.store;
    let e = event("acme", "order.created");
    s.record_event(&e, POSITION, 0).await.unwrap();
    let t = now();
    let d = delivery(&e, "sub_a", t - 1_000);
    s.schedule(vec![d.clone()]).await.unwrap();
    assert_eq!(s.claim_due(t, t + 3_600_000, 10).await.unwrap().len(), 1);
    assert!(s.claim_due(t, t + 3_600_000, 10).await.unwrap().is_empty());
    assert_eq!(s.release_leases(t).await.unwrap(), 1);
    let again = s.claim_due(t, t + 60_000, 10).await.unwrap();
    assert_eq!(ids(again.iter().map(|(c, _)| c)), ids([&d]));
}

async fn backlog_and_next_due_follow_the_schedule(h: &Harness) {
    let s = &h.store;
    assert_eq!(s.schedule_backlog().await.unwrap(), 0);
    assert_eq!(s.next_due().await.unwrap(), None);
    s.ping().await.unwrap();
    let e = event("acme", "order.created");
    s.record_event(&e, POSITION, 0).await.unwrap();
    let t = now();
    let (early, late) = (
        delivery(&e, "sub_a", t - 2_000),
        delivery(&e, "sub_b", t - 1_000),
    );
    s.schedule(vec![late.clone(), early.clone()]).await.unwrap();
    // Scheduling the same delivery again adds nothing.
    s.schedule(vec![early.clone()]).await.unwrap();
    assert_eq!(s.schedule_backlog().await.unwrap(), 2);
    assert_eq!(s.next_due().await.unwrap(), Some(t - 2_000));
    s.claim_due(t, t + 60_000, 10).await.unwrap();
    for d in [&early, &late] {
        s.record_attempt(attempt(d, Outcome::Delivered), None)
            .await
            .unwrap();
    }
    assert_eq!(s.schedule_backlog().await.unwrap(), 0);
    assert_eq!(s.next_due().await.unwrap(), None);
}

/// A paused subscription's held deliveries are not due; a release makes one
/// subscription's held deliveries due, in event order, once.
async fn held_deliveries_wait_for_their_release_in_event_order(h: &Harness) {
    let s = &h.store;
    let ev = event("acme", "order.created");
    s.record_event(&ev, POSITION, 0).await.unwrap();
    let due = |sub: &str, seq: i64| {
        let mut d = delivery(&ev, sub, now() - 1_000);
        d.seq = seq;
        d
    };
    // Scheduled out of event order; one of another subscription.
    let all = vec![
        due("sub_p", 2),
        due("sub_p", 0),
        due("sub_p", 1),
        due("sub_q", 0),
    ];
    s.schedule(all).await.unwrap();
    let far = || now() + 600_000;
    let claimed = s.claim_due(now(), far(), 10).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let (first, rest) = claimed.split_at(1);
    s.hold(&first[0].0, far()).await.unwrap();
    let rest: Vec<_> = rest.iter().map(|(d, _)| d.clone()).collect();
    s.hold_all(&rest, far()).await.unwrap();
    let none = s.claim_due(now(), far(), 10).await.unwrap();
    assert!(none.is_empty(), "held deliveries are not due: {none:?}");

    // A chunk at a time (a draining endpoint queue), then the rest (a resume).
    assert_eq!(s.release_held("sub_p", now(), 2).await.unwrap(), 2);
    let chunk = s.claim_due(now(), far(), 10).await.unwrap();
    let got: Vec<(&str, i64)> = chunk
        .iter()
        .map(|(d, _)| (d.subscription_id.as_str(), d.seq))
        .collect();
    assert_eq!(
        got,
        [("sub_p", 0), ("sub_p", 1)],
        "the first two of the released subscription, in event order"
    );
    assert_eq!(s.release_held("sub_p", now(), usize::MAX).await.unwrap(), 1);
    let again = s.claim_due(now(), far(), 10).await.unwrap();
    let got: Vec<(&str, i64)> = again
        .iter()
        .map(|(d, _)| (d.subscription_id.as_str(), d.seq))
        .collect();
    assert_eq!(got, [("sub_p", 2)], "the rest");
    assert_eq!(
        s.release_held("sub_p", now(), usize::MAX).await.unwrap(),
        0,
        "released once"
    );
    assert_eq!(s.release_held("sub_q", now(), usize::MAX).await.unwrap(), 1);
    let q = s.claim_due(now(), far(), 10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0.subscription_id, "sub_q");
}

/// A resume and a worker that just held a delivery of the resumed
/// subscription both release its held deliveries, at the same millisecond:
/// each is released once, and every one of them can be claimed. (The CQL
/// store's losing release used to delete the index row the winner had just
/// written, leaving a due delivery no claim could find.)
async fn two_releases_at_once_leave_every_held_delivery_due(h: &Harness) {
    const N: usize = 40;
    let s = &h.store;
    let ev = event("acme", "order.created");
    s.record_event(&ev, POSITION, 0).await.unwrap();
    let all: Vec<ScheduledDelivery> = (0..N)
        .map(|i| {
            let mut d = delivery(&ev, "sub_r", now() - 1_000);
            d.seq = i as i64;
            d
        })
        .collect();
    s.schedule(all.clone()).await.unwrap();
    let far = now() + 3_600_000;
    let claimed = s.claim_due(now(), far, N).await.unwrap();
    assert_eq!(claimed.len(), N);
    let claimed: Vec<_> = claimed.into_iter().map(|(d, _)| d).collect();
    s.hold_all(&claimed, far).await.unwrap();
    // The same release time for both, ahead of the clock, so neither moves
    // it to its own "now".
    let at = now() + 60_000;
    let (a, b) = tokio::join!(
        s.release_held("sub_r", at, usize::MAX),
        s.release_held("sub_r", at, usize::MAX)
    );
    assert_eq!(a.unwrap() + b.unwrap(), N as u64, "each released once");
    let due = s.claim_due(at + 1, far + 60_000, 2 * N).await.unwrap();
    let due = ids(due.iter().map(|(d, _)| d));
    let missing: Vec<_> = ids(&all).difference(&due).cloned().collect();
    assert!(
        missing.is_empty(),
        "{} of {N} released deliveries are not due: {missing:?}",
        missing.len()
    );
    assert_eq!(due.len(), N);
}

/// A record marked indexed (its appender indexed the event inside the
/// log's transaction) is not indexed again at fan-out by a store that
/// indexes in the append, on the blind path (unscheduled) or the scheduled
/// one; an unmarked record is indexed by fan-out in every store. So an
/// event marked but not indexed (as no appender leaves one) stays unlisted
/// on the CQL store: the test's way to see that fan-out wrote nothing.
async fn fan_out_leaves_the_index_of_a_record_marked_indexed_to_its_appender(h: &Harness) {
    let s = &h.store;
    let t = now();
    let item = |e: &herald_engine::model::DomainEvent, unscheduled: bool, indexed: bool| FanOut {
        event: e.clone(),
        position: POSITION,
        deliveries: vec![delivery(e, "sub_a", t)],
        lease_until_ms: Some(t + 60_000),
        unscheduled,
        parked: Vec::new(),
        indexed,
    };
    for unscheduled in [true, false] {
        let (marked, plain) = (
            event("acme", "order.created"),
            event("acme", "order.created"),
        );
        let results = s
            .fan_out(
                vec![
                    item(&marked, unscheduled, true),
                    item(&plain, unscheduled, false),
                ],
                t + 60_000,
                t,
            )
            .await
            .unwrap();
        assert_eq!(results, [FanOutResult::Scheduled, FanOutResult::Scheduled]);
        let found = s.get_event("acme", &plain.id).await.unwrap();
        assert_eq!(found.map(|e| e.id), Some(plain.id.clone()), "{unscheduled}");
        let found = s.get_event("acme", &marked.id).await.unwrap();
        assert_eq!(
            found.is_some(),
            !s.indexes_in_append(),
            "unscheduled {unscheduled}: marked indexed"
        );
    }
    // What the appender writes in the append is listed, and goes again
    // when the append is aborted.
    if s.indexes_in_append() {
        let batch = [
            event("acme", "order.created"),
            event("acme", "order.created"),
        ];
        s.index_events(&batch).await.unwrap();
        for e in &batch {
            assert!(s.get_event("acme", &e.id).await.unwrap().is_some());
        }
        s.unindex_events(&batch).await.unwrap();
        for e in &batch {
            assert!(s.get_event("acme", &e.id).await.unwrap().is_none());
        }
    }
}
