//! [`RecoveryStore`]: candidates paged by event id, progress, and the lease
//! that lets one process at a time step a job.

use herald_engine::{
    ids,
    model::Outcome,
    resources::{RecoveryJob, RecoverySource, RecoveryStatus},
    store::RecoveryScope,
};
use time::OffsetDateTime;

use crate::{
    backend::Harness,
    fixtures::{attempt, delivery, event, now, POSITION},
};

contract!(
    a_recovery_lease_is_held_by_one_process,
    a_recovery_pages_its_candidates_and_resumes,
    attempts_recorded_together_leave_the_later_outcome,
);

async fn a_recovery_lease_is_held_by_one_process(h: &Harness) {
    let (a, b) = (h.store.clone(), h.other().await);
    let job = "rcv_lease";
    let t = now();
    assert!(
        a.lease_recovery(job, "p1", t, t + 1_000).await.unwrap(),
        "a free job is leased"
    );
    assert!(
        !b.lease_recovery(job, "p2", t + 10, t + 1_010)
            .await
            .unwrap(),
        "a held job is not leased by another process"
    );
    assert!(
        a.lease_recovery(job, "p1", t + 500, t + 2_000)
            .await
            .unwrap(),
        "the holder renews its lease"
    );
    assert!(
        !b.lease_recovery(job, "p2", t + 1_500, t + 2_500)
            .await
            .unwrap(),
        "a renewed lease holds past its first end"
    );
    assert!(
        b.lease_recovery(job, "p2", t + 2_001, t + 5_000)
            .await
            .unwrap(),
        "an ended lease is taken over"
    );
    assert!(
        !a.lease_recovery(job, "p1", t + 2_002, t + 6_000)
            .await
            .unwrap(),
        "the old holder lost it"
    );
    assert!(
        a.lease_recovery("rcv_other", "p1", t, t + 1_000)
            .await
            .unwrap(),
        "leases are per job"
    );
}

async fn a_recovery_pages_its_candidates_and_resumes(h: &Harness) {
    let s = &h.store;
    let t = now();
    let from = ids::new_id(ids::EVENT);
    // Latest outcome per event: delivered, failed, dead, delivered after a failure, failed.
    let latest = [
        Outcome::Delivered,
        Outcome::Failed,
        Outcome::Dead,
        Outcome::Delivered,
        Outcome::Failed,
    ];
    let mut events = Vec::new();
    let mut last_delivery = Vec::new();
    for (n, outcome) in latest.iter().enumerate() {
        let e = event("acme", "order.created");
        s.record_event(&e, POSITION, 0).await.unwrap();
        if n == 3 {
            let earlier = delivery(&e, "sub_r", t);
            s.record_attempt(attempt(&earlier, Outcome::Failed), None)
                .await
                .unwrap();
        }
        let d = delivery(&e, "sub_r", t);
        s.record_attempt(attempt(&d, *outcome), None).await.unwrap();
        // Another subscription's delivery of the same event is out of scope.
        s.record_attempt(attempt(&delivery(&e, "sub_x", t), Outcome::Failed), None)
            .await
            .unwrap();
        events.push(e.id.clone());
        last_delivery.push(d.delivery_id);
    }
    let to = ids::new_id(ids::EVENT);
    let scope = |only_failed| RecoveryScope {
        tenant_id: "acme".into(),
        subscription_id: "sub_r".into(),
        from_event_id: from.clone(),
        to_event_id: to.clone(),
        only_failed,
    };
    assert_eq!(s.count_recovery_candidates(&scope(false)).await.unwrap(), 5);
    assert_eq!(s.count_recovery_candidates(&scope(true)).await.unwrap(), 3);

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .recovery_candidates(&scope(false), after.as_deref(), 2)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(|c| c.event_id.clone());
        paged.extend(page.into_iter().map(|c| (c.event_id, c.delivery_id)));
    }
    let expected: Vec<(String, String)> = events
        .iter()
        .cloned()
        .zip(last_delivery.iter().cloned())
        .collect();
    assert_eq!(
        paged, expected,
        "in event order, each with its latest delivery"
    );
    let failed: Vec<String> = s
        .recovery_candidates(&scope(true), None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.event_id)
        .collect();
    assert_eq!(
        failed,
        [events[1].clone(), events[2].clone(), events[4].clone()]
    );

    // A job: created, stepped once, a replay finished, then completed.
    let now_t = OffsetDateTime::now_utc();
    let job = RecoveryJob {
        id: ids::new_id("rcv"),
        tenant_id: "acme".into(),
        subscription_id: "sub_r".into(),
        since: now_t - time::Duration::hours(1),
        until: now_t,
        only_failed: true,
        source: RecoverySource::Deliveries,
        status: RecoveryStatus::Running,
        total: 3,
        scheduled: 0,
        done: 0,
        created_at: now_t,
        updated_at: now_t,
    };
    s.create_recovery(&job).await.unwrap();
    let unfinished = s.unfinished_recoveries().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(
        (unfinished[0].0.id.as_str(), unfinished[0].1.as_deref()),
        (job.id.as_str(), None)
    );

    let replay_event = herald_engine::model::DomainEvent {
        id: events[1].clone(),
        ..event("acme", "order.created")
    };
    let mut replay = delivery(&replay_event, "sub_r", now() - 1_000);
    replay.is_replay = true;
    replay.replay_of = Some(last_delivery[1].clone());
    s.advance_recovery(&job, vec![replay.clone()], Some(events[1].clone()), false)
        .await
        .unwrap();
    let unfinished = s.unfinished_recoveries().await.unwrap();
    assert_eq!(
        unfinished[0].1.as_deref(),
        Some(events[1].as_str()),
        "resumes after its cursor"
    );
    let stepped = s.get_recovery("acme", &job.id).await.unwrap().unwrap();
    assert_eq!((stepped.scheduled, stepped.done), (1, 0));
    assert!(s.get_recovery("globex", &job.id).await.unwrap().is_none());

    let claimed = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    s.record_attempt(attempt(&replay, Outcome::Delivered), None)
        .await
        .unwrap();
    let progressed = s.get_recovery("acme", &job.id).await.unwrap().unwrap();
    assert_eq!((progressed.scheduled, progressed.done), (1, 1));

    s.advance_recovery(&stepped, Vec::new(), Some(events[4].clone()), true)
        .await
        .unwrap();
    assert!(s.unfinished_recoveries().await.unwrap().is_empty());
    let finished = s.get_recovery("acme", &job.id).await.unwrap().unwrap();
    assert_eq!(finished.status, RecoveryStatus::Completed);
    assert_eq!(finished.scheduled, 1);
}

/// Two attempts of one subscription and event recorded together (the
/// stores commit them in one group): the later one is the event's latest
/// outcome, whichever way round.
async fn attempts_recorded_together_leave_the_later_outcome(h: &Harness) {
    let s = &h.store;
    let t = now();
    let from = ids::new_id(ids::EVENT);
    let mut finally_failed = Vec::new();
    for (first, then) in [
        (Outcome::Failed, Outcome::Delivered),
        (Outcome::Delivered, Outcome::Failed),
        (Outcome::Failed, Outcome::Dead),
        (Outcome::Dead, Outcome::Delivered),
    ] {
        let e = event("acme", "order.created");
        s.record_event(&e, POSITION, 0).await.unwrap();
        let (a, b) = (delivery(&e, "sub_t", t), delivery(&e, "sub_t", t));
        // `join!` polls in order: `a` is queued first.
        let (ra, rb) = futures::join!(
            s.record_attempt(attempt(&a, first), None),
            s.record_attempt(attempt(&b, then), None)
        );
        ra.unwrap();
        rb.unwrap();
        if then != Outcome::Delivered {
            finally_failed.push(e.id.clone());
        }
    }
    let scope = RecoveryScope {
        tenant_id: "acme".into(),
        subscription_id: "sub_t".into(),
        from_event_id: from,
        to_event_id: ids::new_id(ids::EVENT),
        only_failed: true,
    };
    let failed: Vec<String> = s
        .recovery_candidates(&scope, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.event_id)
        .collect();
    assert_eq!(failed, finally_failed);
}
