//! [`NativeSampler`]: the `sample` executor. For every epoch that has a LoRA, it renders the
//! job's sample prompts with the base model plus that LoRA (seeded, so epochs are comparable)
//! and stores the PNGs, prompt and seed in their text chunks. The same prompts and seeds are
//! rendered by the base model without a LoRA too, and everything is laid out in one contact
//! sheet (a row per epoch after the base row, a column per prompt), stored as a report and in
//! a TensorBoard event file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use loraflow_core::artifact::{ArtifactKind, EpochOutput};
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_core::workflow::StepKind;
use loraflow_trainer::device::{Device, parse_device};
use loraflow_trainer::flux::is_flux_dir;
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::sample::png::{RgbImage, write_png};
use loraflow_trainer::sample::{Pipeline, SampleSettings, png_text};
use loraflow_trainer::sdxl::is_sdxl_dir;
use tokio::sync::mpsc::UnboundedSender;
use tracing::Instrument;

use super::contact_sheet;
use super::error::{Error, Result};
use super::options::NativeOptions;
use super::sample_flux::FluxRun;
use super::sample_xl::XlRun;
use super::sampling::{job_settings, sampler_kind};
use super::train::NativeTrainer;

/// Renders samples of each epoch's LoRA with loraflow's own pipeline.
#[derive(Debug, Clone)]
pub struct NativeSampler {
    options: NativeOptions,
}

/// Which saved LoRA an image belongs to: an epoch's, or one saved on request at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) epoch: u32,
    requested_at: Option<u64>,
}

impl Key {
    /// The base model without a LoRA: the contact sheet's first row.
    pub(super) const BASE: Self = Self {
        epoch: 0,
        requested_at: None,
    };

    /// An epoch's LoRA.
    #[cfg(test)]
    pub(super) const fn epoch(epoch: u32) -> Self {
        Self {
            epoch,
            requested_at: None,
        }
    }

    fn is_base(&self) -> bool {
        *self == Self::BASE
    }

    fn of(e: &EpochOutput) -> Self {
        Self {
            epoch: e.epoch,
            requested_at: e.step.filter(|_| e.requested),
        }
    }

    fn file_name(&self, index: usize) -> String {
        match self.requested_at {
            Some(step) => format!("step{step:08}-{index:02}.png"),
            None if self.is_base() => format!("base-{index:02}.png"),
            None => format!("epoch{:03}-{index:02}.png", self.epoch),
        }
    }

    /// An empty report for this LoRA, to add samples to.
    fn output(&self) -> EpochOutput {
        EpochOutput {
            step: self.requested_at,
            requested: self.requested_at.is_some(),
            ..EpochOutput::new(self.epoch)
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.requested_at {
            Some(step) => write!(f, "step {step} (epoch {})", self.epoch),
            None if self.is_base() => write!(f, "the base model"),
            None => write!(f, "epoch {}", self.epoch),
        }
    }
}

/// One image to render (`lora: None`: the base model alone, for the contact sheet's first row).
pub(super) struct Job {
    pub(super) key: Key,
    pub(super) lora: Option<PathBuf>,
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
        // Every saved LoRA: each epoch's, and each one saved on request between epochs.
        let loras: Vec<_> = step
            .epochs
            .iter()
            .filter_map(|e| e.lora.as_ref().map(|l| (Key::of(e), l.clone())))
            .collect();
        if loras.is_empty() {
            return Err(Error::param(
                "epochs",
                "no epoch has a LoRA to sample (did the train step save any?)",
            ));
        }
        let work = ctx.workdir().to_path_buf();
        let captions = NativeTrainer::captions(step, ctx, &work).await?;
        let settings = job_settings(step, &o.sample, captions.values().map(String::as_str));
        let sampler = sampler_kind(&settings.sampler)?;
        let (model, config_dir) = o.step_model(step, ctx).await?;
        let out_dir = work.join("samples");
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
        let image_settings = |index: usize, prompt: &String| SampleSettings {
            prompt: prompt.clone(),
            negative_prompt: settings.negative_prompt.clone(),
            width: settings.width as usize,
            height: settings.height as usize,
            steps: settings.steps as usize,
            guidance_scale: settings.guidance_scale,
            seed: settings.seed + index as u64,
            sampler,
            clip_skip: 1,
        };
        // The same prompts and seeds without a LoRA, for comparison.
        let mut jobs: Vec<Job> = settings
            .prompts
            .iter()
            .enumerate()
            .map(|(index, prompt)| Job {
                key: Key::BASE,
                lora: None,
                lora_name: String::new(),
                index,
                settings: image_settings(index, prompt),
                out: out_dir.join(Key::BASE.file_name(index)),
            })
            .collect();
        for (key, artifact) in &loras {
            ctx.report(StepProgress {
                message: Some(format!("fetching the LoRA of {key}")),
                ..StepProgress::default()
            });
            let local = work.join("loras").join(&artifact.name);
            ctx.artifacts().fetch(artifact, &local).await?;
            let lora_name = artifact
                .name
                .strip_suffix(".safetensors")
                .unwrap_or(&artifact.name)
                .to_string();
            for (index, prompt) in settings.prompts.iter().enumerate() {
                jobs.push(Job {
                    key: *key,
                    lora: Some(local.clone()),
                    lora_name: lora_name.clone(),
                    index,
                    settings: image_settings(index, prompt),
                    out: out_dir.join(key.file_name(index)),
                });
            }
        }

        let total = jobs.len();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Key, usize, PathBuf)>();
        let device = o.device.clone();
        let strength = settings.lora_strength;
        let base_name = step.base_model.to_string();
        let mut handle = tokio::task::spawn_blocking(move || -> Result<()> {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
                if is_flux_dir(config_dir.as_deref().unwrap_or(&model)) {
                    let run = FluxRun {
                        model: &model,
                        config_dir: config_dir.as_deref(),
                        strength,
                        base_name: &base_name,
                        device: &device,
                        stop: &stop,
                        tx: &tx,
                    };
                    return run.render(jobs);
                }
                if is_sdxl_dir(config_dir.as_deref().unwrap_or(&model)) {
                    let run = XlRun {
                        model: &model,
                        config_dir: config_dir.as_deref(),
                        strength,
                        base_name: &base_name,
                        device: &device,
                        stop: &stop,
                        tx: &tx,
                    };
                    return run.render(jobs);
                }
                let device = parse_device(&device)?;
                let base = StableDiffusion::load(&model, config_dir.as_deref(), &device)?;
                Renderer {
                    strength,
                    base_name: &base_name,
                    stop: &stop,
                    tx: &tx,
                }
                .render(&base, jobs, &device)
            }));
            run.unwrap_or_else(|panic| Err(Error::from_panic(panic)))
        });

        let mut rendered: Vec<(Key, usize, PathBuf)> = Vec::new();
        let report = |rendered: &[(Key, usize, PathBuf)]| {
            ctx.report(StepProgress {
                percent: rendered.len() as f32 * 100.0 / total as f32,
                step: Some(rendered.len() as u64),
                total_steps: Some(total as u64),
                epoch: rendered.last().map(|r| r.0.epoch).filter(|e| *e > 0),
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

        let mut epochs: Vec<(Key, EpochOutput)> = Vec::new();
        let mut artifacts = Vec::new();
        for (key, _, path) in &rendered {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let label = Some(key.epoch).filter(|_| !key.is_base());
            let artifact = ctx
                .artifacts()
                .put(path, &name, ArtifactKind::Sample, label)
                .await?;
            if key.is_base() {
                // The base model's samples belong to no epoch.
                artifacts.push(artifact);
                continue;
            }
            match epochs.iter_mut().find(|(k, _)| k == key) {
                Some((_, e)) => e.samples.push(artifact),
                None => {
                    let mut e = key.output();
                    e.samples.push(artifact);
                    epochs.push((*key, e));
                }
            }
        }
        let epochs: Vec<EpochOutput> = epochs.into_iter().map(|(_, e)| e).collect();
        // The sheet's rows: the base model, then each epoch (LoRAs saved on
        // request between epochs are reviewed from their own samples).
        let rows: Vec<(u32, usize, PathBuf)> = rendered
            .iter()
            .filter(|(k, _, _)| k.requested_at.is_none())
            .map(|(k, i, p)| (k.epoch, *i, p.clone()))
            .collect();
        let sheet = contact_sheet::for_job(&settings.prompts, &step.epochs, &rows)?;
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
                "prompts": settings.prompts,
                "default_prompts": step.sample_prompts.is_empty(),
                "negative_prompt": settings.negative_prompt,
                "steps": settings.steps,
                "sampler": sampler.display_name(),
                "guidance_scale": settings.guidance_scale,
                "width": settings.width,
                "height": settings.height,
                "seed": settings.seed,
                "lora_strength": settings.lora_strength,
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

/// A base model the `sample` step renders on: SD1.x/SD2.x, SDXL or FLUX.1.
pub(super) trait SampleBase: Sized {
    /// The side a size of 0 stands for (a job from before sizes were parameters).
    fn default_size(&self) -> usize;
    /// The model with `lora` applied at `strength`.
    fn adapted(&self, lora: &Path, strength: f64, device: &Device) -> Result<Self>;
    /// What the model renders with in place of the job's settings, recorded as such.
    fn adjust(&self, _settings: &mut SampleSettings) {}
    /// One image.
    fn draw(&self, settings: &SampleSettings, device: &Device) -> Result<RgbImage>;
}

impl SampleBase for StableDiffusion {
    fn default_size(&self) -> usize {
        self.config.default_image_size()
    }

    fn adapted(&self, lora: &Path, strength: f64, device: &Device) -> Result<Self> {
        Ok(self.with_lora(lora, strength, device)?.0)
    }

    fn draw(&self, settings: &SampleSettings, device: &Device) -> Result<RgbImage> {
        Ok(Pipeline::new(self).render(settings, device)?)
    }
}

/// Where rendered images go, and what their text chunks say.
pub(super) struct Renderer<'a> {
    pub strength: f64,
    pub base_name: &'a str,
    pub stop: &'a AtomicBool,
    pub tx: &'a UnboundedSender<(Key, usize, PathBuf)>,
}

impl Renderer<'_> {
    /// Renders `jobs` on `base` in order, loading each LoRA once.
    pub(super) fn render<M: SampleBase>(
        &self,
        base: &M,
        jobs: Vec<Job>,
        device: &Device,
    ) -> Result<()> {
        let size = base.default_size();
        let mut current: Option<(PathBuf, M)> = None;
        for mut job in jobs {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let model = match &job.lora {
                None => base,
                Some(lora) => {
                    if current.as_ref().is_none_or(|(p, _)| p != lora) {
                        current = Some((lora.clone(), base.adapted(lora, self.strength, device)?));
                    }
                    &current.as_ref().expect("loaded above").1
                }
            };
            for side in [&mut job.settings.width, &mut job.settings.height] {
                if *side == 0 {
                    *side = size;
                }
            }
            model.adjust(&mut job.settings);
            let image = model.draw(&job.settings, device)?;
            let lora = job
                .lora
                .as_ref()
                .map(|_| (job.lora_name.as_str(), self.strength));
            let text = png_text(&job.settings, self.base_name, lora);
            write_png(&job.out, &image, &text)?;
            let _ = self.tx.send((job.key, job.index, job.out));
        }
        Ok(())
    }
}
