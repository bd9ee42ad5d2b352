//! The webhook outbox on every backend: filled from the feed once, in
//! order, one armed delivery per URL, attempts logged, and the next event
//! armed only once the earlier one is over.

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use loraflow_core::ids::JobId;
use loraflow_core::job::canned::{sample_dataset, sample_spec};
use loraflow_core::job::{CreateJob, JobCommand, SubmitJob};
use loraflow_core::webhook::{DeliveryState, WebhookBody, WebhookSpec};
use tokio_util::sync::CancellationToken;

use super::support::{Kind, TestStore, meta, on_every_backend, readable, services, test_options};
use crate::Store;
use crate::webhooks::{AfterAttempt, AttemptRecord, DeliveryCursor};

const A: &str = "https://a.example/hook";
const B: &str = "https://b.example/hook";

fn id(s: &str) -> JobId {
    JobId::new(s)
}

/// Create and submit `job` with webhooks A (workflow events) and B (queued
/// steps); returns the position of its last event.
async fn job_with_hooks(store: &Store, job: &str) -> u64 {
    let mut spec = sample_spec();
    spec.webhooks = vec![
        WebhookSpec::new(A, ["workflow:*"]),
        WebhookSpec::new(B, ["step:queued"]),
    ];
    store
        .execute(
            &id(job),
            JobCommand::Create(CreateJob {
                job_id: id(job),
                spec,
            }),
            meta(),
        )
        .await
        .expect("create");
    let c = store
        .execute(
            &id(job),
            JobCommand::Submit(SubmitJob {
                dataset: sample_dataset(),
            }),
            meta(),
        )
        .await
        .expect("submit");
    c.position.expect("written")
}

/// A job without webhooks, to show it queues nothing.
async fn plain_job(store: &Store, job: &str) -> u64 {
    store
        .execute(
            &id(job),
            JobCommand::Create(CreateJob {
                job_id: id(job),
                spec: sample_spec(),
            }),
            meta(),
        )
        .await
        .expect("create")
        .position
        .expect("written")
}

fn attempt(t: &TestStore, after: AfterAttempt, status: Option<u16>) -> AttemptRecord {
    AttemptRecord {
        at: t.store.services().clock.now(),
        status,
        error: (after != AfterAttempt::Delivered).then(|| "HTTP 500".to_owned()),
        duration: Duration::from_millis(12),
        after,
    }
}

async fn events_are_queued_once_per_matching_url_in_feed_order(t: &TestStore) {
    let s = &t.store;
    job_with_hooks(s, "job-w").await;
    let last = plain_job(s, "job-plain").await;
    readable(s, last).await;
    let w = s.webhooks();
    assert_eq!(w.catch_up().await.unwrap(), last);
    // A second catch-up, and one by another process, queue nothing more.
    assert_eq!(w.catch_up().await.unwrap(), last);
    if t.kind != Kind::Memory {
        let other = t.reopen().await;
        assert_eq!(other.webhooks().catch_up().await.unwrap(), last);
        other.close().await;
    }
    assert!(
        w.deliveries(&id("job-plain"), None, 100)
            .await
            .unwrap()
            .is_empty()
    );

    let all = w.deliveries(&id("job-w"), None, 100).await.unwrap();
    let got: Vec<_> = all
        .iter()
        .map(|d| (d.sequence, d.url.as_str(), d.event_type.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, A, "workflow:created"),
            (2, A, "workflow:started"),
            (3, B, "step:queued"),
        ]
    );
    let history = s.history(&id("job-w")).await.unwrap();
    for d in &all {
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.attempts, 0);
        assert_eq!(d.tenant.as_str(), "acme");
        assert_eq!(d.event_id, format!("job-w:{}", d.sequence));
        let body: WebhookBody = serde_json::from_str(&d.body).unwrap();
        let e = &history[d.sequence as usize - 1];
        assert_eq!(body.position, e.position);
        assert_eq!(d.position, e.position);
        assert_eq!(body.event, e.event_type);
        assert_eq!(body.timestamp, e.recorded_at);
    }
    // One armed delivery per URL: A's first event and B's only one.
    assert!(all[0].next_attempt_at.is_some());
    assert!(all[1].next_attempt_at.is_none(), "waits behind sequence 1");
    assert!(all[2].next_attempt_at.is_some());
    let now = s.services().clock.now();
    let due: Vec<_> = w
        .due(now, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.sequence)
        .collect();
    assert_eq!(due, [1, 3]);
    assert_eq!(w.next_due().await.unwrap(), Some(now));

    // Paging by (sequence, url).
    let first = w.deliveries(&id("job-w"), None, 2).await.unwrap();
    let rest = w
        .deliveries(&id("job-w"), Some(&DeliveryCursor::of(&first[1])), 2)
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), 3);
    assert_eq!(rest[0].sequence, 3);
}

async fn a_url_gets_its_next_event_only_after_the_earlier_one(t: &TestStore) {
    let s = &t.store;
    let last = job_with_hooks(s, "job-o").await;
    readable(s, last).await;
    let w = s.webhooks();
    w.catch_up().await.unwrap();
    let now = s.services().clock.now();
    let first = w.due(now, 10).await.unwrap().remove(0);
    assert_eq!((first.sequence, first.url.as_str()), (1, A));

    // Claimed: nobody else takes it until the claim ends.
    let until = now + ChronoDuration::seconds(30);
    assert!(w.claim(&first, until).await.unwrap());
    assert!(!w.claim(&first, until).await.unwrap(), "claimed twice");
    assert!(w.due(now, 10).await.unwrap().iter().all(|d| d.url != A));

    // A failed attempt: retried later, and sequence 2 still waits.
    let retry_at = now + ChronoDuration::seconds(5);
    let failed = AttemptRecord {
        after: AfterAttempt::RetryAt(retry_at),
        ..attempt(t, AfterAttempt::RetryAt(retry_at), Some(500))
    };
    assert!(w.record(&first, &failed).await.unwrap());
    assert!(w.due(now, 10).await.unwrap().iter().all(|d| d.url != A));
    let again = w.due(retry_at, 10).await.unwrap();
    let again = again.iter().find(|d| d.url == A).expect("due again");
    assert_eq!((again.sequence, again.attempts), (1, 1));
    assert_eq!(again.last_status, Some(500));
    assert_eq!(again.last_error.as_deref(), Some("HTTP 500"));

    // Delivered: sequence 2 is armed at once.
    assert!(w.claim(again, until).await.unwrap());
    assert!(
        w.record(again, &attempt(t, AfterAttempt::Delivered, Some(204)))
            .await
            .unwrap()
    );
    assert!(
        !w.record(again, &attempt(t, AfterAttempt::Delivered, Some(204)))
            .await
            .unwrap(),
        "a delivered event takes no more attempts"
    );
    let due = w.due(now, 10).await.unwrap();
    let next = due.iter().find(|d| d.url == A).expect("next armed");
    assert_eq!(next.sequence, 2);

    // Abandoned: the URL moves on too (nothing after it here).
    assert!(
        w.record(next, &attempt(t, AfterAttempt::Abandon, None))
            .await
            .unwrap()
    );
    let all = w.deliveries(&id("job-o"), None, 100).await.unwrap();
    let states: Vec<_> = all.iter().map(|d| (d.sequence, d.state)).collect();
    assert_eq!(
        states,
        [
            (1, DeliveryState::Delivered),
            (2, DeliveryState::Abandoned),
            (3, DeliveryState::Pending),
        ]
    );
    assert!(all[0].delivered_at.is_some());

    let log = w.attempts(&id("job-o"), 1..=u64::MAX).await.unwrap();
    let log: Vec<_> = log
        .iter()
        .map(|a| (a.sequence, a.attempt, a.status, a.delivered))
        .collect();
    assert_eq!(
        log,
        [
            (1, 1, Some(500), false),
            (1, 2, Some(204), true),
            (2, 1, None, false)
        ]
    );
}

/// Wait until the outbox's checkpoint reaches `position`.
async fn outbox_reaches(store: &Store, position: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.webhooks().position().await.unwrap() < position {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox never reached {position}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many deliveries the outbox queued for `job`.
async fn queued(store: &Store, job: &str) -> usize {
    store
        .webhooks()
        .deliveries(&id(job), None, 10)
        .await
        .unwrap()
        .len()
}

async fn the_outbox_runner_follows_the_feed(t: &TestStore) {
    let s = &t.store;
    let stop = CancellationToken::new();
    let runner = s.webhooks().start_outbox(stop.clone());
    let last = job_with_hooks(s, "job-r").await;
    outbox_reaches(s, last).await;
    assert_eq!(queued(s, "job-r").await, 3);
    stop.cancel();
    runner.await.unwrap().unwrap();
}

/// A store on `t`'s database (on the memory backend, a new one) whose
/// outbox waits `pace` once caught up and reads `batch` events at a time.
async fn paced(t: &TestStore, pace: Duration, batch: usize) -> Store {
    let options = crate::StoreOptions {
        outbox_pace: pace,
        projection_batch: batch,
        ..test_options(t.schema().map(str::to_owned))
    };
    Store::open_with(&t.url, services(t.clock.clone()), options)
        .await
        .expect("open a paced store")
}

/// Once it has caught up, the outbox waits its pace before it reads again:
/// what is written meanwhile waits (and then goes in one transaction), and
/// none of it is lost.
async fn a_caught_up_outbox_waits_its_pace(t: &TestStore) {
    let s = paced(t, Duration::from_secs(4), 500).await;
    let first = job_with_hooks(&s, "job-p1").await;
    readable(&s, first).await;
    let stop = CancellationToken::new();
    let runner = s.webhooks().start_outbox(stop.clone());
    // One batch, not full: the runner now waits.
    outbox_reaches(&s, first).await;
    let second = job_with_hooks(&s, "job-p2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.webhooks().position().await.unwrap(),
        first,
        "the outbox read again within its pace"
    );
    outbox_reaches(&s, second).await;
    for job in ["job-p1", "job-p2"] {
        assert_eq!(queued(&s, job).await, 3, "{job}");
    }
    stop.cancel();
    runner.await.unwrap().unwrap();
    s.close().await;
}

/// A full batch means the outbox is behind: it reads the next at once,
/// whatever its pace.
async fn an_outbox_behind_the_feed_does_not_wait(t: &TestStore) {
    let s = paced(t, Duration::from_secs(30), 2).await;
    let last = job_with_hooks(&s, "job-b1").await;
    let events = s.raw_history(&id("job-b1")).await.unwrap().len();
    assert!(events > 2, "one job makes more than one batch of 2");
    readable(&s, last).await;
    let stop = CancellationToken::new();
    let runner = s.webhooks().start_outbox(stop.clone());
    // Waiting after each batch of 2 would take 30 s per batch; the check
    // gives up after 20.
    outbox_reaches(&s, last).await;
    assert_eq!(queued(&s, "job-b1").await, 3);
    stop.cancel();
    runner.await.unwrap().unwrap();
    s.close().await;
}

on_every_backend!(
    events_are_queued_once_per_matching_url_in_feed_order,
    a_url_gets_its_next_event_only_after_the_earlier_one,
    the_outbox_runner_follows_the_feed,
    a_caught_up_outbox_waits_its_pace,
    an_outbox_behind_the_feed_does_not_wait,
);
