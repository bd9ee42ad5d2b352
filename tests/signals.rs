//! `SaveNow` and `SampleNow`: a client's request reaches the running training
//! on a worker through the answer to its next heartbeat, over real gRPC.

use crate::common;

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

/// A `train` step that runs until it is asked to save. Asked to sample
/// first, it renders one image at step 7 with the request's settings and
/// reports it at once; asked to save, it saves a LoRA at step 9 (also
/// reported at once), then ends its only epoch with another LoRA at step 10.
#[derive(Debug)]
struct SavesOnRequest;

impl SavesOnRequest {
    async fn put(
        ctx: &StepContext,
        name: &str,
        bytes: Vec<u8>,
        kind: ArtifactKind,
    ) -> loraflow::core::artifact::Artifact {
        let path = ctx.workdir().join(name);
        tokio::fs::write(&path, bytes).await.unwrap();
        ctx.artifacts()
            .put(&path, name, kind, Some(1))
            .await
            .unwrap()
    }
}

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
        let mut asked = None;
        let mut sampled = None;
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(request) = ctx.take_sample_request() {
                    let image = Self::put(
                        ctx,
                        "step7-00.png",
                        common::png(32, 32, 7),
                        ArtifactKind::Sample,
                    )
                    .await;
                    let out = EpochOutput {
                        epoch: 1,
                        samples: vec![image],
                        step: Some(7),
                        requested: true,
                        ..Default::default()
                    };
                    ctx.report_output(out.clone());
                    asked = Some(request);
                    sampled = Some(out);
                }
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
        let saved = EpochOutput {
            epoch: 1,
            lora: Some(
                Self::put(
                    ctx,
                    "saved-on-request.safetensors",
                    b"weights saved on request".to_vec(),
                    ArtifactKind::Lora,
                )
                .await,
            ),
            loss: Some(0.3),
            step: Some(9),
            requested: true,
            ..Default::default()
        };
        ctx.report_output(saved.clone());
        let epoch = EpochOutput {
            epoch: 1,
            lora: Some(
                Self::put(
                    ctx,
                    "epoch-1.safetensors",
                    b"weights of epoch 1".to_vec(),
                    ArtifactKind::Lora,
                )
                .await,
            ),
            loss: Some(0.25),
            step: Some(10),
            ..Default::default()
        };
        // Everything again: the job counts each file once.
        let epochs = [Some(epoch), Some(saved), sampled]
            .into_iter()
            .flatten()
            .collect();
        Ok(StepOutput {
            outputs: serde_json::json!({ "sampled_first": asked.is_some(), "asked": asked }),
            epochs,
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

    // A request out of the catalogue's bounds is refused, naming its fields.
    let err = client
        .sample_now(pb::SampleNowRequest {
            job_id: job.job_id.clone(),
            sample: Some(pb::SampleOverrides {
                steps: Some(0),
                sampler: Some("plms".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = tonic_types::StatusExt::get_error_details(&err)
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(
        fields,
        ["sample.sampler", "sample.steps"],
        "{}",
        err.message()
    );

    client
        .sample_now(pb::SampleNowRequest {
            job_id: job.job_id.clone(),
            sample: Some(pb::SampleOverrides {
                prompts: vec!["a red circle".into()],
                steps: Some(3),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // The image appears among the epochs, by step, while training still runs.
    let live = wait_for(&mut client, &job.job_id, "the requested samples", |j| {
        j.epochs
            .iter()
            .any(|e| e.requested && e.step == Some(7) && e.samples.len() == 1)
    })
    .await;
    assert_eq!(live.state(), pb::JobState::Processing);
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
    // Training order: the samples of step 7, the LoRA of step 9, epoch 1.
    let listed: Vec<(u32, Option<u64>, bool)> = review
        .epochs
        .iter()
        .map(|e| (e.epoch, e.step, e.requested))
        .collect();
    assert_eq!(
        listed,
        [(1, Some(7), true), (1, Some(9), true), (1, Some(10), false)]
    );
    let step7 = &review.epochs[0];
    assert_eq!(step7.samples.len(), 1, "reported twice, counted once");
    assert!(step7.lora.is_none());
    let saved = &review.epochs[1];
    assert_eq!(
        saved.lora.as_ref().unwrap().name,
        "saved-on-request.safetensors"
    );
    assert_eq!(saved.samples.len(), 1, "the sample step rendered it too");
    assert_eq!(review.suggested_epoch, Some(1));
    assert!(
        review.suggestion_reason.contains("lowest training loss"),
        "{}",
        review.suggestion_reason
    );
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
        train_done.payload_json.contains("\"sampled_first\":true")
            && train_done.payload_json.contains("\"steps\":3")
            && train_done.payload_json.contains("a red circle"),
        "the request's settings reached the executor: {}",
        train_done.payload_json
    );

    // The LoRA saved on request is approved by its step and published.
    let err = client
        .approve_job(pb::ApproveJobRequest {
            job_id: job.job_id.clone(),
            step: Some(8),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("[9, 10]"), "{}", err.message());
    let approved = client
        .approve_job(pb::ApproveJobRequest {
            job_id: job.job_id.clone(),
            step: Some(9),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.approved_step, Some(9));
    assert_eq!(approved.approved_epoch, Some(1));
    let published = wait_for(&mut client, &job.job_id, "published", |j| {
        j.state() == pb::JobState::Published
    })
    .await;
    assert_eq!(
        published.published_artifact.unwrap().sha256,
        saved.lora.as_ref().unwrap().sha256,
        "the LoRA saved at step 9 was published"
    );

    // Nothing is running any more: the requests are refused, naming the state.
    let err = client
        .save_now(pb::SaveNowRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("Published"), "{}", err.message());

    stop.cancel();
    running.await.unwrap();
    server.stop().await;
}
