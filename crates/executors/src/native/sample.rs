//! [`NativeSampler`]: the `sample` executor. For every epoch that has a LoRA, it renders the
//! job's sample prompts with the base model plus that LoRA (seeded, so epochs are comparable)
//! and stores the PNGs, prompt and seed in their text chunks. The same prompts and seeds are
//! rendered by the base model without a LoRA too, and everything is laid out in one contact
//! sheet (a row per epoch after the base row, a column per prompt), stored as a report and in
//! a TensorBoard event file.

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

use super::contact_sheet;
use super::error::{Error, Result};
use super::options::NativeOptions;
use super::train::job_seed;

/// Renders samples of each epoch's LoRA with loraflow's own pipeline.
#[derive(Debug, Clone)]
pub struct NativeSampler {
    options: NativeOptions,
}

/// One image to render (`lora: None`: the base model alone, for the contact sheet's first row).
struct Job {
    epoch: u32,
    lora: Option<PathBuf>,
    lora_name: String,
    index: usize,
    settings: SampleSettings,
    out: PathBuf,
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
        let (model, config_dir) = o.model(step.base_model.as_str())?;
        let work = ctx.workdir().to_path_buf();
        let out_dir = work.join("samples");
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
        let mut jobs = Vec::new();
        let seed = job_seed(step).unwrap_or(o.sample.seed);
        let settings = |index: usize, prompt: &String| SampleSettings {
            prompt: prompt.clone(),
            negative_prompt: o.sample.negative_prompt.clone(),
            width: 0,
            height: 0,
            steps: o.sample.steps,
            guidance_scale: o.sample.guidance_scale,
            seed: seed + index as u64,
            sampler: o.sample.sampler,
            clip_skip: 1,
        };
        for (index, prompt) in step.sample_prompts.iter().enumerate() {
            jobs.push(Job {
                epoch: 0,
                lora: None,
                lora_name: String::new(),
                index,
                settings: settings(index, prompt),
                out: out_dir.join(format!("base-{index:02}.png")),
            });
        }
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
                    lora: Some(local.clone()),
                    lora_name: lora_name.clone(),
                    index,
                    settings: settings(index, prompt),
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
                let device = parse_device(&device)?;
                let base = StableDiffusion::load(&model, config_dir.as_deref(), &device)?;
                let size = size.unwrap_or_else(|| base.config.default_image_size());
                let mut current: Option<(PathBuf, StableDiffusion)> = None;
                for mut job in jobs {
                    if stop.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    let model = match &job.lora {
                        None => &base,
                        Some(lora) => {
                            if current.as_ref().is_none_or(|(p, _)| p != lora) {
                                let (adapted, _) = base.with_lora(lora, strength, &device)?;
                                current = Some((lora.clone(), adapted));
                            }
                            &current.as_ref().expect("loaded above").1
                        }
                    };
                    job.settings.width = size;
                    job.settings.height = size;
                    let image = Pipeline::new(model).render(&job.settings, &device)?;
                    let lora = job
                        .lora
                        .is_some()
                        .then_some((job.lora_name.as_str(), strength));
                    let text = png_text(&job.settings, &base_name, lora);
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
                epoch: rendered.last().map(|r| r.0).filter(|e| *e > 0),
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
        let mut artifacts = Vec::new();
        for (epoch, _, path) in &rendered {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let label = Some(*epoch).filter(|e| *e > 0);
            let artifact = ctx
                .artifacts()
                .put(path, &name, ArtifactKind::Sample, label)
                .await?;
            if label.is_none() {
                // The base model's samples belong to no epoch.
                artifacts.push(artifact);
                continue;
            }
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
        let sheet = contact_sheet::for_job(&step.sample_prompts, &step.epochs, &rendered)?;
        let (sheet_path, events) = contact_sheet::write(&sheet, &work, last_step(&step.epochs))?;
        let sheet_artifact = ctx
            .artifacts()
            .put(&sheet_path, "contact_sheet.png", ArtifactKind::Report, None)
            .await?;
        let sheet_uri = sheet_artifact.uri.clone();
        artifacts.push(sheet_artifact);
        let events_name = events
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let events_artifact = ctx
            .artifacts()
            .put(&events, &events_name, ArtifactKind::Report, None)
            .await?;
        let events_uri = events_artifact.uri.clone();
        artifacts.push(events_artifact);
        Ok(StepOutput {
            outputs: serde_json::json!({
                "contact_sheet": sheet_uri,
                "tensorboard": events_uri,
                "rendered": rendered.len(),
                "epochs": epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
                "steps": o.sample.steps,
                "sampler": o.sample.sampler.display_name(),
                "guidance_scale": o.sample.guidance_scale,
                "seed": seed,
            }),
            artifacts,
            epochs,
        })
    }
}

/// The training step at which the last epoch was saved (the contact sheet's TensorBoard step).
fn last_step(epochs: &[EpochOutput]) -> u64 {
    epochs
        .iter()
        .map(|e| e.step.unwrap_or(e.epoch as u64))
        .max()
        .unwrap_or(0)
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
