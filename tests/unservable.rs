//! No job waits for something that does not exist. A queued step that no
//! connected executor could run says what is missing (`waiting_for` in
//! `GetJob`), and clears once a matching executor connects and leases it;
//! the standard template's schedule-to-start timeout fails such a job with
//! that reason (on tokio's paused clock); and a (model, engine) pair this
//! build has no executor for is refused at create, writing nothing.

use crate::common;
use crate::on_both_backends;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::server::{Backend, ServerSetup, TestServer};
use common::{FileSampler, FileTrainer};
use loraflow::core::catalogue::Engine as EngineKind;
use loraflow::core::executor::{Capabilities, Executor, StepAssignment, StepContext, StepOutput};
use loraflow::core::ids::{ExecutorId, JobId, TenantId};
use loraflow::core::job::{FailureReason, JobEvent, JobSpec, StepError};
use loraflow::core::workflow::StepKind;
use loraflow::executors::worker::{GrpcWorkerApi, Worker, WorkerOptions};
use loraflow::executors::{ArtifactStore, Label, ValidateDataset, ValidateOptions};
use loraflow_proto::pb::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

/// What the train step of an sd15 job on kohya waits for while only the
/// in-process executors (no GPU, native training) are connected.
const KOHYA_ON_GPU: &str =
    "waiting for an executor with engine=kohya, gpu and min_vram_gb=8; none connected";

/// The file trainer, declaring the kohya engine: a GPU worker's stand-in.
struct KohyaStandIn(FileTrainer);

#[async_trait]
impl Executor for KohyaStandIn {
    fn kinds(&self) -> Vec<StepKind> {
        self.0.kinds()
    }

    fn engines(&self) -> Vec<EngineKind> {
        vec![EngineKind::Kohya]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.0.run(step, ctx).await
    }
}

/// A job on `model` with `engine`, on the test dataset.
fn spec_on(dataset_uri: &str, model: &str, engine: EngineKind) -> JobSpec {
    JobSpec {
        base_model: model.into(),
        engine,
        ..common::spec(dataset_uri)
    }
}

fn create(spec: JobSpec) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        job: Some(spec.into()),
        request_id: String::new(),
        validate_only: false,
    }
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

async fn step_of(c: &mut common::server::Client, job: &str, step: &str) -> pb::Step {
    let j = c
        .get_job(pb::GetJobRequest {
            job_id: job.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    j.steps.into_iter().find(|s| s.id == step).unwrap()
}

/// `loraflow status <args>` against the test server, as tenant acme; its stdout.
async fn status_cli(s: &TestServer, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_loraflow"));
    cmd.arg("status")
        .args(args)
        .env("LORAFLOW_SERVER", format!("http://{}", s.addr))
        .env("LORAFLOW_TOKEN", "t-acme");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Worker `gpu-1` with a 24 GB GPU, running kohya training and sampling.
fn gpu_kohya_worker(s: &TestServer) -> Worker {
    let root = s.tmp.path();
    let api = GrpcWorkerApi::connect(&format!("http://{}", s.addr), "e-gpu-1").unwrap();
    let artifacts = ArtifactStore::open(&root.join("artifacts").display().to_string()).unwrap();
    Worker::new(
        Arc::new(api),
        artifacts,
        WorkerOptions {
            executor_id: ExecutorId::new("gpu-1"),
            capabilities: Capabilities {
                gpu: true,
                vram_gb: 24,
                max_concurrent_steps: 1,
                ..Capabilities::default()
            },
            workdir: root.join("worker-1"),
            max_backoff: Duration::from_millis(100),
        },
    )
    .with(Arc::new(KohyaStandIn(FileTrainer::default())))
    .with(Arc::new(FileSampler))
}

on_both_backends! {
    async fn a_step_says_what_no_connected_executor_has_until_one_connects_and_leases_it(backend: Backend) {
        let setup = ServerSetup { executors: true, ..ServerSetup::default() };
        let Some(s) = TestServer::start(backend, setup).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let tenant = TenantId::new("acme");
        let job = c
            .create_job(create(spec_on(&s.dataset_uri, "sd15", EngineKind::Kohya)))
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let id = JobId::new(job.clone());
        common::wait_event(&s.engine, &tenant, &id, |e| {
            matches!(e, JobEvent::StepQueued(q) if q.step_id.as_str() == "train")
        })
        .await;
        // Only the in-process executors are connected: they train natively,
        // without a GPU.
        let train = step_of(&mut c, &job, "train").await;
        assert_eq!(train.status, pb::StepStatus::Queued as i32);
        assert_eq!(train.waiting_for, KOHYA_ON_GPU);
        // Steps that are not queued wait for nothing.
        assert_eq!(step_of(&mut c, &job, "validate").await.waiting_for, "");
        // `loraflow status` prints it under the step, and in its JSON.
        let text = status_cli(&s, &[&job]).await;
        assert!(text.contains(KOHYA_ON_GPU), "{text}");
        let json: serde_json::Value = serde_json::from_str(&status_cli(&s, &[&job, "--json"]).await).unwrap();
        let train_json = json["steps"].as_array().unwrap().iter().find(|s| s["id"] == "train").unwrap();
        assert_eq!(train_json["waiting_for"], KOHYA_ON_GPU);

        // A GPU worker with kohya connects: it is leased the step.
        let stop = tokio_util::sync::CancellationToken::new();
        let worker = tokio::spawn(gpu_kohya_worker(&s).run(stop.clone()));
        let leased = common::wait_event(&s.engine, &tenant, &id, |e| {
            matches!(e, JobEvent::StepLeased(l) if l.step_id.as_str() == "train")
        })
        .await;
        let JobEvent::StepLeased(leased) = leased else { unreachable!() };
        assert_eq!(leased.executor_id.as_str(), "gpu-1");
        assert_eq!(step_of(&mut c, &job, "train").await.waiting_for, "");
        // The job goes on to review with that worker's sampling.
        common::wait_event(&s.engine, &tenant, &id, |e| matches!(e, JobEvent::ReviewRequested(_))).await;
        let j = c
            .get_job(pb::GetJobRequest { job_id: job.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(j.steps.iter().all(|s| s.waiting_for.is_empty()), "{:?}", j.steps);
        stop.cancel();
        let _ = worker.await;
        s.stop().await;
    }

    async fn a_pair_this_build_has_no_executor_for_is_refused_at_create_and_writes_nothing(backend: Backend) {
        let Some(s) = TestServer::start(backend, ServerSetup::default()).await else { return };
        let mut c = s.client(Some("t-acme")).await;
        let head = s.engine.store().feed().head().await.unwrap();
        // Every engine the catalogue names has an executor in this build
        // (the narrowing itself is unit-tested in the catalogue), so the
        // pairs refused here are those no model lists.
        for (model, engine) in [("tiny-sd", EngineKind::Kohya), ("sd15", EngineKind::AiToolkit)] {
            let err = c
                .create_job(create(spec_on(&s.dataset_uri, model, engine)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            let v = violations(&err);
            assert_eq!(v.len(), 1, "{v:?}");
            assert!(v[0].0.ends_with("engine"), "{v:?}");
            assert!(v[0].1.contains(engine.as_str()), "{v:?}");
        }
        // Nothing was written: no event, no job.
        assert_eq!(s.engine.store().feed().head().await.unwrap(), head);
        let jobs = c.list_jobs(pb::ListJobsRequest::default()).await.unwrap().into_inner();
        assert!(jobs.jobs.is_empty(), "{:?}", jobs.jobs);
        // The catalogue offers what this build runs: SDXL and FLUX.1 on
        // native, kohya and ai-toolkit.
        let models = c
            .list_base_models(pb::ListBaseModelsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .base_models;
        for (id, engines) in [
            ("sdxl", &["native", "kohya", "ai-toolkit"][..]),
            ("flux-dev", &["native", "kohya", "ai-toolkit"][..]),
        ] {
            let m = models.iter().find(|m| m.id == id).unwrap();
            assert_eq!(m.engines, engines, "{m:?}");
        }
        s.stop().await;
    }
}

/// The first event `pick` accepts, waiting on the paused clock.
async fn first<T>(
    engine: &loraflow::Engine,
    job: &JobId,
    pick: impl Fn(&JobEvent) -> Option<T>,
) -> T {
    let tenant = TenantId::new("acme");
    for _ in 0..7200 {
        let h = engine.history(&tenant, job).await.unwrap();
        if let Some(t) = h.iter().map(|e| &e.payload).find_map(&pick) {
            return t;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("no such event after two hours")
}

#[tokio::test(start_paused = true)]
async fn the_standard_templates_schedule_to_start_timeout_fails_the_job_naming_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    // Ten minutes, set on the builder as a deployment would in loraflow.toml.
    let engine = loraflow::Engine::builder()
        .store("memory:")
        .artifacts(tmp.path().join("artifacts").display().to_string())
        .workdir(tmp.path().join("work"))
        .schedule_to_start(Duration::from_secs(600))
        .executor(ValidateDataset {
            options: ValidateOptions {
                min_side: 32,
                ..Default::default()
            },
        })
        .executor(Label::default())
        .executor(FileTrainer::default())
        .build()
        .await
        .unwrap();
    common::dataset(&tmp.path().join("upload"), 3);
    let (uri, _) = engine
        .artifacts()
        .upload_dir(&tmp.path().join("upload"), "datasets/acme/corgi")
        .await
        .unwrap();
    let job = common::create_job(&engine, spec_on(&uri, "sd15", EngineKind::Kohya)).await;
    let tenant = TenantId::new("acme");
    let queued_at = first(&engine, &job, |e| match e {
        JobEvent::StepQueued(q) if q.step_id.as_str() == "train" => Some(q.queued_at),
        _ => None,
    })
    .await;
    let view = engine.get_job(&tenant, &job).await.unwrap();
    assert_eq!(
        view.waiting_for
            .get(&"train".into())
            .map(ToString::to_string)
            .as_deref(),
        Some(KOHYA_ON_GPU)
    );
    let failed = first(&engine, &job, |e| match e {
        JobEvent::JobFailed(f) => Some(f.clone()),
        _ => None,
    })
    .await;
    assert_eq!(failed.reason, FailureReason::ScheduleTimeout);
    assert_eq!(failed.step_id.as_ref().map(|s| s.as_str()), Some("train"));
    assert!(failed.message.contains(KOHYA_ON_GPU), "{}", failed.message);
    let waited = (failed.failed_at - queued_at).as_seconds_f64();
    assert!(
        (600.0..602.0).contains(&waited),
        "failed {waited} s after queueing"
    );
    engine.shutdown().await;
}
