//! `approve` (an epoch, or the LoRA saved at a step) and `sample-now` (with
//! the job's sample settings, or others for this request).

use clap::Args;
use loraflow_proto::pb::v1 as pb;

use super::Connection;
use super::client::{connect, status_error};
use super::output::emit_job;

#[derive(Debug, Args)]
pub struct ApproveArgs {
    pub job: String,
    /// The epoch to publish.
    #[arg(long, required_unless_present = "step", conflicts_with = "step")]
    pub epoch: Option<u32>,
    /// Publish the LoRA saved at this optimisation step instead (a
    /// `save-now` LoRA; `status` lists each with its step).
    #[arg(long)]
    pub step: Option<u64>,
    /// Act only if the job is still at this etag.
    #[arg(long)]
    pub etag: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

pub async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let job = client
        .approve_job(pb::ApproveJobRequest {
            job_id: args.job.clone(),
            epoch: args.epoch.unwrap_or_default(),
            etag: args.etag.clone().unwrap_or_default(),
            step: args.step,
        })
        .await
        .map_err(|s| status_error("the approval was refused", s))?
        .into_inner();
    emit_job(&job, args.conn.json)
}

/// What one `sample-now` request changes of the job's sample settings; each
/// is checked against the catalogue's bounds for the job's model and engine.
#[derive(Debug, Args)]
pub struct SampleNowArgs {
    /// The job id.
    pub job: String,
    /// A prompt (repeat for several); the job's prompts when none.
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// `ddim`, `euler`, ... (`loraflow params` lists the engine's).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Inference steps.
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale.
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// Seed of the first prompt.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub lora_strength: Option<f64>,
    #[command(flatten)]
    pub conn: Connection,
}

impl SampleNowArgs {
    fn overrides(&self) -> Option<pb::SampleOverrides> {
        let o = pb::SampleOverrides {
            prompts: self.prompts.clone(),
            negative_prompt: self.negative_prompt.clone(),
            sampler: self.sampler.clone(),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            width: self.width,
            height: self.height,
            seed: self.seed,
            lora_strength: self.lora_strength,
        };
        (o != pb::SampleOverrides::default()).then_some(o)
    }
}

/// `sample-now`: the running training renders samples at its next step;
/// they are listed with the job's epochs (by step) as soon as they exist.
pub async fn sample_now(args: SampleNowArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.conn).await?;
    let job = client
        .sample_now(pb::SampleNowRequest {
            job_id: args.job.clone(),
            sample: args.overrides(),
        })
        .await
        .map_err(|s| status_error("the sampling request was refused", s))?
        .into_inner();
    if !args.conn.json {
        eprintln!(
            "asked the running training to render samples; they appear among the epochs, by step"
        );
    }
    emit_job(&job, args.conn.json)
}
