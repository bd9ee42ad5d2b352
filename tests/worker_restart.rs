//! Workers come back at once, over real loopback gRPC. A worker names its
//! process when it registers; a registration from a new process of the same
//! executor ends the old process's leases at once (`LeaseExpired`, cause
//! `ExecutorRestarted`) and their steps are leased again without backoff,
//! while a reconnect of the same process keeps its leases. The last test
//! `kill -9`s a real `loraflow worker` in the middle of a training step.

use crate::common;
use crate::on_both_backends;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::noop::{NOOP, spec_with, three_steps};
use common::server::{Backend, ServerSetup, TestServer};
use common::worker::bare_worker;
use common::{FileSampler, wait_event};
use loraflow::config::SchedulerConfig;
use loraflow::core::catalogue::ParamValue;
use loraflow::core::executor::{Capabilities, StepOutput};
use loraflow::core::ids::{ExecutorId, InstanceId, JobId, TenantId};
use loraflow::core::job::JobEvent;
use loraflow::core::job::step::ExpiryCause;
use loraflow::core::workflow::{RetryPolicy, StepKind};
use loraflow::executors::worker::{ApiError, GrpcWorkerApi, WorkerApi};
use loraflow::executors::{Label, Publish, ValidateDataset, ValidateOptions};
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

async fn history(server: &TestServer, job: &JobId) -> Vec<JobEvent> {
    let h = server.engine.history(&acme(), job).await.unwrap();
    h.into_iter().map(|e| e.payload).collect()
}

fn names(history: &[JobEvent]) -> Vec<&'static str> {
    history.iter().map(JobEvent::name).collect()
}

on_both_backends! {
    async fn a_new_process_ends_the_old_lease_and_a_reconnect_keeps_it(backend: Backend) {
        let setup = ServerSetup {
            custom_kinds: vec![NOOP.into()],
            scheduler: Some(scheduler()),
            ..Default::default()
        };
        let Some(server) = TestServer::start(backend, setup).await else { return };
        // Heartbeat timeouts of ten minutes and retry backoffs of an hour:
        // anything that happens within this test is neither.
        let hour = Duration::from_secs(3600);
        let retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: hour,
            backoff_multiplier: 1.0,
            max_backoff: hour,
            jitter: 0.0,
        };
        let workflow = three_steps(Duration::from_secs(600), retry);
        let job = common::create_job(&server.engine, spec_with(&server.dataset_uri, workflow)).await;

        let api = GrpcWorkerApi::connect(&format!("http://{}", server.addr), "e-gpu-1").unwrap();
        let me = ExecutorId::new("gpu-1");
        let caps = Capabilities {
            kinds: [StepKind::new(NOOP)].into(),
            max_concurrent_steps: 1,
            ..Capabilities::default()
        };
        let (a, b) = (InstanceId::new("process-a"), InstanceId::new("process-b"));
        api.register(&me, &a, &caps).await.unwrap();
        let first = api.poll(&me, Duration::from_secs(5)).await.unwrap().expect("s1 is leased");
        assert_eq!((first.step_id.as_str(), first.attempt), ("s1", 1));

        // The same process registers again (a lost connection, a restarted
        // server): its lease lives on.
        api.register(&me, &a, &caps).await.unwrap();
        let reply = api.heartbeat(&me, &first, None).await.unwrap();
        assert!(!reply.cancel, "a reconnect keeps the process's lease");
        let h = history(&server, &job).await;
        assert!(
            !h.iter().any(|e| matches!(e, JobEvent::LeaseExpired(_))),
            "nothing expired on a reconnect: {:?}",
            names(&h)
        );

        // A new process: the old lease ends before the registration is
        // answered, named as a restart, and the step is queued again at once.
        api.register(&me, &b, &caps).await.unwrap();
        let h = history(&server, &job).await;
        let expired = h
            .iter()
            .find_map(|e| match e {
                JobEvent::LeaseExpired(x) => Some(x.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("the old lease ended: {:?}", names(&h)));
        assert_eq!(expired.lease_id, first.lease_id);
        assert_eq!(expired.cause, ExpiryCause::ExecutorRestarted);
        assert_eq!(expired.restarted_as, Some(b.clone()));
        let retried = h
            .iter()
            .find_map(|e| match e {
                JobEvent::StepRetried(r) => Some(r.clone()),
                _ => None,
            })
            .expect("the step is retried");
        assert_eq!((retried.next_attempt, retried.backoff_ms), (2, 0));
        let requeued = h
            .iter()
            .rev()
            .find_map(|e| match e {
                JobEvent::StepQueued(q) if q.step_id.as_str() == "s1" => Some(q.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!((requeued.attempt, requeued.not_before), (2, requeued.queued_at));

        // The dead lease no longer fills the executor's only slot: the new
        // process gets the step at once (an hour's backoff says it was not
        // a backoff that ran out).
        let second = api.poll(&me, Duration::from_secs(5)).await.unwrap().expect("s1 is leased again");
        assert_eq!((second.step_id.as_str(), second.attempt), ("s1", 2));
        let h = history(&server, &job).await;
        let leased: Vec<_> = h
            .iter()
            .filter_map(|e| match e {
                JobEvent::StepLeased(l) => Some((l.attempt, l.instance.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(leased, [(1, Some(a.clone())), (2, Some(b.clone()))]);

        // The old process learns that its lease is gone; the new one finishes.
        let old = api.heartbeat(&me, &first, None).await;
        assert!(
            matches!(old, Err(ApiError::LeaseLost { .. }) | Ok(loraflow::executors::worker::HeartbeatReply { cancel: true, .. })),
            "the old lease is refused: {old:?}"
        );
        api.complete(&me, &second, StepOutput::default()).await.unwrap();
        let h = history(&server, &job).await;
        let completed: Vec<u32> = h
            .iter()
            .filter_map(|e| match e {
                JobEvent::StepCompleted(c) => Some(c.attempt),
                _ => None,
            })
            .collect();
        assert_eq!(completed, [2], "s1 completed once, by the new process");
        server.stop().await;
    }

    async fn a_killed_training_worker_restarted_with_its_id_gets_its_step_back_at_once(backend: Backend) {
        let setup = ServerSetup {
            scheduler: Some(scheduler()),
            ..Default::default()
        };
        let Some(server) = TestServer::start(backend, setup).await else { return };
        let root = server.tmp.path().to_owned();
        // Everything but training runs on gpu-2, a worker in this process.
        let helper = bare_worker(server.addr, &root, 2, 1)
            .with(Arc::new(ValidateDataset {
                options: ValidateOptions {
                    min_side: 32,
                    ..Default::default()
                },
            }))
            .with(Arc::new(Label::default()))
            .with(Arc::new(FileSampler))
            .with(Arc::new(Publish {
                destination: format!("file://{}", root.join("published").display()),
            }));
        let stop = CancellationToken::new();
        let helper = tokio::spawn(helper.run(stop.clone()));

        // gpu-1, a real `loraflow worker` process, trains on the native engine.
        let mut gpu1 = WorkerProcess::start(&server, &root, "first");
        // Two epochs of 30 optimiser steps each: long enough to be killed
        // in the middle of, short enough to finish on the retry.
        let mut spec = common::spec(&server.dataset_uri);
        spec.params.insert("num_repeats".into(), ParamValue::Int(10));
        let job = common::create_job(&server.engine, spec).await;
        let is_train = |e: &JobEvent, attempt: u32| match e {
            JobEvent::StepLeased(l) => l.step_id.as_str() == "train" && l.attempt == attempt,
            _ => false,
        };
        let JobEvent::StepLeased(first) =
            wait_event(&server.engine, &acme(), &job, |e| is_train(e, 1)).await
        else {
            unreachable!()
        };
        assert_eq!(first.executor_id.as_str(), "gpu-1");
        // Its heartbeat shows that it is training; then it dies without a word.
        wait_event(&server.engine, &acme(), &job, |e| {
            matches!(e, JobEvent::StepProgressed(p)
                if p.lease_id == first.lease_id && p.progress.step.is_some_and(|s| s >= 1))
        })
        .await;
        gpu1.kill();
        let h = history(&server, &job).await;
        assert!(
            !h.iter().any(|e| matches!(e, JobEvent::StepCompleted(c) if c.step_id.as_str() == "train")),
            "the worker was killed in the middle of training: {:?}",
            names(&h)
        );

        let mut gpu1 = WorkerProcess::start(&server, &root, "second");
        let JobEvent::StepLeased(second) =
            wait_event(&server.engine, &acme(), &job, |e| is_train(e, 2)).await
        else {
            unreachable!()
        };
        wait_event(&server.engine, &acme(), &job, |e| {
            matches!(e, JobEvent::ReviewRequested(_))
        })
        .await;
        gpu1.kill();
        stop.cancel();
        helper.await.unwrap();

        let h = history(&server, &job).await;
        let expired: Vec<_> = h
            .iter()
            .filter_map(|e| match e {
                JobEvent::LeaseExpired(x) => Some(x.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(expired.len(), 1, "one lease ended: {:?}", names(&h));
        let expired = &expired[0];
        assert_eq!(expired.lease_id, first.lease_id);
        assert_eq!(expired.cause, ExpiryCause::ExecutorRestarted);
        assert_eq!(expired.restarted_as, second.instance);
        // The same executor, another process; taken again long before the
        // dead lease's heartbeat deadline could have passed.
        assert_eq!(second.executor_id.as_str(), "gpu-1");
        assert!(first.instance.is_some() && second.instance.is_some());
        assert_ne!(first.instance, second.instance);
        assert!(
            second.leased_at < first.deadline,
            "leased again at {} before the old deadline {}",
            second.leased_at,
            first.deadline
        );
        let retry = h
            .iter()
            .find_map(|e| match e {
                JobEvent::StepRetried(r) if r.step_id.as_str() == "train" => Some(r.clone()),
                _ => None,
            })
            .expect("training is retried");
        assert_eq!((retry.next_attempt, retry.backoff_ms), (2, 0));
        let trained: Vec<u32> = h
            .iter()
            .filter_map(|e| match e {
                JobEvent::StepCompleted(c) if c.step_id.as_str() == "train" => Some(c.attempt),
                _ => None,
            })
            .collect();
        assert_eq!(trained, [2], "training completed once, on its second attempt");
        server.stop().await;
    }
}

/// A `loraflow worker` process for executor `gpu-1` that runs `train` on
/// the native engine; its log goes to a file beside the test's data.
struct WorkerProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl WorkerProcess {
    fn start(server: &TestServer, root: &Path, name: &str) -> Self {
        let log = root.join(format!("worker-{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_loraflow"))
            .args([
                "worker", "--id", "gpu-1", "--kinds", "train", "--token", "e-gpu-1",
            ])
            .arg("--server")
            .arg(format!("http://{}", server.addr))
            .arg("--artifacts")
            .arg(root.join("artifacts"))
            .arg("--workdir")
            .arg(root.join(format!("work-{name}")))
            .env("RUST_LOG", "info")
            .env_remove("LORAFLOW_TOKEN")
            .env_remove("LORAFLOW_SERVER")
            .env_remove("LORAFLOW_ARTIFACTS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// `kill -9`: no step is reported, heartbeats just stop.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}
