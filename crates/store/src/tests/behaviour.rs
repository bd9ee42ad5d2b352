//! The behaviour every backend must have, run on memory, SQLite and PostgreSQL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use futures::StreamExt;
use loraflow_core::ids::{ExecutorId, JobId, LeaseId, StepId, TenantId};
use loraflow_core::job::canned::{outputs_for, sample_dataset, sample_spec};
use loraflow_core::job::{
    ApproveJob, CancelJob, CreateJob, Heartbeat, JobCommand, JobEvent, JobState, LeaseStep,
    StepProgress, SubmitJob, replay,
};
use loraflow_core::views::{JobListFilter, JobStatus};
use loraflow_core::workflow::StepKind;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::support::{TestStore, long_history, meta, on_every_backend};
use crate::event::{HASH, PREV_HASH, RECORDED_AT, TENANT};
use crate::verify::ChainFault;
use crate::{Error, FeedFilter, JobListQuery, Store};

fn id(s: &str) -> JobId {
    JobId::new(s)
}

fn already_exists(err: &Error) -> bool {
    matches!(
        err,
        Error::Domain(loraflow_core::job::Error::AlreadyExists { .. })
    )
}

async fn create(store: &Store, job: &str, tenant: &str, priority: i32) -> crate::Committed {
    let mut spec = sample_spec();
    spec.tenant = TenantId::new(tenant);
    spec.priority = priority;
    spec.labels = BTreeMap::from([("team".to_owned(), format!("team-{tenant}"))]);
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
        .expect("create")
}

async fn submit(store: &Store, job: &str) -> crate::Committed {
    store
        .execute(
            &id(job),
            JobCommand::Submit(SubmitJob {
                dataset: sample_dataset(),
            }),
            meta(),
        )
        .await
        .expect("submit")
}

fn lease_cmd(step: &str, lease: &str) -> JobCommand {
    JobCommand::LeaseStep(LeaseStep {
        step_id: StepId::new(step),
        lease_id: LeaseId::new(lease),
        executor_id: ExecutorId::new("gpu-0"),
        instance: None,
    })
}

/// Lease and complete `step` of `job`.
async fn run_step(store: &Store, job: &str, step: &str, lease: &str) -> crate::Committed {
    store
        .execute(&id(job), lease_cmd(step, lease), meta())
        .await
        .expect("lease");
    let kind = match step {
        "validate" => StepKind::VALIDATE_DATASET,
        s => s,
    };
    store
        .execute(
            &id(job),
            JobCommand::CompleteStep(outputs_for(&StepKind::new(kind), LeaseId::new(lease))),
            meta(),
        )
        .await
        .expect("complete")
}

async fn execute_commits_events_with_positions_metadata_and_chain(t: &TestStore) {
    let s = &t.store;
    let c = create(s, "job-a", "acme", 0).await;
    assert_eq!(c.sequence, 1);
    assert_eq!(c.job.state(), Some(JobState::Pending));
    let p1 = c.position.expect("a position");
    let c = submit(s, "job-a").await;
    assert_eq!(c.sequence, 3, "JobSubmitted and StepQueued");
    assert!(c.position.unwrap() > p1);

    let loaded = s.load(&id("job-a")).await.unwrap().expect("job exists");
    assert_eq!(loaded.sequence, 3);
    assert_eq!(loaded.job, c.job);
    assert!(s.load(&id("nobody")).await.unwrap().is_none());

    let history = s.history(&id("job-a")).await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(
        history.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(history.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(history.last().unwrap().position, c.position.unwrap());
    assert_eq!(
        replay(history.iter().map(|e| e.payload.clone())),
        loaded.job
    );
    for e in &history {
        assert_eq!(e.metadata["request_id"], "req-1");
        assert_eq!(e.metadata[TENANT], "acme");
        assert_eq!(e.tenant(), Some(TenantId::new("acme")));
        assert!(e.metadata.contains_key(RECORDED_AT));
        assert_eq!(e.recorded_at, t.clock_now());
        assert_eq!(e.event_type, e.payload.name());
    }
    assert_eq!(history[0].metadata[PREV_HASH], crate::chain::GENESIS_HASH);
    assert_eq!(history[1].metadata[PREV_HASH], history[0].metadata[HASH]);
    s.verify_job(&id("job-a")).await.expect("chain verifies");
}

async fn refused_commands_write_nothing(t: &TestStore) {
    let s = &t.store;
    let err = s
        .execute(
            &id("ghost"),
            JobCommand::Submit(SubmitJob {
                dataset: sample_dataset(),
            }),
            meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Domain(loraflow_core::job::Error::NotFound)),
        "{err:?}"
    );
    create(s, "job-b", "acme", 0).await;
    let err = s
        .execute(
            &id("job-b"),
            JobCommand::Create(CreateJob {
                job_id: id("job-b"),
                spec: sample_spec(),
            }),
            meta(),
        )
        .await
        .unwrap_err();
    assert!(already_exists(&err), "{err:?}");
    let err = s
        .execute(
            &id("job-b"),
            JobCommand::Approve(ApproveJob {
                epoch: 1,
                step: None,
                approved_by: "r".into(),
            }),
            meta(),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Domain(loraflow_core::job::Error::IllegalTransition { .. })
    ));
    assert_eq!(s.history(&id("job-b")).await.unwrap().len(), 1);
    assert!(s.history(&id("ghost")).await.unwrap().is_empty());
}

async fn a_repeated_cancel_writes_nothing(t: &TestStore) {
    let s = &t.store;
    create(s, "job-c", "acme", 0).await;
    let cancel = || {
        JobCommand::Cancel(CancelJob {
            reason: "changed my mind".into(),
            cancelled_by: "alice".into(),
        })
    };
    let first = s.execute(&id("job-c"), cancel(), meta()).await.unwrap();
    assert_eq!(first.sequence, 2);
    assert!(first.position.is_some());
    let again = s.execute(&id("job-c"), cancel(), meta()).await.unwrap();
    assert_eq!((again.sequence, again.position), (2, None));
    assert!(again.events.is_empty());
    assert_eq!(again.job.state(), Some(JobState::Failed));
}

async fn a_stale_etag_is_refused_without_writing(t: &TestStore) {
    let s = &t.store;
    let c = s
        .execute_expecting(
            &id("job-e"),
            0,
            JobCommand::Create(CreateJob {
                job_id: id("job-e"),
                spec: sample_spec(),
            }),
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(c.sequence, 1);
    let err = s
        .execute_expecting(
            &id("job-e"),
            0,
            JobCommand::Submit(SubmitJob {
                dataset: sample_dataset(),
            }),
            meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleEtag {
                expected: 0,
                actual: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.history(&id("job-e")).await.unwrap().len(), 1);
    let c = s
        .execute_expecting(
            &id("job-e"),
            1,
            JobCommand::Submit(SubmitJob {
                dataset: sample_dataset(),
            }),
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(c.sequence, 3);
}

/// Eight executors race for one queued step: exactly one lease is granted,
/// the others are refused once their retry sees the step leased.
async fn racing_leases_grant_one(t: &TestStore) {
    let s = &t.store;
    create(s, "job-r", "acme", 0).await;
    submit(s, "job-r").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.execute(
                &id("job-r"),
                lease_cmd("validate", &format!("lease-{i}")),
                meta(),
            )
            .await
        }));
    }
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => granted += 1,
            Err(Error::Domain(loraflow_core::job::Error::StepNotReady { .. })) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(granted, 1);
    let leased = s
        .history(&id("job-r"))
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.payload, JobEvent::StepLeased(_)))
        .count();
    assert_eq!(leased, 1);
}

/// Concurrent heartbeats on one lease all land (retried on conflict), and a
/// command that is not safe to retry surfaces the conflict instead.
async fn conflicts_are_retried_only_when_safe(t: &TestStore) {
    let s = &t.store;
    create(s, "job-h", "acme", 0).await;
    submit(s, "job-h").await;
    s.execute(&id("job-h"), lease_cmd("validate", "l1"), meta())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let hb = JobCommand::Heartbeat(Heartbeat {
                lease_id: LeaseId::new("l1"),
                progress: StepProgress {
                    percent: i as f32,
                    ..Default::default()
                },
            });
            s.execute(&id("job-h"), hb, meta()).await
        }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .expect("heartbeats are retried until they land");
    }
    assert_eq!(s.history(&id("job-h")).await.unwrap().len(), 4 + 6);

    // Four submits of one created job: one lands, the rest conflict or find
    // it submitted; none is retried into a second JobSubmitted.
    create(s, "job-s", "acme", 0).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.execute(
                &id("job-s"),
                JobCommand::Submit(SubmitJob {
                    dataset: sample_dataset(),
                }),
                meta(),
            )
            .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Conflict {
                job_id,
                attempts: 1,
            }) => assert_eq!(job_id.as_str(), "job-s"),
            Err(Error::Domain(loraflow_core::job::Error::IllegalTransition { .. })) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);

    // A stale append is a typed conflict and writes nothing.
    let err = s
        .append_events(
            &id("job-s"),
            1,
            long_history("job-s", 2)[1..2].to_vec(),
            meta(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
}

async fn the_feed_reads_in_order_with_filters(t: &TestStore) {
    let s = &t.store;
    create(s, "f1", "acme", 0).await;
    create(s, "f2", "globex", 0).await;
    submit(s, "f1").await;
    let last = submit(s, "f2").await;
    super::support::readable(s, last.position.unwrap()).await;
    let feed = s.feed();
    let all = feed.read(0, 100, &FeedFilter::all()).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(feed.head().await.unwrap(), all.last().unwrap().position);
    let order: Vec<_> = all
        .iter()
        .map(|e| (e.job_id.to_string(), e.sequence))
        .collect();
    assert_eq!(order[0], ("f1".into(), 1));
    assert_eq!(order[1], ("f2".into(), 1));

    let page = feed
        .read(all[1].position, 2, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(
        page,
        all[2..4].to_vec(),
        "read is exclusive of its position"
    );

    let globex = feed
        .read(0, 100, &FeedFilter::tenant("globex"))
        .await
        .unwrap();
    assert_eq!(globex.len(), 3);
    assert!(globex.iter().all(|e| e.job_id.as_str() == "f2"));
    let f1 = feed.read(0, 100, &FeedFilter::job("f1")).await.unwrap();
    assert_eq!(f1.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2, 3]);
    let none = FeedFilter {
        tenant: Some("globex".into()),
        job: Some("f1".into()),
    };
    assert!(feed.read(0, 100, &none).await.unwrap().is_empty());
}

async fn next_event<S>(stream: &mut std::pin::Pin<Box<S>>) -> crate::StoredEvent
where
    S: futures::Stream<Item = crate::Result<crate::StoredEvent>>,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("no read error")
}

async fn a_subscription_catches_up_then_follows(t: &TestStore) {
    let s = &t.store;
    create(s, "s1", "acme", 0).await;
    create(s, "s2", "globex", 0).await;
    let mut all = Box::pin(s.feed().subscribe(0, FeedFilter::all()));
    let mut acme = Box::pin(s.feed().subscribe(0, FeedFilter::tenant("acme")));
    let e: crate::StoredEvent = next_event(&mut all).await;
    assert_eq!((e.job_id.as_str(), e.sequence), ("s1", 1));
    let e: crate::StoredEvent = next_event(&mut all).await;
    assert_eq!((e.job_id.as_str(), e.sequence), ("s2", 1));
    // Live: written after the subscription caught up.
    submit(s, "s1").await;
    submit(s, "s2").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e: crate::StoredEvent = next_event(&mut all).await;
        seen.push((e.job_id.to_string(), e.sequence));
    }
    assert_eq!(
        seen,
        [
            ("s1".into(), 2),
            ("s1".into(), 3),
            ("s2".into(), 2),
            ("s2".into(), 3)
        ]
    );
    let mut acme_seen = Vec::new();
    for _ in 0..3 {
        let e: crate::StoredEvent = next_event(&mut acme).await;
        acme_seen.push(e.sequence);
        assert_eq!(e.job_id.as_str(), "s1");
    }
    assert_eq!(acme_seen, [1, 2, 3]);
}

/// Views from the projection runner: status, lists with page tokens, queue,
/// and read-your-writes with `wait_for`.
async fn views_follow_the_feed(t: &TestStore) {
    let s = &t.store;
    let shutdown = CancellationToken::new();
    let runner = s.start_projections(shutdown.clone());
    for (i, tenant) in ["acme", "acme", "globex", "acme", "globex"]
        .iter()
        .enumerate()
    {
        t.clock.advance(ChronoDuration::seconds(1));
        create(s, &format!("v{i}"), tenant, i as i32).await;
    }
    for i in [1, 2, 4] {
        submit(s, &format!("v{i}")).await;
    }
    let c = run_step(s, "v1", "validate", "lease-v1").await;
    s.wait_for_timeout(c.position.unwrap(), Duration::from_secs(20))
        .await
        .expect("views catch up");

    let status = s
        .views()
        .job_status(&id("v1"))
        .await
        .unwrap()
        .expect("status");
    let history = s.history(&id("v1")).await.unwrap();
    let folded = history
        .iter()
        .fold(None, |st, e| JobStatus::fold(st, e.meta(), &e.payload))
        .unwrap();
    assert_eq!(status, folded);
    assert_eq!(status.state, JobState::Processing);
    assert_eq!(status.sequence, c.sequence);
    assert!(s.views().job_status(&id("nobody")).await.unwrap().is_none());

    // The queue: v4 (priority 4) and v2 (priority 2) wait for validate, v1 for label.
    let queue = s.views().queue().await.unwrap();
    let order: Vec<_> = queue
        .iter()
        .map(|q| {
            (
                q.place,
                q.step.job_id.to_string(),
                q.step.step_id.to_string(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (1, "v4".into(), "validate".into()),
            (2, "v2".into(), "validate".into()),
            (3, "v1".into(), "label".into()),
        ]
    );

    // Lists: newest first, filtered, paged with opaque tokens.
    let mut q = JobListQuery {
        filter: JobListFilter {
            tenant: Some("acme".into()),
            ..Default::default()
        },
        page_size: 2,
        page_token: None,
    };
    let p1 = s.views().list_jobs(&q).await.unwrap();
    assert_eq!(
        p1.jobs
            .iter()
            .map(|j| j.job_id.as_str())
            .collect::<Vec<_>>(),
        ["v3", "v1"]
    );
    let token = p1.next_page_token.clone().expect("a second page");
    assert!(token.parse::<u64>().is_err());
    q.page_token = Some(token.clone());
    let p2 = s.views().list_jobs(&q).await.unwrap();
    assert_eq!(
        p2.jobs
            .iter()
            .map(|j| j.job_id.as_str())
            .collect::<Vec<_>>(),
        ["v0"]
    );
    assert!(p2.next_page_token.is_none());
    let other = JobListQuery {
        filter: JobListFilter {
            tenant: Some("globex".into()),
            ..Default::default()
        },
        page_size: 2,
        page_token: Some(token),
    };
    let err = s.views().list_jobs(&other).await.unwrap_err();
    assert!(matches!(err, Error::InvalidPageToken { .. }), "{err:?}");

    let by_state = JobListQuery {
        filter: JobListFilter {
            state: Some(JobState::Submitted),
            ..Default::default()
        },
        ..Default::default()
    };
    let ids: Vec<_> = s
        .views()
        .list_jobs(&by_state)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.job_id.0)
        .collect();
    assert_eq!(ids, ["v4", "v2"]);
    let by_label = JobListQuery {
        filter: JobListFilter {
            labels: BTreeMap::from([("team".to_owned(), "team-globex".to_owned())]),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(s.views().list_jobs(&by_label).await.unwrap().jobs.len(), 2);
    let all = s.views().list_jobs(&JobListQuery::default()).await.unwrap();
    assert_eq!(all.jobs.len(), 5);

    // Rebuilding gives the same views.
    let before: Vec<_> = all.jobs.clone();
    let queue_before = s.views().queue().await.unwrap();
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    s.rebuild_views().await.unwrap();
    assert_eq!(
        s.views()
            .list_jobs(&JobListQuery::default())
            .await
            .unwrap()
            .jobs,
        before
    );
    assert_eq!(s.views().queue().await.unwrap(), queue_before);
    assert_eq!(
        s.views().job_status(&id("v1")).await.unwrap().unwrap(),
        status
    );
}

async fn a_tampered_event_is_found(t: &TestStore) {
    let s = &t.store;
    create(s, "job-t", "acme", 0).await;
    submit(s, "job-t").await;
    s.verify_job(&id("job-t")).await.unwrap();
    let history = s.raw_history(&id("job-t")).await.unwrap();
    let mut forged = history[1].payload.clone();
    forged["JobSubmitted"]["dataset"]["image_count"] = json!(9999);
    t.tamper(history[1].position, forged).await;
    let err = s.verify_job(&id("job-t")).await.unwrap_err();
    let Error::TamperedLog(c) = err else {
        panic!("{err:?}")
    };
    assert_eq!((c.sequence, c.position), (2, history[1].position));
    assert_eq!(c.fault, ChainFault::Edited);
}

/// cqrs-es' own framework on the store still writes the chain and metadata.
async fn the_cqrs_framework_path_keeps_the_chain(t: &TestStore) {
    let s = &t.store;
    create(s, "job-fw", "acme", 0).await;
    s.framework()
        .execute_with_metadata(
            "job-fw",
            JobCommand::Submit(SubmitJob {
                dataset: sample_dataset(),
            }),
            HashMap::from([("via".to_owned(), "framework".to_owned())]),
        )
        .await
        .unwrap();
    let h = s.history(&id("job-fw")).await.unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[2].metadata["via"], "framework");
    assert_eq!(h[2].metadata[TENANT], "acme");
    s.verify_job(&id("job-fw")).await.unwrap();
}

/// Four writers append batches while a subscriber follows: it sees every
/// event once, in position order, each job in sequence order.
async fn concurrent_writers_leave_no_gap(t: &TestStore) {
    let s = &t.store;
    let (writers, per_job) = (4, 120);
    let sub = {
        let feed = s.feed();
        tokio::spawn(async move {
            let mut stream = Box::pin(feed.subscribe(0, FeedFilter::all()));
            let mut seen = Vec::new();
            while seen.len() < writers * per_job {
                let e = tokio::time::timeout(Duration::from_secs(20), stream.next())
                    .await
                    .expect("feed stalled")
                    .unwrap()
                    .unwrap();
                seen.push((e.position, e.job_id.to_string(), e.sequence));
            }
            seen
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let job = format!("w{w}");
            let events = long_history(&job, per_job);
            let mut at = 0;
            for chunk in events[..per_job].chunks(7) {
                s.append_events(&id(&job), at, chunk.to_vec(), meta())
                    .await
                    .unwrap();
                at += chunk.len() as u64;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = sub.await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "positions increase"
    );
    let mut next: HashMap<String, u64> = HashMap::new();
    for (_, job, seq) in &seen {
        let n = next.entry(job.clone()).or_insert(1);
        assert_eq!(seq, n, "job {job} in sequence order, each event once");
        *n += 1;
    }
    assert_eq!(
        next.values().collect::<HashSet<_>>(),
        HashSet::from([&(per_job as u64 + 1)])
    );
    for w in 0..writers {
        s.verify_job(&id(&format!("w{w}"))).await.unwrap();
    }
}

async fn opening_again_migrates_nothing(t: &TestStore) {
    create(&t.store, "job-m", "acme", 0).await;
    // Two more processes start at once on the same database.
    let (a, b) = tokio::join!(t.reopen(), t.reopen());
    if t.kind != super::support::Kind::Memory {
        assert_eq!(a.history(&id("job-m")).await.unwrap().len(), 1);
        assert_eq!(b.load(&id("job-m")).await.unwrap().unwrap().sequence, 1);
    }
    // Each version applied once, whichever process got there first.
    match &a.shared().backend {
        crate::backend::Backend::Sqlite(pool) => assert_eq!(
            crate::migrate::applied_sqlite(pool).await.unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        ),
        crate::backend::Backend::Postgres(pool) => assert_eq!(
            crate::migrate::applied_postgres(pool).await.unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        ),
        crate::backend::Backend::Memory(..) => {}
    }
    a.close().await;
    b.close().await;
}

impl TestStore {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use loraflow_core::clock::Clock;
        self.clock.now()
    }
}

/// `execute_all`: a create and a submit in one commit, the events chained
/// and the job submitted; a list with a refused command writes nothing; a
/// create on an id in use is refused (decided first on no job, its write
/// conflicts, and the job as stored refuses it).
async fn commands_run_as_one_commit_or_not_at_all(t: &TestStore) {
    let s = &t.store;
    let spec = |tenant: &str| {
        let mut spec = sample_spec();
        spec.tenant = TenantId::new(tenant);
        spec
    };
    let create = |job: &str| {
        JobCommand::Create(CreateJob {
            job_id: id(job),
            spec: spec("acme"),
        })
    };
    let submit = || {
        JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        })
    };
    let head = s.feed().head().await.unwrap();
    let done = s
        .execute_all(&id("both"), vec![create("both"), submit()], meta())
        .await
        .expect("create and submit");
    assert_eq!(done.sequence, 3);
    assert_eq!(done.job.state(), Some(JobState::Submitted));
    let names: Vec<_> = done.events.iter().map(JobEvent::name).collect();
    assert_eq!(names, ["JobCreated", "JobSubmitted", "StepQueued"]);
    s.verify_job(&id("both")).await.expect("one chain");
    let history = s.history(&id("both")).await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].position, done.position.unwrap());
    assert!(history.iter().all(|e| e.position > head));

    // Approving a pending job is refused: neither command is written.
    let approve = JobCommand::Approve(ApproveJob {
        epoch: 1,
        step: None,
        approved_by: "r".into(),
    });
    let err = s
        .execute_all(&id("refused"), vec![create("refused"), approve], meta())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Domain(_)), "{err:?}");
    assert!(s.load(&id("refused")).await.unwrap().is_none());

    let err = s
        .execute_all(&id("both"), vec![create("both"), submit()], meta())
        .await
        .unwrap_err();
    assert!(already_exists(&err), "{err:?}");
    let err = s
        .execute(&id("both"), create("both"), meta())
        .await
        .unwrap_err();
    assert!(already_exists(&err), "{err:?}");
    assert_eq!(s.history(&id("both")).await.unwrap().len(), 3);
}

on_every_backend!(
    execute_commits_events_with_positions_metadata_and_chain,
    commands_run_as_one_commit_or_not_at_all,
    refused_commands_write_nothing,
    a_repeated_cancel_writes_nothing,
    a_stale_etag_is_refused_without_writing,
    racing_leases_grant_one,
    conflicts_are_retried_only_when_safe,
    the_feed_reads_in_order_with_filters,
    a_subscription_catches_up_then_follows,
    views_follow_the_feed,
    a_tampered_event_is_found,
    the_cqrs_framework_path_keeps_the_chain,
    concurrent_writers_leave_no_gap,
    opening_again_migrates_nothing,
);

#[test]
fn the_retry_classification_is_the_documented_one() {
    use crate::retry::retry_safe;
    assert!(retry_safe(&lease_cmd("train", "l")));
    assert!(!retry_safe(&JobCommand::Approve(ApproveJob {
        epoch: 1,
        step: None,
        approved_by: "r".into()
    })));
    assert!(!retry_safe(&JobCommand::Submit(SubmitJob {
        dataset: sample_dataset()
    })));
}

#[tokio::test]
async fn a_bad_url_says_which_forms_are_accepted() {
    let err = Store::open(
        "mysql://db/x",
        super::support::services(std::sync::Arc::new(
            loraflow_core::clock::ManualClock::at_epoch(),
        )),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }));
    assert!(err.to_string().contains("postgres://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_sqlite_store_works_end_to_end() {
    let clock = std::sync::Arc::new(loraflow_core::clock::ManualClock::at_epoch());
    let s = Store::open("sqlite::memory:", super::support::services(clock))
        .await
        .unwrap();
    assert_eq!(s.backend_name(), "sqlite");
    create(&s, "mem-1", "acme", 0).await;
    let c = submit(&s, "mem-1").await;
    assert_eq!(s.catch_up_views().await.unwrap(), c.position.unwrap());
    let status = s.views().job_status(&id("mem-1")).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Submitted);
    assert_eq!(s.views().queue().await.unwrap().len(), 1);
    s.verify_job(&id("mem-1")).await.unwrap();
}
