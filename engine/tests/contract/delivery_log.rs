//! [`DeliveryLogStore`]: an attempt's record and its schedule change are
//! one step; the log lists newest first, paged and filtered.

use herald_engine::{
    model::{Outcome, WebhookDeliveryLog},
    store::LogFilter,
};

use crate::{
    backend::Harness,
    fixtures::{attempt, delivery, event, now, POSITION},
};

contract!(
    an_attempt_reschedules_or_settles_its_delivery,
    a_logged_attempt_leaves_the_schedule_to_a_hold,
    logs_page_newest_first_with_filters,
    attempts_recorded_at_once_are_each_listed_once,
);

fn ids(logs: &[WebhookDeliveryLog]) -> Vec<String> {
    logs.iter().map(|l| l.id.clone()).collect()
}

async fn an_attempt_reschedules_or_settles_its_delivery(h: &Harness) {
    let s = &h.store;
    let e = event("acme", "order.created");
    s.record_event(&e, POSITION, 0).await.unwrap();
    let t = now();
    let d = delivery(&e, "sub_a", t - 1_000);
    s.schedule(vec![d.clone()]).await.unwrap();
    let (first, _) = s.claim_due(t, t + 60_000, 10).await.unwrap().remove(0);
    assert_eq!(first.attempt, 1);

    let mut retry = d.clone();
    retry.attempt = 2;
    retry.due_at_ms = t - 500;
    let failed = attempt(&d, Outcome::Failed);
    s.record_attempt(failed.clone(), Some(retry.clone()))
        .await
        .unwrap();
    assert_eq!(s.schedule_backlog().await.unwrap(), 1);
    let claimed = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].0.delivery_id.as_str(), claimed[0].0.attempt),
        (d.delivery_id.as_str(), 2)
    );

    let dead = attempt(&retry, Outcome::Dead);
    s.record_attempt(dead.clone(), None).await.unwrap();
    assert_eq!(s.schedule_backlog().await.unwrap(), 0);
    assert!(s
        .claim_due(now() + 120_000, now() + 180_000, 10)
        .await
        .unwrap()
        .is_empty());
    let filter = LogFilter {
        event_id: Some(e.id.clone()),
        ..LogFilter::default()
    };
    let logs = s.list_delivery_logs("acme", &filter, 10).await.unwrap();
    assert_eq!(ids(&logs), [dead.id, failed.id]);
    assert_eq!(logs[0].outcome, Outcome::Dead);
}

/// What a refusal by the open circuit does: the attempt is logged, the
/// schedule entry is left to the hold that parks it, and a release makes
/// it due again.
async fn a_logged_attempt_leaves_the_schedule_to_a_hold(h: &Harness) {
    let s = &h.store;
    let e = event("acme", "order.created");
    s.record_event(&e, POSITION, 0).await.unwrap();
    let t = now();
    let d = delivery(&e, "sub_a", t - 1_000);
    s.schedule(vec![d.clone()]).await.unwrap();
    let (claimed, _) = s.claim_due(t, t + 60_000, 10).await.unwrap().remove(0);
    let refused = attempt(&claimed, Outcome::Failed);
    s.log_attempt(refused.clone()).await.unwrap();
    assert_eq!(s.schedule_backlog().await.unwrap(), 1, "still scheduled");
    s.hold(&claimed, t + 3_600_000).await.unwrap();
    let held = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
    assert!(held.is_empty(), "held until its re-check");
    assert_eq!(s.release_held("sub_a", now(), 1).await.unwrap(), 1);
    let again = s.claim_due(now(), now() + 60_000, 10).await.unwrap();
    assert_eq!(again.len(), 1, "released");
    assert_eq!(
        (again[0].0.delivery_id.as_str(), again[0].0.attempt),
        (d.delivery_id.as_str(), 1),
        "a refusal uses no attempt"
    );
    let filter = LogFilter {
        event_id: Some(e.id.clone()),
        ..LogFilter::default()
    };
    let logs = s.list_delivery_logs("acme", &filter, 10).await.unwrap();
    assert_eq!(ids(&logs), [refused.id]);
}

async fn logs_page_newest_first_with_filters(h: &Harness) {
    let s = &h.store;
    let t = now();
    let mut made = Vec::new();
    let outcomes = [Outcome::Delivered, Outcome::Failed, Outcome::Dead];
    for n in 0..6 {
        let e = event("acme", "order.created");
        s.record_event(&e, POSITION, 0).await.unwrap();
        let sub = if n % 2 == 0 { "sub_even" } else { "sub_odd" };
        let a = attempt(&delivery(&e, sub, t), outcomes[n % 3]);
        s.record_attempt(a.clone(), None).await.unwrap();
        made.push(a);
    }
    let other = event("globex", "order.created");
    s.record_attempt(
        attempt(&delivery(&other, "sub_g", t), Outcome::Delivered),
        None,
    )
    .await
    .unwrap();
    let newest_first: Vec<String> = made.iter().rev().map(|a| a.id.clone()).collect();

    let list = |filter: LogFilter, limit| {
        let s = s.clone();
        async move { ids(&s.list_delivery_logs("acme", &filter, limit).await.unwrap()) }
    };
    assert_eq!(list(LogFilter::default(), 10).await, newest_first);
    let first = list(LogFilter::default(), 4).await;
    let rest = list(
        LogFilter {
            before: Some(first[3].clone()),
            ..LogFilter::default()
        },
        4,
    )
    .await;
    assert_eq!(
        first.iter().chain(&rest).cloned().collect::<Vec<_>>(),
        newest_first
    );

    let pick = |keep: &dyn Fn(&WebhookDeliveryLog) -> bool| -> Vec<String> {
        made.iter()
            .rev()
            .filter(|a| keep(a))
            .map(|a| a.id.clone())
            .collect()
    };
    let by_sub = LogFilter {
        subscription_id: Some("sub_even".into()),
        ..LogFilter::default()
    };
    assert_eq!(
        list(by_sub.clone(), 10).await,
        pick(&|a| a.subscription_id == "sub_even")
    );
    let failed = LogFilter {
        outcome: Some("failed".into()),
        ..LogFilter::default()
    };
    assert_eq!(
        list(failed, 10).await,
        pick(&|a| a.outcome == Outcome::Failed)
    );
    let both = LogFilter {
        outcome: Some("dead".into()),
        ..by_sub
    };
    assert_eq!(
        list(both, 10).await,
        pick(&|a| a.subscription_id == "sub_even" && a.outcome == Outcome::Dead)
    );
    let by_event = LogFilter {
        event_id: Some(made[4].event_id.clone()),
        ..LogFilter::default()
    };
    assert_eq!(list(by_event, 10).await, [made[4].id.clone()]);
    assert!(s
        .list_delivery_logs(
            "globex",
            &LogFilter {
                subscription_id: Some("sub_even".into()),
                ..LogFilter::default()
            },
            10
        )
        .await
        .unwrap()
        .is_empty());
}

/// Many attempts recorded concurrently — the CQL store writes them in
/// groups, a batch per partition key, split below Cassandra's batch size
/// limit — are each listed once, by subscription, by tenant and by event.
async fn attempts_recorded_at_once_are_each_listed_once(h: &Harness) {
    const N: usize = 300;
    let s = &h.store;
    let events: Vec<_> = (0..N / 3).map(|_| event("acme", "order.created")).collect();
    for e in &events {
        s.record_event(e, POSITION, 0).await.unwrap();
    }
    let t = now();
    let attempts: Vec<WebhookDeliveryLog> = (0..N)
        .map(|i| {
            let sub = if i % 2 == 0 { "sub_a" } else { "sub_b" };
            let mut a = attempt(
                &delivery(&events[i % events.len()], sub, t),
                Outcome::Delivered,
            );
            // Rows of all sizes: small, 2 KiB, and one far past a batch's limit.
            a.response_body = match i {
                7 => Some("x".repeat(80 * 1024)),
                i if i % 3 == 0 => Some("y".repeat(2048)),
                _ => None,
            };
            a
        })
        .collect();
    let writes = attempts.iter().enumerate().map(|(i, a)| async move {
        if i % 2 == 0 {
            s.log_attempt(a.clone()).await
        } else {
            s.record_attempt(a.clone(), None).await
        }
    });
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    let mut want: Vec<String> = ids(&attempts);
    want.sort();
    let listed = |filter: LogFilter| async move {
        let mut got = ids(&s.list_delivery_logs("acme", &filter, N + 10).await.unwrap());
        got.sort();
        got
    };
    let by_sub = |sub: &str| LogFilter {
        subscription_id: Some(sub.into()),
        ..LogFilter::default()
    };
    let mut by_subscriptions = listed(by_sub("sub_a")).await;
    by_subscriptions.extend(listed(by_sub("sub_b")).await);
    by_subscriptions.sort();
    assert_eq!(by_subscriptions, want, "by subscription");
    assert_eq!(listed(LogFilter::default()).await, want, "by tenant");
    let mut by_event = Vec::new();
    for e in &events {
        let filter = LogFilter {
            event_id: Some(e.id.clone()),
            ..LogFilter::default()
        };
        by_event.extend(listed(filter).await);
    }
    by_event.sort();
    assert_eq!(by_event, want, "by event");
    let big = s
        .list_delivery_logs("acme", &by_sub("sub_b"), N)
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.id == attempts[7].id)
        .expect("the large attempt is listed");
    assert_eq!(big.response_body.map(|b| b.len()), Some(80 * 1024));
}
