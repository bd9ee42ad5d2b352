//! Embedding loraflow in a service: an in-process engine on a SQLite file,
//! the built-in executors with the native trainer on the CPU, and a custom
//! executor of our own, `caption_check`, inserted into the standard workflow
//! between labelling and training.
//!
//! ```text
//! cargo run --example embed [-- <folder>]
//! ```
//!
//! It trains a LoRA for the demo model on the demo dataset (both in
//! `assets/`), approves the epoch with the lowest loss, and prints where the
//! published LoRA is.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use async_trait::async_trait;
use futures::StreamExt;
use loraflow::core::artifact::ArtifactKind;
use loraflow::core::catalogue::{Engine as EngineKind, ParamValue};
use loraflow::core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow::core::ids::{JobId, TenantId};
use loraflow::core::job::{
    DatasetRef, JobEvent, JobSpec, JobState, Naming, StepError, StepErrorKind, StepProgress,
};
use loraflow::core::views::JobStatus;
use loraflow::core::workflow::{StepKind, StepSpec, standard_lora};
use loraflow::executors::native::NativeOptions;
use loraflow::executors::{Label, Labels, NativeSampler, NativeTrainer, Publish, ValidateDataset};
use loraflow::{Engine, NewJob};

/// A custom step: every caption must have at least `min_words` words (the
/// workflow's step params), so a dataset of one-word captions is refused
/// before any GPU time is spent on it.
#[derive(Debug)]
pub struct CaptionCheck;

impl CaptionCheck {
    pub const KIND: &'static str = "caption_check";

    fn invalid(message: String) -> StepError {
        StepError {
            kind: StepErrorKind::InvalidInput,
            message,
            retryable: false,
        }
    }
}

#[async_trait]
impl Executor for CaptionCheck {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::new(Self::KIND)]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let min_words = step.step_params["min_words"].as_u64().unwrap_or(3) as usize;
        let labels = step
            .input(ArtifactKind::Labels)
            .ok_or_else(|| Self::invalid("no labels to check: run `label` first".into()))?;
        let local = ctx.workdir().join("labels.json");
        ctx.artifacts()
            .fetch(labels, &local)
            .await
            .map_err(|e| StepError {
                kind: StepErrorKind::Unavailable,
                message: e.to_string(),
                retryable: true,
            })?;
        let labels: Labels = std::fs::read(&local)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Self::invalid(format!("{} is not a labels file", labels.uri)))?;
        let short: Vec<String> = labels
            .images
            .iter()
            .filter(|(_, l)| l.caption.split_whitespace().count() < min_words)
            .map(|(image, l)| format!("{image} ({:?})", l.caption))
            .collect();
        ctx.report(StepProgress {
            percent: 100.0,
            message: Some(format!("{} captions checked", labels.images.len())),
            ..Default::default()
        });
        if !short.is_empty() {
            return Err(Self::invalid(format!(
                "captions with fewer than {min_words} words: {}",
                short.join(", ")
            )));
        }
        Ok(StepOutput {
            outputs: serde_json::json!({ "checked": labels.images.len(), "min_words": min_words }),
            ..StepOutput::default()
        })
    }
}

/// What one run of the example did.
#[derive(Debug)]
pub struct Outcome {
    pub job: JobStatus,
    /// Every event type of the job, in order.
    pub events: Vec<String>,
}

/// The checkout's `assets/` folder (the demo model and dataset).
pub fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// Train, review and publish one LoRA in `dir`, with captions required to
/// have `min_words` words.
pub async fn run(dir: &Path, min_words: u64) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let native = NativeOptions::new(assets()).with_device("cpu");
    let engine = Engine::builder()
        .store(format!("sqlite://{}", dir.join("loraflow.db").display()))
        .artifacts(dir.join("artifacts").display().to_string())
        .workdir(dir.join("work"))
        .executor(ValidateDataset::default())
        .executor(Label::default())
        .executor(CaptionCheck)
        .executor(NativeTrainer::new(native.clone())?)
        .executor(NativeSampler::new(native)?)
        .executor(Publish {
            destination: format!("file://{}/published", dir.display()),
        })
        .build()
        .await?;
    let result = train(&engine, min_words).await;
    engine.shutdown().await;
    result
}

async fn train(engine: &Engine, min_words: u64) -> anyhow::Result<Outcome> {
    let tenant = TenantId::new("studio");
    let (dataset, _) = engine
        .artifacts()
        .upload_dir(&assets().join("demo-dataset"), "datasets/studio/shapes")
        .await?;

    // The standard workflow with our step between `label` and `train`.
    let model = engine
        .catalogue()
        .base_model(&"tiny-sd".into())
        .context("the built-in catalogue has tiny-sd")?;
    let mut workflow = standard_lora(model, EngineKind::Native);
    let mut check = StepSpec::new("check", CaptionCheck::KIND).after(&["label"]);
    check.params = serde_json::json!({ "min_words": min_words });
    for step in &mut workflow.steps {
        if step.id.as_str() == "train" {
            step.depends_on = vec!["check".into()];
        }
    }
    workflow.steps.insert(2, check);

    let spec = JobSpec {
        tenant: tenant.clone(),
        base_model: "tiny-sd".into(),
        engine: EngineKind::Native,
        profile: Some("quick_test".into()),
        params: [("epochs".to_owned(), ParamValue::Int(2))].into(),
        dataset: DatasetRef {
            uri: dataset,
            sha256: None,
        },
        sample_prompts: vec!["a green circle, white background, flat shapes".into()],
        priority: 0,
        naming: Naming {
            subject: "shapes".into(),
            version: "v1".into(),
        },
        labels: Default::default(),
        workflow: Some(workflow),
        webhooks: Vec::new(),
    };
    let job = engine
        .create_job(
            &tenant,
            NewJob {
                spec,
                request_id: Some("shapes-v1".into()),
            },
        )
        .await?
        .status
        .job_id;
    let events = follow(engine, &tenant, &job).await?;
    let job = engine.get_job(&tenant, &job).await?.status;
    Ok(Outcome { job, events })
}

/// Watch the job's events; approve the lowest-loss epoch at review.
async fn follow(engine: &Engine, tenant: &TenantId, job: &JobId) -> anyhow::Result<Vec<String>> {
    let mut types = Vec::new();
    let mut feed = std::pin::pin!(engine.watch(tenant, job, 0).await?);
    while let Some(event) = feed.next().await {
        let event = event?;
        types.push(event.event_type.clone());
        match &event.payload {
            JobEvent::ReviewRequested(review) => {
                let best = review
                    .epochs
                    .iter()
                    .filter(|e| e.lora.is_some())
                    .min_by(|a, b| {
                        let loss = |e: &&loraflow::core::artifact::EpochOutput| {
                            e.loss.unwrap_or(f64::INFINITY)
                        };
                        loss(a).total_cmp(&loss(b))
                    })
                    .context("no epoch to approve")?;
                engine
                    .approve(tenant, job, best.epoch, "embed example", None)
                    .await?;
            }
            JobEvent::JobPublished(_)
            | JobEvent::JobFailed(_)
            | JobEvent::JobCancelled(_)
            | JobEvent::JobRejected(_) => {
                engine.store().wait_for(event.position).await?;
                return Ok(types);
            }
            _ => {}
        }
    }
    bail!("the engine stopped before the job ended")
}

#[allow(dead_code)] // The tests call `run`; `main` is for `cargo run --example`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("loraflow-embed"), PathBuf::from);
    let outcome = run(&dir, 3).await?;
    let job = &outcome.job;
    println!("job {} is {}", job.job_id, job.state);
    if job.state != JobState::Published {
        bail!("{:?}", job.failure);
    }
    if let Some(p) = &job.published {
        println!("published LoRA: {} (sha256 {})", p.uri, p.sha256);
    }
    Ok(())
}
