//! Shared pieces of the end-to-end tests: datasets of real images, small
//! executors for the GPU steps (so the orchestration is tested without a
//! training run), and helpers to wait for a job's events.

#![allow(dead_code)]

pub mod http;
pub mod native;
pub mod noop;
pub mod process;
pub mod server;
pub mod worker;

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use image::{ImageFormat, Rgb, RgbImage};
use loraflow::Engine;
use loraflow::core::artifact::{ArtifactKind, EpochOutput};
use loraflow::core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow::core::ids::{JobId, TenantId};
use loraflow::core::job::{
    DatasetRef, JobEvent, JobSpec, Naming, StepError, StepErrorKind, StepProgress,
};
use loraflow::core::workflow::StepKind;

pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x as u8).wrapping_add(seed), y as u8, seed])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A folder of `n` small images with captions.
pub fn dataset(dir: &Path, n: u8) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("img{i}.png")), png(64, 64, i * 17)).unwrap();
        std::fs::write(dir.join(format!("img{i}.txt")), format!("corgi, pose {i}")).unwrap();
    }
}

pub fn spec(dataset_uri: &str) -> JobSpec {
    JobSpec {
        tenant: TenantId::new("ignored"),
        base_model: "tiny-sd".into(),
        engine: loraflow::core::catalogue::Engine::Native,
        profile: None,
        params: Default::default(),
        dataset: DatasetRef {
            uri: dataset_uri.to_owned(),
            sha256: None,
        },
        sample_prompts: vec!["a corgi".into()],
        priority: 0,
        naming: Naming {
            subject: "corgi".into(),
            version: "v1".into(),
        },
        labels: Default::default(),
        workflow: None,
        webhooks: Vec::new(),
    }
}

/// A `train` executor that writes one small file per epoch (no model).
#[derive(Debug, Default, Clone)]
pub struct FileTrainer {
    /// Fail the first attempt with this error, then succeed.
    pub fail_first: Option<StepErrorKind>,
    /// Take this long per epoch (so tests can observe a running step).
    pub epoch_time: Duration,
}

#[async_trait]
impl Executor for FileTrainer {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::TRAIN.into()]
    }

    fn engines(&self) -> Vec<loraflow::core::catalogue::Engine> {
        vec![loraflow::core::catalogue::Engine::Native]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        if let (Some(kind), 1) = (self.fail_first, step.attempt) {
            return Err(StepError {
                kind,
                message: "first attempt fails".into(),
                retryable: true,
            });
        }
        let epochs = step.params["epochs"].as_i64().unwrap_or(2) as u32;
        let mut out = Vec::new();
        for e in 1..=epochs {
            tokio::select! {
                _ = ctx.cancelled() => return Err(StepError { kind: StepErrorKind::Cancelled, message: "cancelled".into(), retryable: true }),
                _ = tokio::time::sleep(self.epoch_time) => {}
            }
            let path = ctx.workdir().join(format!("e{e}.safetensors"));
            tokio::fs::write(&path, format!("lora {} epoch {e}", step.job_id))
                .await
                .unwrap();
            let lora = ctx
                .artifacts()
                .put(
                    &path,
                    &format!("{}-e{e}.safetensors", step.naming.subject),
                    ArtifactKind::Lora,
                    Some(e),
                )
                .await
                .unwrap();
            ctx.report(StepProgress {
                percent: e as f32 * 100.0 / epochs as f32,
                epoch: Some(e),
                step: Some(e as u64 * 10),
                total_steps: Some(epochs as u64 * 10),
                loss: Some(0.5 / e as f64),
                ..Default::default()
            });
            out.push(EpochOutput {
                epoch: e,
                lora: Some(lora),
                samples: vec![],
                loss: Some(0.5 / e as f64),
                ..Default::default()
            });
        }
        Ok(StepOutput {
            epochs: out,
            ..Default::default()
        })
    }
}

/// A `sample` executor that writes one small PNG per epoch (no model).
#[derive(Debug, Default, Clone)]
pub struct FileSampler;

#[async_trait]
impl Executor for FileSampler {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::SAMPLE.into()]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let mut epochs = Vec::new();
        for e in step.epochs.iter().filter(|e| e.lora.is_some()) {
            // A LoRA saved on request is sampled beside the epoch's, under its step.
            let at = e.step.filter(|_| e.requested);
            let name = match at {
                Some(step) => format!("step{step}-0.png"),
                None => format!("e{}-0.png", e.epoch),
            };
            let path = ctx.workdir().join(&name);
            tokio::fs::write(&path, png(32, 32, e.epoch as u8))
                .await
                .unwrap();
            let sample = ctx
                .artifacts()
                .put(&path, &name, ArtifactKind::Sample, Some(e.epoch))
                .await
                .unwrap();
            epochs.push(EpochOutput {
                epoch: e.epoch,
                lora: None,
                samples: vec![sample],
                loss: None,
                step: at,
                requested: at.is_some(),
                ..Default::default()
            });
        }
        Ok(StepOutput {
            epochs,
            ..Default::default()
        })
    }
}

/// Create and submit a job of tenant `acme`; its id.
pub async fn create_job(engine: &Engine, spec: JobSpec) -> JobId {
    let new = loraflow::engine::NewJob {
        spec,
        request_id: None,
    };
    let view = engine.create_job(&TenantId::new("acme"), new).await;
    view.expect("create a job").status.job_id
}

/// Follows the job's feed until it ends (published, failed or cancelled, and the views show
/// it), approving the last epoch with a LoRA when review is requested; panics after 10 minutes.
pub async fn approve_last_epoch_until_ended(
    engine: &Engine,
    tenant: &TenantId,
    job: &JobId,
    note: &str,
) {
    let mut feed = std::pin::pin!(engine.watch(tenant, job, 0).await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(event) = feed.next().await {
            let event = event.unwrap();
            match &event.payload {
                JobEvent::ReviewRequested(review) => {
                    let last = review.epochs.iter().filter_map(|e| e.lora.as_ref()).count();
                    engine
                        .approve(tenant, job, last as u32, note, None)
                        .await
                        .unwrap();
                }
                JobEvent::JobPublished(_) | JobEvent::JobFailed(_) | JobEvent::JobCancelled(_) => {
                    engine.store().wait_for(event.position).await.unwrap();
                    return;
                }
                _ => {}
            }
        }
        panic!("the engine stopped before the job ended");
    })
    .await;
    assert!(ended.is_ok(), "the job did not end within 10 minutes");
}

/// Wait until the job writes an event matching `pred`, and the views include
/// it; returns it.
pub async fn wait_event(
    engine: &Engine,
    tenant: &TenantId,
    job: &JobId,
    pred: impl Fn(&JobEvent) -> bool,
) -> JobEvent {
    let stream = engine.watch(tenant, job, 0).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            if pred(&e.payload) {
                engine.store().wait_for(e.position).await.unwrap();
                return e.payload;
            }
        }
        panic!("the feed ended")
    })
    .await;
    match found {
        Ok(e) => e,
        Err(_) => {
            let h = engine.history(tenant, job).await.unwrap();
            panic!(
                "timed out; history: {:?}",
                h.iter()
                    .map(|e| format!(
                        "{}:{}",
                        e.payload.name(),
                        e.payload
                            .step_id()
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
            )
        }
    }
}
