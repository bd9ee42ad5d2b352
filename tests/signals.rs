//! `SaveNow` and `SampleNow`: a client's request reaches the running training
//! on a worker through the answer to its next heartbeat, over real gRPC.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::server::{Backend, ServerSetup, TestServer};
use common::worker::remote_worker;
use common::{FileSampler, spec};
use loraflow::config::SchedulerConfig;
use loraflow::core::artifact::{ArtifactKind, EpochOutput};
use loraflow::core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow::core::job::{StepError, StepErrorKind, StepProgress};
use loraflow::core::workflow::StepKind;
use loraflow_proto::pb::v1 as pb;
use tokio_util::sync::CancellationToken;

/// A `train` step that runs until it is asked to save, then saves one LoRA
/// and reports whether it was asked to sample first.
#[derive(Debug)]
struct SavesOnRequest;

#[async_trait]
impl Executor for SavesOnRequest {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::TRAIN.into()]
    }

    fn engines(&self) -> Vec<loraflow::core::catalogue::Engine> {
        vec![loraflow::core::catalogue::Engine::Native]
    }

    async fn run(&self, _: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        ctx.report(StepProgress {
            percent: 10.0,
            message: Some("waiting to be asked".into()),
            ..Default::default()
        });
        let mut sampled = false;
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                sampled |= ctx.take_sample_now();
                if ctx.take_save_now() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if waited.is_err() {
            return Err(StepError {
                kind: StepErrorKind::Internal,
                message: "never asked to save".into(),
                retryable: false,
            });
        }
        let path = ctx.workdir().join("saved-on-request.safetensors");
        tokio::fs::write(&path, b"weights saved on request")
            .await
            .unwrap();
        let lora = ctx
            .artifacts()
            .put(
                &path,
                "saved-on-request.safetensors",
                ArtifactKind::Lora,
                Some(1),
            )
            .await
            .unwrap();
        Ok(StepOutput {
            outputs: serde_json::json!({ "sampled_first": sampled }),
            epochs: vec![EpochOutput {
                epoch: 1,
                lora: Some(lora),
                samples: vec![],
                loss: Some(0.25),
                ..Default::default()
            }],
            ..Default::default()
        })
    }
}

async fn wait_for(
    client: &mut common::server::Client,
    job_id: &str,
    what: &str,
    done: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    for _ in 0..1500 {
        let job = client
            .get_job(pb::GetJobRequest {
                job_id: job_id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if done(&job) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the job never got {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_now_and_sample_now_reach_the_running_training() {
    let server = TestServer::start(
        Backend::Sqlite,
        ServerSetup {
            scheduler: Some(SchedulerConfig {
                heartbeat_interval: Duration::from_millis(50),
                ..SchedulerConfig::default()
            }),
            ..ServerSetup::default()
        },
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let worker = remote_worker(&server)
        .with(Arc::new(SavesOnRequest))
        .with(Arc::new(FileSampler));
    let running = tokio::spawn(worker.run(stop.clone()));
    let mut client = server.client(Some("t-acme")).await;

    // An unknown job is not found; a job not yet training cannot be asked.
    let err = client
        .save_now(pb::SaveNowRequest {
            job_id: "no-such-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let job = client
        .create_job(pb::CreateJobRequest {
            job: Some(spec(&server.dataset_uri).into()),
            request_id: String::new(),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    let training = wait_for(&mut client, &job.job_id, "to training", |j| {
        j.steps
            .iter()
            .any(|s| s.id == "train" && s.status() == pb::StepStatus::Leased)
    })
    .await;
    assert_eq!(training.state(), pb::JobState::Processing);

    client
        .sample_now(pb::SampleNowRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap();
    // Give the sampling request its own heartbeat before the save.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .save_now(pb::SaveNowRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap();

    let review = wait_for(&mut client, &job.job_id, "to review", |j| {
        j.state() == pb::JobState::InReview
    })
    .await;
    let lora = review.epochs[0].lora.as_ref().unwrap();
    assert_eq!(lora.name, "saved-on-request.safetensors");
    let history = client
        .get_job_history(pb::GetJobHistoryRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let train_done = history
        .iter()
        .find(|e| e.event_type == "StepCompleted" && e.payload_json.contains("\"train\""))
        .expect("train completed");
    assert!(
        train_done.payload_json.contains("\"sampled_first\":true"),
        "{}",
        train_done.payload_json
    );

    // Nothing is running any more: the requests are refused, naming the state.
    let err = client
        .save_now(pb::SaveNowRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("InReview"), "{}", err.message());

    stop.cancel();
    running.await.unwrap();
    server.stop().await;
}
