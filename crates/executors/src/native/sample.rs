//! [`NativeSampler`]: the `sample` executor. For every epoch that has a LoRA, it renders the
//! job's sample prompts with the base model plus that LoRA (seeded, so epochs are comparable)
//! and stores the PNGs, prompt and seed in their text chunks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use loraflow_core::artifact::{ArtifactKind, EpochOutput};
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_core::workflow::StepKind;
use loraflow_trainer::device::parse_device;
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::sample::png::write_png;
use loraflow_trainer::sample::{Pipeline, SampleSettings, png_text};
use tracing::Instrument;

use super::error::{Error, Result};
use super::options::NativeOptions;
use super::sample_xl::XlRun;
use super::train::job_seed;
use loraflow_trainer::sdxl::is_sdxl_dir;

/// Renders samples of each epoch's LoRA with loraflow's own pipeline.
#[derive(Debug, Clone)]
pub struct NativeSampler {
    options: NativeOptions,
}

/// One image to render.
pub(super) struct Job {
    pub(super) epoch: u32,
    pub(super) lora: PathBuf,
    pub(super) lora_name: String,
    pub(super) index: usize,
    pub(super) settings: SampleSettings,
    pub(super) out: PathBuf,
}

impl NativeSampler {
    /// A sampler with `options`, checked.
    pub fn new(options: NativeOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self { options })
    }

    pub fn options(&self) -> &NativeOptions {
        &self.options
    }

    /// One attempt, with typed errors.
    pub async fn sample(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput> {
        let o = &self.options;
        if step.sample_prompts.is_empty() {
            return Ok(StepOutput {
                outputs: serde_json::json!({"rendered": 0, "reason": "the job has no sample prompts"}),
                ..StepOutput::default()
            });
        }
        let loras: Vec<_> = step
            .epochs
            .iter()
            .filter_map(|e| e.lora.as_ref().map(|l| (e.epoch, l.clone())))
            .collect();
        if loras.is_empty() {
            return Err(Error::param(
                "epochs",
                "no epoch has a LoRA to sample (did the train step save any?)",
            ));
        }
        let (model, config_dir) = o.step_model(step, ctx).await?;
        let work = ctx.workdir().to_path_buf();
        let out_dir = work.join("samples");
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
        let mut jobs = Vec::new();
        let seed = job_seed(step).unwrap_or(o.sample.seed);
        for (epoch, artifact) in &loras {
            ctx.report(StepProgress {
                message: Some(format!("fetching the LoRA of epoch {epoch}")),
                ..StepProgress::default()
            });
            let local = work.join("loras").join(&artifact.name);
            ctx.artifacts().fetch(artifact, &local).await?;
            let lora_name = artifact
                .name
                .strip_suffix(".safetensors")
                .unwrap_or(&artifact.name)
                .to_string();
            for (index, prompt) in step.sample_prompts.iter().enumerate() {
                jobs.push(Job {
                    epoch: *epoch,
                    lora: local.clone(),
                    lora_name: lora_name.clone(),
                    index,
                    settings: SampleSettings {
                        prompt: prompt.clone(),
                        negative_prompt: o.sample.negative_prompt.clone(),
                        width: 0,
                        height: 0,
                        steps: o.sample.steps,
                        guidance_scale: o.sample.guidance_scale,
                        seed: seed + index as u64,
                        sampler: o.sample.sampler,
                        clip_skip: 1,
                    },
                    out: out_dir.join(format!("epoch{epoch:03}-{index:02}.png")),
                });
            }
        }

        let total = jobs.len();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, usize, PathBuf)>();
        let device = o.device.clone();
        let (strength, size) = (o.sample.lora_strength, o.sample.size);
        let base_name = step.base_model.to_string();
        let mut handle = tokio::task::spawn_blocking(move || -> Result<()> {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
                if is_sdxl_dir(config_dir.as_deref().unwrap_or(&model)) {
                    let run = XlRun {
                        model: &model,
                        config_dir: config_dir.as_deref(),
                        strength,
                        size,
                        base_name: &base_name,
                        device: &device,
                        stop: &stop,
                        tx: &tx,
                    };
                    return run.render(jobs);
                }
                let device = parse_device(&device)?;
                let base = StableDiffusion::load(&model, config_dir.as_deref(), &device)?;
                let size = size.unwrap_or_else(|| base.config.default_image_size());
                let mut current: Option<(PathBuf, StableDiffusion)> = None;
                for mut job in jobs {
                    if stop.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    if current.as_ref().is_none_or(|(p, _)| *p != job.lora) {
                        let (adapted, _) = base.with_lora(&job.lora, strength, &device)?;
                        current = Some((job.lora.clone(), adapted));
                    }
                    let model = &current.as_ref().expect("loaded above").1;
                    job.settings.width = size;
                    job.settings.height = size;
                    let image = Pipeline::new(model).render(&job.settings, &device)?;
                    let text =
                        png_text(&job.settings, &base_name, Some((&job.lora_name, strength)));
                    write_png(&job.out, &image, &text)?;
                    let _ = tx.send((job.epoch, job.index, job.out));
                }
                Ok(())
            }));
            run.unwrap_or_else(|panic| Err(Error::from_panic(panic)))
        });

        let mut rendered: Vec<(u32, usize, PathBuf)> = Vec::new();
        let report = |rendered: &[(u32, usize, PathBuf)]| {
            ctx.report(StepProgress {
                percent: rendered.len() as f32 * 100.0 / total as f32,
                step: Some(rendered.len() as u64),
                total_steps: Some(total as u64),
                epoch: rendered.last().map(|r| r.0),
                message: Some(format!("rendered {}/{total} samples", rendered.len())),
                ..StepProgress::default()
            });
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        let result = loop {
            tokio::select! {
                Some(done) = rx.recv() => {
                    rendered.push(done);
                    report(&rendered);
                }
                _ = tick.tick() => {
                    if ctx.is_cancelled() {
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                joined = &mut handle => {
                    break joined.map_err(|e| Error::Panicked { message: e.to_string() })?;
                }
            }
        };
        // The renderer may finish before its last images were counted above;
        // those are reported here, so the step ends at 100%.
        let counted = rendered.len();
        while let Ok(done) = rx.try_recv() {
            rendered.push(done);
        }
        if rendered.len() > counted {
            report(&rendered);
        }
        result?;

        let mut epochs: Vec<EpochOutput> = Vec::new();
        for (epoch, _, path) in &rendered {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let artifact = ctx
                .artifacts()
                .put(path, &name, ArtifactKind::Sample, Some(*epoch))
                .await?;
            match epochs.iter_mut().find(|e| e.epoch == *epoch) {
                Some(e) => e.samples.push(artifact),
                None => epochs.push(EpochOutput {
                    epoch: *epoch,
                    lora: None,
                    samples: vec![artifact],
                    loss: None,
                    ..Default::default()
                }),
            }
        }
        Ok(StepOutput {
            outputs: serde_json::json!({
                "rendered": rendered.len(),
                "epochs": epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
                "steps": o.sample.steps,
                "sampler": o.sample.sampler.display_name(),
                "guidance_scale": o.sample.guidance_scale,
                "seed": seed,
            }),
            artifacts: Vec::new(),
            epochs,
        })
    }
}

#[async_trait]
impl Executor for NativeSampler {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::SAMPLE.into()]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.sample(step, ctx)
            .instrument(ctx.span().clone())
            .await
            .map_err(StepError::from)
    }
}
