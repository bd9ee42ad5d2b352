//! `PollSteps` over real loopback gRPC: an executor with free slots leases
//! several steps in one round trip, never past its limit, only steps it can
//! run, fairly between tenants; the single-step `PollStep` still works; a
//! completion or failure leases the slot's next step in its answer; and
//! two replicas on one PostgreSQL, polled in batches at once, never lease a
//! step twice.

use crate::common;
use crate::on_both_backends;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::noop::{NOOP, quick_retries, spec_with, three_steps};
use common::server::{Backend, Deployment, ExecutorClient, ServerSetup, TestServer};
use loraflow::config::SchedulerConfig;
use loraflow::core::executor::{Capabilities, StepAssignment, StepOutput};
use loraflow::core::ids::{ExecutorId, JobId, TenantId};
use loraflow::core::job::JobEvent;
use loraflow::core::workflow::StepKind;
use loraflow::store::FeedFilter;
use loraflow_proto::pb::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

fn setup() -> ServerSetup {
    ServerSetup {
        custom_kinds: vec![NOOP.into()],
        scheduler: Some(SchedulerConfig {
            poll_timeout: Duration::from_secs(5),
            ..SchedulerConfig::default()
        }),
        ..Default::default()
    }
}

async fn create(s: &TestServer, tenant: &str) -> JobId {
    let uri = if tenant == "acme" {
        s.dataset_uri.clone()
    } else {
        let (uri, _) = s
            .engine
            .artifacts()
            .upload_dir(
                &s.tmp.path().join("upload"),
                &format!("datasets/{tenant}/corgi"),
            )
            .await
            .unwrap();
        uri
    };
    let mut spec = spec_with(&uri, three_steps(Duration::from_secs(60), quick_retries(3)));
    spec.tenant = TenantId::new(tenant);
    let new = loraflow::engine::NewJob {
        spec,
        request_id: None,
    };
    s.engine
        .create_job(&TenantId::new(tenant), new)
        .await
        .unwrap()
        .status
        .job_id
}

async fn register(s: &TestServer, n: u32, kind: &str, slots: u32) -> ExecutorClient {
    let mut ex = s.executor_client(Some(format!("e-gpu-{n}").as_str())).await;
    let caps = Capabilities {
        kinds: [StepKind::new(kind)].into(),
        max_concurrent_steps: slots,
        ..Capabilities::default()
    };
    ex.register_executor(pb::RegisterExecutorRequest {
        executor_id: format!("gpu-{n}"),
        capabilities: Some(caps.into()),
        instance_id: format!("instance-{n}"),
    })
    .await
    .unwrap();
    ex
}

fn poll(n: u32, max_steps: u32, wait_ms: u64) -> pb::PollStepsRequest {
    pb::PollStepsRequest {
        executor_id: format!("gpu-{n}"),
        wait: Some(Duration::from_millis(wait_ms).try_into().unwrap()),
        max_steps,
    }
}

async fn poll_steps(ex: &mut ExecutorClient, req: pb::PollStepsRequest) -> Vec<StepAssignment> {
    ex.poll_steps(req)
        .await
        .unwrap()
        .into_inner()
        .assignments
        .into_iter()
        .map(|a| StepAssignment::try_from(a).unwrap())
        .collect()
}

fn jobs_of(steps: &[StepAssignment]) -> BTreeSet<JobId> {
    steps.iter().map(|a| a.job_id.clone()).collect()
}

/// Every `StepLeased` in the feed, by (job, step): the lease ids; read
/// once `n` leases or more are readable (on PostgreSQL a commit becomes
/// readable when every older transaction has ended).
async fn leases_in_feed(s: &TestServer, n: usize) -> BTreeMap<(String, String), Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = s
            .engine
            .store()
            .feed()
            .read(0, 1_000_000, &FeedFilter::all())
            .await
            .unwrap();
        let mut leases: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for e in events {
            if let JobEvent::StepLeased(l) = e.payload {
                leases
                    .entry((e.job_id.to_string(), l.step_id.to_string()))
                    .or_default()
                    .push(l.lease_id.to_string());
            }
        }
        if leases.values().map(Vec::len).sum::<usize>() >= n {
            return leases;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} leases readable: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_backends! {
    async fn a_batch_poll_leases_its_free_slots_fairly_and_only_what_it_can_run(backend: Backend) {
        let Some(s) = TestServer::start(backend, setup()).await else { return };
        let acme: Vec<JobId> = [create(&s, "acme").await, create(&s, "acme").await, create(&s, "acme").await].into();
        let globex: Vec<JobId> = [create(&s, "globex").await, create(&s, "globex").await].into();
        let mut gpu1 = register(&s, 1, NOOP, 3).await;

        // The limit on the batch, named with what was given.
        for bad in [0, 65] {
            let err = gpu1.poll_steps(poll(1, bad, 0)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "max_steps {bad}");
            let violations = err.get_error_details().bad_request().unwrap().field_violations.clone();
            assert_eq!(violations.len(), 1);
            assert_eq!(violations[0].field, "max_steps");
            assert!(violations[0].description.contains(&bad.to_string()), "{violations:?}");
            assert!(violations[0].description.contains("64"), "{violations:?}");
        }

        // An executor of another kind is offered none of these steps.
        let mut gpu3 = register(&s, 3, StepKind::VALIDATE_DATASET, 4).await;
        assert!(poll_steps(&mut gpu3, poll(3, 4, 300)).await.is_empty());

        // Ten asked, three slots: three leases in one answer, each tenant
        // served in turn (acme's oldest, then globex's, then acme's next).
        let first = poll_steps(&mut gpu1, poll(1, 10, 5000)).await;
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.iter().all(|a| a.step_id.as_str() == "s1" && a.attempt == 1));
        assert_eq!(jobs_of(&first), [acme[0].clone(), acme[1].clone(), globex[0].clone()].into());
        // Full: nothing more, whatever the batch asks.
        assert!(poll_steps(&mut gpu1, poll(1, 10, 0)).await.is_empty());

        // Another executor takes what is left.
        let mut gpu2 = register(&s, 2, NOOP, 4).await;
        let rest = poll_steps(&mut gpu2, poll(2, 4, 5000)).await;
        assert_eq!(jobs_of(&rest), [acme[2].clone(), globex[1].clone()].into());

        // The single-step call is still served: after a completion, the
        // next step of that job goes to the old PollStep.
        let done = &first[0];
        gpu1.complete_step(pb::CompleteStepRequest::new(&ExecutorId::new("gpu-1"), done, StepOutput::default()))
            .await
            .unwrap();
        let next = gpu1
            .poll_step(pb::PollStepRequest { executor_id: "gpu-1".into(), wait: Some(Duration::from_secs(5).try_into().unwrap()) })
            .await
            .unwrap()
            .into_inner()
            .assignment
            .expect("s2 is leased to the single poll");
        assert_eq!((next.job_id.as_str(), next.step_id.as_str()), (done.job_id.as_str(), "s2"));

        // The feed: one lease per step, each the one handed out.
        let handed: BTreeSet<String> = first.iter().chain(&rest).map(|a| a.lease_id.to_string()).chain([next.lease_id]).collect();
        let leases = leases_in_feed(&s, 6).await;
        assert_eq!(leases.len(), 6);
        assert!(leases.values().all(|l| l.len() == 1), "{leases:?}");
        let written: BTreeSet<String> = leases.into_values().flatten().collect();
        assert_eq!(written, handed);
        s.stop().await;
    }
}

/// The one assignment an outcome's answer carries.
fn one_leased(assignments: Vec<pb::StepAssignment>) -> StepAssignment {
    assert_eq!(assignments.len(), 1, "{assignments:?}");
    StepAssignment::try_from(assignments.into_iter().next().unwrap()).unwrap()
}

fn step_of(a: &StepAssignment) -> (JobId, String) {
    (a.job_id.clone(), a.step_id.to_string())
}

on_both_backends! {
    async fn an_outcome_leases_the_slot_s_next_step_in_the_same_call(backend: Backend) {
        let Some(s) = TestServer::start(backend, setup()).await else { return };
        let jobs: Vec<JobId> = [create(&s, "acme").await, create(&s, "acme").await, create(&s, "acme").await].into();
        let mut gpu1 = register(&s, 1, NOOP, 1).await;
        let me = ExecutorId::new("gpu-1");
        let a = poll_steps(&mut gpu1, poll(1, 4, 5000)).await;
        assert_eq!(a.iter().map(step_of).collect::<Vec<_>>(), [(jobs[0].clone(), "s1".into())]);

        // One slot, held by the step being completed: five asked, one
        // leased, the oldest queued (job 1's s1, queued before job 0's s2).
        let b = one_leased(
            gpu1.complete_step(pb::CompleteStepRequest { lease_next: 5, ..pb::CompleteStepRequest::new(&me, &a[0], StepOutput::default()) })
                .await
                .unwrap()
                .into_inner()
                .assignments,
        );
        assert_eq!((step_of(&b), b.attempt), ((jobs[1].clone(), "s1".into()), 1));

        // A failure leases the same way; the step is retried later.
        let failure = loraflow::core::job::StepError {
            kind: loraflow::core::job::StepErrorKind::Unavailable,
            message: "the dataset server did not answer".into(),
            retryable: true,
        };
        let c = one_leased(
            gpu1.fail_step(pb::FailStepRequest { lease_next: 1, ..pb::FailStepRequest::new(&me, &b, failure) })
                .await
                .unwrap()
                .into_inner()
                .assignments,
        );
        assert_eq!(step_of(&c), (jobs[2].clone(), "s1".into()));

        // Over the limit: refused, naming the field, and nothing recorded.
        let err = gpu1
            .complete_step(pb::CompleteStepRequest { lease_next: 65, ..pb::CompleteStepRequest::new(&me, &c, StepOutput::default()) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let violations = err.get_error_details().bad_request().unwrap().field_violations.clone();
        assert_eq!(violations.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(), ["lease_next"]);
        assert!(violations[0].description.contains("65") && violations[0].description.contains("64"), "{violations:?}");
        let history = s.engine.store().history(&jobs[2]).await.unwrap();
        assert!(!history.iter().any(|e| matches!(e.payload, JobEvent::StepCompleted(_))), "{history:?}");

        // Without lease_next the answer carries nothing; with it, the next.
        let none = gpu1
            .complete_step(pb::CompleteStepRequest::new(&me, &c, StepOutput::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(none.assignments.is_empty());
        let d = poll_steps(&mut gpu1, poll(1, 1, 5000)).await;
        assert_eq!(d.iter().map(step_of).collect::<Vec<_>>(), [(jobs[0].clone(), "s2".into())]);

        // The feed: every lease written is one handed out, each step once.
        let handed: BTreeSet<String> = a.iter().chain([&b, &c]).chain(&d).map(|x| x.lease_id.to_string()).collect();
        let leases = leases_in_feed(&s, 4).await;
        assert!(leases.values().all(|l| l.len() == 1), "{leases:?}");
        assert_eq!(leases.into_values().flatten().collect::<BTreeSet<_>>(), handed);
        s.stop().await;
    }
}

on_both_backends! {
    async fn outcomes_reported_at_once_each_lease_their_slot_s_next_step(backend: Backend) {
        let Some(s) = TestServer::start(backend, setup()).await else { return };
        for _ in 0..4 {
            create(&s, "acme").await;
        }
        let gpu1 = register(&s, 1, NOOP, 2).await;
        let me = ExecutorId::new("gpu-1");
        let a = poll_steps(&mut gpu1.clone(), poll(1, 2, 5000)).await;
        assert_eq!(a.len(), 2, "{a:?}");
        // Both slots' outcomes at once, each asking for its slot's next
        // step: while one is being written, its lease is still held, and
        // the other must count that slot as ending, not as busy.
        let complete = |done: &StepAssignment| {
            let mut client = gpu1.clone();
            let request = pb::CompleteStepRequest {
                lease_next: 1,
                ..pb::CompleteStepRequest::new(&me, done, StepOutput::default())
            };
            async move { client.complete_step(request).await.unwrap().into_inner().assignments }
        };
        let (x, y) = tokio::join!(complete(&a[0]), complete(&a[1]));
        let (x, y) = (one_leased(x), one_leased(y));
        assert_ne!(step_of(&x), step_of(&y));
        // Never past the executor's two slots: nothing more now.
        let more = poll_steps(&mut gpu1.clone(), poll(1, 2, 200)).await;
        assert!(more.is_empty(), "{more:?}");
        let handed: BTreeSet<String> = a.iter().chain([&x, &y]).map(|l| l.lease_id.to_string()).collect();
        let leases = leases_in_feed(&s, 4).await;
        assert!(leases.values().all(|l| l.len() == 1), "{leases:?}");
        assert_eq!(leases.into_values().flatten().collect::<BTreeSet<_>>(), handed);
        // Each next lease was written with an outcome, not by a poll after
        // it: on PostgreSQL a position's high bits are its transaction.
        if matches!(backend, Backend::Postgres) {
            let events = s.engine.store().feed().read(0, 1_000_000, &FeedFilter::all()).await.unwrap();
            let position = |lease: &str, completed: bool| {
                events
                    .iter()
                    .find(|e| match &e.payload {
                        JobEvent::StepCompleted(c) => completed && c.lease_id.as_str() == lease,
                        JobEvent::StepLeased(l) => !completed && l.lease_id.as_str() == lease,
                        _ => false,
                    })
                    .unwrap_or_else(|| panic!("{lease} in the feed"))
                    .position
            };
            let outcomes: BTreeSet<u64> = a.iter().map(|l| position(l.lease_id.as_str(), true) >> 20).collect();
            for next in [&x, &y] {
                let tx = position(next.lease_id.as_str(), false) >> 20;
                assert!(outcomes.contains(&tx), "lease {} written apart from the outcomes", next.lease_id);
            }
        }
        s.stop().await;
    }
}

on_both_backends! {
    async fn an_outcome_leases_the_step_it_queues_in_its_commit_when_nothing_else_waits(backend: Backend) {
        let Some(s) = TestServer::start(backend, setup()).await else { return };
        let job = create(&s, "acme").await;
        let mut gpu1 = register(&s, 1, NOOP, 1).await;
        let me = ExecutorId::new("gpu-1");
        let a = poll_steps(&mut gpu1, poll(1, 1, 5000)).await;
        assert_eq!(a.iter().map(step_of).collect::<Vec<_>>(), [(job.clone(), "s1".into())]);
        // Nothing else is queued: the completion queues s2, and the answer
        // carries it, leased in the completion's own commit.
        let b = one_leased(
            gpu1.complete_step(pb::CompleteStepRequest { lease_next: 1, ..pb::CompleteStepRequest::new(&me, &a[0], StepOutput::default()) })
                .await
                .unwrap()
                .into_inner()
                .assignments,
        );
        assert_eq!(step_of(&b), (job.clone(), "s2".into()));
        let history = s.engine.store().history(&job).await.unwrap();
        let completed = history
            .iter()
            .position(|e| matches!(&e.payload, JobEvent::StepCompleted(c) if c.lease_id == a[0].lease_id))
            .expect("s1 completed");
        let leased = history
            .iter()
            .position(|e| matches!(&e.payload, JobEvent::StepLeased(l) if l.lease_id == b.lease_id))
            .expect("s2 leased");
        assert!(completed < leased);
        if matches!(backend, Backend::Postgres) {
            assert_eq!(
                history[completed].position >> 20,
                history[leased].position >> 20,
                "one transaction: {history:?}"
            );
        }
        // It runs on: s2's completion leases s3 the same way, and the job
        // reaches review with each step leased once.
        let c = one_leased(
            gpu1.complete_step(pb::CompleteStepRequest { lease_next: 1, ..pb::CompleteStepRequest::new(&me, &b, StepOutput::default()) })
                .await
                .unwrap()
                .into_inner()
                .assignments,
        );
        assert_eq!(step_of(&c), (job.clone(), "s3".into()));
        let none = gpu1
            .complete_step(pb::CompleteStepRequest { lease_next: 1, ..pb::CompleteStepRequest::new(&me, &c, StepOutput::default()) })
            .await
            .unwrap()
            .into_inner();
        assert!(none.assignments.is_empty(), "{none:?}");
        let leases = leases_in_feed(&s, 3).await;
        assert!(leases.values().all(|l| l.len() == 1), "{leases:?}");
        s.stop().await;
    }
}

/// Two replicas on one PostgreSQL schema; four executors, two on each,
/// poll in batches of up to 16 at once until 60 queued steps are all leased:
/// each step is leased once, and every lease written is one handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_polled_in_batches_never_lease_a_step_twice() {
    const JOBS: usize = 60;
    let Some(deployment) = Deployment::new(Backend::Postgres).await else {
        return;
    };
    let replicas = Arc::new([
        TestServer::start_in(&deployment, setup()).await,
        TestServer::start_in(&deployment, setup()).await,
    ]);
    for i in 0..JOBS {
        create(&replicas[i % 2], "acme").await;
    }
    let leased = Arc::new(AtomicUsize::new(0));
    let mut pollers = Vec::new();
    for n in 1..=4u32 {
        let (replicas, leased) = (replicas.clone(), leased.clone());
        pollers.push(tokio::spawn(async move {
            let s = &replicas[(n % 2) as usize];
            let mut ex = register(s, n, NOOP, 16).await;
            let mut mine = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while leased.load(Ordering::SeqCst) < JOBS {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the steps were not all leased in time"
                );
                let got = poll_steps(&mut ex, poll(n, 16, 200)).await;
                leased.fetch_add(got.len(), Ordering::SeqCst);
                mine.extend(got.into_iter().map(|a| a.lease_id.to_string()));
            }
            mine
        }));
    }
    let mut handed = Vec::new();
    let mut served = 0;
    for p in pollers {
        let mine = p.await.unwrap();
        served += usize::from(!mine.is_empty());
        handed.extend(mine);
    }
    assert_eq!(handed.len(), JOBS, "as many leases handed out as steps");
    let handed: BTreeSet<String> = handed.into_iter().collect();
    assert_eq!(handed.len(), JOBS);
    // 60 steps, 16 slots each: every executor, of both replicas, got some.
    assert_eq!(served, 4, "every executor was served");
    let leases = leases_in_feed(&replicas[0], JOBS).await;
    assert_eq!(leases.len(), JOBS, "every step leased");
    assert!(
        leases.values().all(|l| l.len() == 1),
        "no step leased twice: {leases:?}"
    );
    let written: BTreeSet<String> = leases.into_values().flatten().collect();
    assert_eq!(written, handed, "every lease written was handed out, once");
    let Ok([a, b]) = Arc::try_unwrap(replicas) else {
        panic!("pollers ended")
    };
    let deployment = a.halt().await;
    b.halt().await;
    deployment.remove().await;
}
