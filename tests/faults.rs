//! Faults the scheduler survives, over real loopback gRPC: a worker killed
//! mid-step, a server restarted mid-job, two server replicas sharing one
//! PostgreSQL, and duplicate or late completions. Workers run the `noop`
//! executor, so only the orchestration is under test.

use crate::common;
use crate::on_both_backends;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::noop::{NOOP, Noop, quick_retries, spec_with, three_steps};
use common::server::{Backend, Deployment, ServerSetup, TestServer};
use common::wait_event;
use common::worker::bare_worker;
use futures::StreamExt;
use loraflow::config::SchedulerConfig;
use loraflow::core::executor::{Capabilities, StepOutput};
use loraflow::core::ids::{ExecutorId, JobId, TenantId};
use loraflow::core::job::JobEvent;
use loraflow::core::job::step::ExpiryCause;
use loraflow::core::workflow::StepKind;
use loraflow::executors::worker::{ApiError, GrpcWorkerApi, Worker, WorkerApi};
use loraflow::store::{FeedFilter, StoredEvent};
use tokio_util::sync::CancellationToken;

fn acme() -> TenantId {
    TenantId::new("acme")
}

/// Workers heartbeat every 100 ms; polls answer within a second.
fn scheduler() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_interval: Duration::from_millis(100),
        poll_timeout: Duration::from_secs(1),
        progress_interval: Duration::from_millis(100),
        ..SchedulerConfig::default()
    }
}

fn setup() -> ServerSetup {
    ServerSetup {
        custom_kinds: vec![NOOP.into()],
        scheduler: Some(scheduler()),
        ..Default::default()
    }
}

/// A worker on a machine of its own (a tokio runtime), so that killing the
/// machine stops every task of the worker where it stands: no failure is
/// reported, heartbeats just stop, as when a GPU host loses power.
struct Machine(Option<tokio::runtime::Runtime>);

impl Machine {
    fn boot(worker: impl FnOnce() -> Worker + Send + 'static) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move { worker().run(CancellationToken::new()).await });
        Self(Some(rt))
    }

    fn kill(mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn create(server: &TestServer, heartbeat: Duration, max_attempts: u32) -> JobId {
    let workflow = three_steps(heartbeat, quick_retries(max_attempts));
    common::create_job(&server.engine, spec_with(&server.dataset_uri, workflow)).await
}

async fn history(server: &TestServer, job: &JobId) -> Vec<JobEvent> {
    let h = server.engine.history(&acme(), job).await.unwrap();
    h.into_iter().map(|e| e.payload).collect()
}

/// `(step, attempt)` of every completion, in order.
fn completions(history: &[JobEvent]) -> Vec<(String, u32)> {
    history
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepCompleted(c) => Some((c.step_id.to_string(), c.attempt)),
            _ => None,
        })
        .collect()
}

fn each_step_once(history: &[JobEvent]) {
    let steps: Vec<String> = completions(history).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        steps,
        ["s1", "s2", "s3"],
        "each step completes exactly once"
    );
}

on_both_backends! {
    async fn a_killed_worker_s_step_is_retried_on_another_worker(backend: Backend) {
        let Some(server) = TestServer::start(backend, setup()).await else { return };
        let (addr, root) = (server.addr, server.tmp.path().to_owned());
        let doomed = Machine::boot(move || {
            bare_worker(addr, &root, 1, 1).with(Arc::new(Noop::holding(Duration::from_secs(600))))
        });
        let job = create(&server, Duration::from_millis(700), 3).await;
        wait_event(&server.engine, &acme(), &job, |e| {
            matches!(e, JobEvent::StepLeased(l) if l.executor_id.as_str() == "gpu-1")
        })
        .await;
        doomed.kill();

        let stop = CancellationToken::new();
        let survivor = tokio::spawn(
            bare_worker(server.addr, server.tmp.path(), 2, 1)
                .with(Arc::new(Noop::default()))
                .run(stop.clone()),
        );
        wait_event(&server.engine, &acme(), &job, |e| {
            matches!(e, JobEvent::ReviewRequested(_))
        })
        .await;
        stop.cancel();
        survivor.await.unwrap();

        let h = history(&server, &job).await;
        let expired: Vec<_> = h
            .iter()
            .filter_map(|e| match e {
                JobEvent::LeaseExpired(x) => Some(x),
                _ => None,
            })
            .collect();
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(expired[0].step_id.as_str(), "s1");
        assert_eq!(expired[0].executor_id.as_str(), "gpu-1");
        assert_eq!(expired[0].cause, ExpiryCause::HeartbeatTimeout);
        let retried = h.iter().any(|e| matches!(e, JobEvent::StepLeased(l)
            if l.step_id.as_str() == "s1" && l.attempt == 2 && l.executor_id.as_str() == "gpu-2"));
        assert!(retried, "s1's second attempt went to gpu-2");
        each_step_once(&h);
        assert_eq!(completions(&h)[0], ("s1".to_owned(), 2));
        server.stop().await;
    }

    async fn a_restarted_server_rebuilds_its_queue_and_leases_from_the_store(backend: Backend) {
        let Some(deployment) = Deployment::new(backend).await else { return };
        let first = TestServer::start_in(&deployment, setup()).await;
        let addr = first.addr;
        // One slot: while job A's step runs, job B's first step waits queued.
        let noop = Noop::holding(Duration::from_millis(1500));
        let runs = noop.runs.clone();
        let stop = CancellationToken::new();
        let worker = tokio::spawn(
            bare_worker(addr, deployment.tmp.path(), 1, 1)
                .with(Arc::new(noop))
                .run(stop.clone()),
        );
        let a = create(&first, Duration::from_secs(10), 3).await;
        wait_event(&first.engine, &acme(), &a, |e| matches!(e, JobEvent::StepLeased(_))).await;
        let b = create(&first, Duration::from_secs(10), 3).await;
        let queued = first.engine.get_job(&acme(), &b).await.unwrap();
        assert_eq!(queued.queue_position, Some(0), "job B waits first in line");

        // Down with a lease live and a step queued; up again on the same address.
        let deployment = first.halt().await;
        let second = TestServer::start_in(&deployment, ServerSetup { addr: Some(addr), ..setup() }).await;
        for job in [&a, &b] {
            wait_event(&second.engine, &acme(), job, |e| {
                matches!(e, JobEvent::ReviewRequested(_))
            })
            .await;
        }
        stop.cancel();
        worker.await.unwrap();

        for job in [&a, &b] {
            let h = history(&second, job).await;
            each_step_once(&h);
            assert!(
                !h.iter().any(|e| matches!(e, JobEvent::LeaseExpired(_) | JobEvent::StepFailed(_))),
                "the lease held across the restart was honoured: {h:?}"
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 6, "no step ran twice");
        second.stop().await;
    }

    async fn duplicate_completions_are_idempotent_and_late_ones_rejected(backend: Backend) {
        let Some(server) = TestServer::start(backend, setup()).await else { return };
        let api = GrpcWorkerApi::connect(&format!("http://{}", server.addr), "e-gpu-1").unwrap();
        let me = ExecutorId::new("gpu-1");
        let caps = Capabilities {
            kinds: [StepKind::new(NOOP)].into(),
            max_concurrent_steps: 1,
            ..Capabilities::default()
        };
        api.register(&me, &"faults-test".into(), &caps).await.unwrap();
        let job = create(&server, Duration::from_millis(500), 3).await;
        let first = api.poll(&me, Duration::from_secs(5)).await.unwrap().expect("s1 is leased");
        assert_eq!((first.step_id.as_str(), first.attempt), ("s1", 1));

        // No heartbeats: the lease expires and the step is leased again.
        wait_event(&server.engine, &acme(), &job, |e| matches!(e, JobEvent::LeaseExpired(_))).await;
        let second = loop {
            if let Some(a) = api.poll(&me, Duration::from_secs(5)).await.unwrap() {
                break a;
            }
        };
        assert_eq!((second.step_id.as_str(), second.attempt), ("s1", 2));

        let late = api.complete(&me, &first, StepOutput::default()).await;
        assert!(
            matches!(late, Err(ApiError::LeaseLost { .. })),
            "a completion on the expired lease is refused: {late:?}"
        );
        api.complete(&me, &second, StepOutput::default()).await.unwrap();
        api.complete(&me, &second, StepOutput::default())
            .await
            .expect("a repeated completion of the same lease is accepted");
        let failed_after = api
            .fail(&me, &second, loraflow::core::job::StepError {
                kind: loraflow::core::job::StepErrorKind::Internal,
                message: "too late".into(),
                retryable: true,
            })
            .await;
        assert!(failed_after.is_err(), "a failure after the completion is refused");

        let s2 = api.poll(&me, Duration::from_secs(5)).await.unwrap().expect("s2 follows");
        assert_eq!(s2.step_id.as_str(), "s2");
        let h = history(&server, &job).await;
        assert_eq!(completions(&h), [("s1".to_owned(), 2)], "one completion, of attempt 2");
        assert!(!h.iter().any(|e| matches!(e, JobEvent::StepFailed(_))));
        server.stop().await;
    }

    async fn a_restarted_server_loads_the_jobs_in_flight_as_a_full_replay_would(backend: Backend) {
        let Some(deployment) = Deployment::new(backend).await else { return };
        let server = TestServer::start_in(&deployment, setup()).await;
        let mut jobs = Vec::new();
        for _ in 0..6 {
            jobs.push(create(&server, Duration::from_secs(60), 3).await);
        }
        // Three jobs end; one step is leased; two wait in the queue.
        for j in &jobs[..3] {
            server.engine.cancel(&acme(), j, "not needed", "alice", None).await.unwrap();
        }
        let me = ExecutorId::new("gpu-1");
        let caps = Capabilities {
            kinds: [StepKind::new(NOOP)].into(),
            max_concurrent_steps: 1,
            ..Capabilities::default()
        };
        server.engine.register_executor(me.clone(), caps).unwrap();
        server.engine.poll_step(&me, Duration::from_secs(5)).await.unwrap().expect("a step is leased");
        // Every event readable before the restart: on PostgreSQL another
        // test's open transaction can hold the feed below later commits.
        let store = server.engine.store();
        let mut last = 0;
        for j in &jobs {
            last = last.max(store.raw_history(j).await.unwrap().last().unwrap().position);
        }
        store.wait_for(last).await.unwrap();
        let deployment = server.halt().await;

        let server = TestServer::start_in(&deployment, setup()).await;
        let restarted = server.engine.scheduler_state();
        let mut full = loraflow::core::schedule::SchedulerState::new(
            server.engine.services().catalogue.clone(),
        );
        let events = server.engine.store().feed().read(0, 1_000_000, &FeedFilter::all()).await.unwrap();
        for e in &events {
            full.apply(e.position, &e.job_id, &e.payload);
        }
        assert_eq!(restarted, full, "the start from the open jobs equals a replay from position 0");
        assert_eq!(restarted.position(), events.last().unwrap().position);
        assert_eq!(restarted.open_jobs(), 3);
        assert_eq!(restarted.leases().count(), 1);
        assert_eq!(restarted.queued().count(), 2);
        for j in &jobs[..3] {
            assert!(!restarted.is_open(j), "an ended job is not loaded");
        }
        server.stop().await;
    }
}

/// Whether two leases of one step were ever live at once, and every step
/// leased and completed once: the feed in order, per job and step.
fn check_leases(events: &[StoredEvent]) -> (usize, usize) {
    #[derive(Default)]
    struct Step {
        live: Option<String>,
        leases: usize,
        completions: usize,
    }
    let mut steps: BTreeMap<(String, String), Step> = BTreeMap::new();
    for e in events {
        let key = |s: &loraflow::core::ids::StepId| (e.job_id.to_string(), s.to_string());
        match &e.payload {
            JobEvent::StepLeased(l) => {
                let s = steps.entry(key(&l.step_id)).or_default();
                assert!(
                    s.live.is_none(),
                    "double lease of {:?}: {:?} while {:?} was live",
                    key(&l.step_id),
                    l.lease_id,
                    s.live
                );
                s.live = Some(l.lease_id.to_string());
                s.leases += 1;
            }
            JobEvent::StepCompleted(c) => {
                let s = steps.entry(key(&c.step_id)).or_default();
                assert_eq!(s.live.take(), Some(c.lease_id.to_string()));
                s.completions += 1;
            }
            JobEvent::StepFailed(f) => {
                steps.entry(key(&f.step_id)).or_default().live = None;
            }
            JobEvent::LeaseExpired(x) => {
                steps.entry(key(&x.step_id)).or_default().live = None;
            }
            _ => {}
        }
    }
    for (k, s) in &steps {
        assert_eq!(
            s.completions, 1,
            "step {k:?} completed {} times",
            s.completions
        );
    }
    let leases = steps.values().map(|s| s.leases).sum();
    (steps.len(), leases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_lease_every_step_once() {
    const JOBS: usize = 340; // 1,020 steps
    let Some(deployment) = Deployment::new(Backend::Postgres).await else {
        return;
    };
    let replicas = [
        TestServer::start_in(&deployment, setup()).await,
        TestServer::start_in(&deployment, setup()).await,
    ];
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    let mut noops = Vec::new();
    for n in 1..=4u32 {
        let replica = &replicas[(n % 2) as usize];
        let noop = Noop::default();
        noops.push((n, noop.runs.clone()));
        workers.push(tokio::spawn(
            bare_worker(replica.addr, deployment.tmp.path(), n, 4)
                .with(Arc::new(noop))
                .run(stop.clone()),
        ));
    }
    let store = replicas[0].engine.store().clone();
    let head = store.feed().head().await.unwrap();
    let reviews = tokio::spawn(async move {
        let feed = store.feed().subscribe(head, FeedFilter::all());
        let mut feed = std::pin::pin!(feed);
        let mut open = 0;
        while open < JOBS {
            let e = feed.next().await.expect("the feed follows").unwrap();
            if matches!(e.payload, JobEvent::ReviewRequested(_)) {
                open += 1;
            }
        }
    });
    for i in 0..JOBS {
        create(&replicas[i % 2], Duration::from_secs(30), 3).await;
    }
    tokio::time::timeout(Duration::from_secs(300), reviews)
        .await
        .expect("every job reaches review")
        .unwrap();
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }

    let events = replicas[0]
        .engine
        .store()
        .feed()
        .read(0, 1_000_000, &FeedFilter::all())
        .await
        .unwrap();
    let (steps, leases) = check_leases(&events);
    assert_eq!(steps, JOBS * 3, "no step lost");
    assert_eq!(leases, JOBS * 3, "every step leased exactly once");
    let executors: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            JobEvent::StepLeased(l) => Some(l.executor_id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        executors.len(),
        4,
        "workers of both replicas got steps: {executors:?}"
    );
    let runs: u32 = noops.iter().map(|(_, r)| r.load(Ordering::SeqCst)).sum();
    assert_eq!(runs as usize, JOBS * 3, "no step ran twice");
    // Each attempt's work directory went with it: nothing of 1,020 steps
    // is left in the workers' directories.
    for n in 1..=4u32 {
        let dir = deployment.tmp.path().join(format!("worker-{n}"));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
    let [a, b] = replicas;
    let deployment = a.halt().await;
    b.halt().await;
    deployment.remove().await;
}
