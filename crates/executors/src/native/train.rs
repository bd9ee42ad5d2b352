//! [`NativeTrainer`]: the `train` executor of the native engine. One attempt: fetch the dataset
//! (and the labels, whose captions replace sidecars), map the job's parameters, train on a
//! blocking thread while forwarding progress and control requests, then store every saved
//! epoch's LoRA with its training and validation loss, the loss history, its plot and a
//! TensorBoard event file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use loraflow_core::artifact::{Artifact, ArtifactKind, EpochOutput};
use loraflow_core::catalogue::Engine;
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_core::workflow::StepKind;
use loraflow_trainer::{Controls, ProgressEvent, SaveReason, TrainOutput, Trainer};
use tracing::Instrument;

use super::error::{Error, Result};
use super::options::NativeOptions;
use super::params::{RunPaths, to_param_error, train_config};
use super::report::{EpochLoss, LossHistory, SavedMark, StepLoss, ValidationMark};
use super::sampling::{job_settings, requested_config, trainer_config};
use crate::dataset;
use crate::kohya::layout::safe_name;
use crate::label::Labels;

/// Trains LoRAs with loraflow's own trainer (`train` steps of jobs on the native engine).
#[derive(Debug, Clone)]
pub struct NativeTrainer {
    options: NativeOptions,
}

/// How often cancellation and `save_now`/`sample_now` are checked while training.
const POLL: Duration = Duration::from_millis(100);

fn report(ctx: &StepContext, message: impl Into<String>) {
    ctx.report(StepProgress {
        message: Some(message.into()),
        ..StepProgress::default()
    });
}

/// What the progress reports so far said: the latest validation loss, which every later
/// report carries, and the latest step report, which a validation report repeats.
#[derive(Debug, Default)]
struct Reported {
    validation: Option<f64>,
    last_step: Option<StepProgress>,
}

/// A trainer event as step progress (`None` for events that only update the message).
fn progress(event: &ProgressEvent, seen: &mut Reported) -> Option<StepProgress> {
    let p = match event {
        ProgressEvent::Validated(v) => {
            seen.validation = Some(v.loss as f64).filter(|l| l.is_finite());
            let message = format!(
                "validation loss {:.4} at step {} (epoch {})",
                v.loss, v.step, v.epoch
            );
            return Some(StepProgress {
                validation_loss: seen.validation,
                message: Some(message),
                ..seen.last_step.clone().unwrap_or_default()
            });
        }
        ProgressEvent::Preparing { stage, done, total } => StepProgress {
            message: Some(format!("encoding {stage} {done}/{total}")),
            ..StepProgress::default()
        },
        ProgressEvent::Started { total_steps, .. } => StepProgress {
            total_steps: Some(*total_steps as u64),
            step: Some(0),
            message: Some(format!("training: {total_steps} steps")),
            ..StepProgress::default()
        },
        ProgressEvent::Step(p) => StepProgress {
            percent: (p.step as f32 * 100.0 / p.total_steps.max(1) as f32).min(100.0),
            epoch: Some(p.epoch as u32),
            step: Some(p.step as u64),
            total_steps: Some(p.total_steps as u64),
            loss: p
                .smoothed_loss
                .is_finite()
                .then_some(p.smoothed_loss as f64),
            samples_per_sec: Some(p.samples_per_sec),
            validation_loss: seen.validation,
            message: Some(format!(
                "epoch {}/{} · step {}/{} · loss {:.4} (avg {:.4}) · {:.1} images/s · ETA {}s",
                p.epoch,
                p.total_epochs,
                p.step,
                p.total_steps,
                p.loss,
                p.smoothed_loss,
                p.samples_per_sec,
                p.eta.as_secs()
            )),
            ..StepProgress::default()
        },
        _ => return None,
    };
    if matches!(event, ProgressEvent::Step(_)) {
        seen.last_step = Some(p.clone());
    }
    Some(p)
}

/// The newest training state under `out` (by step), to resume a retried attempt from.
fn latest_state(out: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(out).ok()?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("state.json").is_file())
        .filter_map(|p| {
            let text = std::fs::read_to_string(p.join("state.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some((v["step"].as_u64()?, p))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, p)| p)
}

/// Epoch LoRA files an earlier attempt left in `out` (`<name>-NNNNNN.safetensors`).
fn earlier_epoch_files(out: &Path, name: &str) -> Vec<(usize, PathBuf)> {
    let prefix = format!("{name}-");
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?;
            let epoch = file
                .strip_prefix(&prefix)?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((epoch, p))
        })
        .collect();
    found.sort();
    found
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned())
}

impl NativeTrainer {
    /// A trainer with `options`, checked.
    pub fn new(options: NativeOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self { options })
    }

    pub fn options(&self) -> &NativeOptions {
        &self.options
    }

    /// The labels step's captions by image name (none without a labels input).
    pub(crate) async fn captions(
        step: &StepAssignment,
        ctx: &StepContext,
        work: &Path,
    ) -> Result<BTreeMap<String, String>> {
        let Some(artifact) = step.input(ArtifactKind::Labels) else {
            return Ok(BTreeMap::new());
        };
        let local = work.join(dataset::LABELS_FILE);
        ctx.artifacts().fetch(artifact, &local).await?;
        let bytes = tokio::fs::read(&local)
            .await
            .map_err(|e| Error::io(format!("reading {}", local.display()), e))?;
        let labels: Labels = serde_json::from_slice(&bytes).map_err(|e| {
            Error::param(
                "labels",
                format!("{} is not a valid labels file: {e}", artifact.uri),
            )
        })?;
        Ok(labels
            .images
            .into_iter()
            .map(|(name, label)| (name, label.caption))
            .collect())
    }

    /// One attempt, with typed errors.
    pub async fn train(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput> {
        let o = &self.options;
        let model = o.step_model(step, ctx).await?;
        let work = ctx.workdir().to_path_buf();
        report(ctx, "fetching the dataset");
        let root = work.join("dataset");
        ctx.artifacts().fetch_dir(&step.dataset.uri, &root).await?;
        let captions = Self::captions(step, ctx, &work).await?;
        let config_captions = captions.clone();
        if ctx.is_cancelled() {
            return Err(Error::Cancelled);
        }
        // With a persistent work folder, a retried attempt finds the last state and resumes.
        let persistent = o.work_dir.as_ref().map(|d| {
            d.join("jobs")
                .join(step.job_id.to_string())
                .join(step.step_id.to_string())
        });
        let out = persistent
            .clone()
            .unwrap_or_else(|| work.clone())
            .join("output");
        let name = safe_name(&step.naming.subject, "lora");
        let mut config = train_config(
            &step.params,
            step.model_family,
            RunPaths {
                model,
                dataset: root,
                captions,
                output: out.clone(),
                name: name.clone(),
                cache: o.work_dir.as_ref().map(|d| d.join("cache")),
            },
            &o.device,
        )?;
        if persistent.is_some() {
            config.resume = latest_state(&out);
        }
        // Rendered only on `sample-now` requests: the sample step renders every saved LoRA.
        let sampling = job_settings(
            step,
            &o.sample,
            config_captions.values().map(String::as_str),
        );
        config.sample = Some(trainer_config(&sampling)?);

        report(ctx, "loading the model and encoding the dataset");
        let controls = Arc::new(Controls::default());
        let remote = controls.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut handle = tokio::task::spawn_blocking(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let trainer = Trainer::new(config).map_err(to_param_error)?;
                let images = trainer.images().len();
                let (per_epoch, _) = trainer.plan();
                let output = trainer
                    .run(
                        &mut |e: ProgressEvent| {
                            let _ = tx.send(e);
                        },
                        &remote,
                    )
                    .map_err(to_param_error)?;
                Ok((output, per_epoch, images))
            }));
            run.unwrap_or_else(|panic| Err(Error::from_panic(panic)))
        });
        let mut tick = tokio::time::interval(POLL);
        let mut uploaded = Uploaded::default();
        let mut seen = Reported::default();
        let result = loop {
            tokio::select! {
                Some(event) = rx.recv() => {
                    if let Some(p) = progress(&event, &mut seen) {
                        ctx.report(p);
                    }
                    // What a request produced is shown to reviewers now, not at the end.
                    match uploaded.requested_output(ctx, &event).await {
                        Ok(Some(out)) => ctx.report_output(out),
                        Ok(None) => {}
                        // The completion stores and reports it again.
                        Err(e) => tracing::warn!("could not store a requested output yet: {e}"),
                    }
                }
                _ = tick.tick() => {
                    if ctx.is_cancelled() {
                        controls.cancel();
                    }
                    if ctx.take_save_now() {
                        controls.request_save();
                    }
                    if let Some(asked) = ctx.take_sample_request() {
                        match requested_config(&sampling, &asked) {
                            Ok(c) if !asked.is_empty() => controls.request_sample_with(c),
                            Ok(_) => controls.request_sample(),
                            Err(e) => {
                                tracing::warn!("sample request refused, rendering the job's settings: {e}");
                                controls.request_sample();
                            }
                        }
                    }
                }
                joined = &mut handle => {
                    break joined.map_err(|e| Error::Panicked { message: e.to_string() })?;
                }
            }
        };
        while let Ok(event) = rx.try_recv() {
            if let Some(p) = progress(&event, &mut seen) {
                ctx.report(p);
            }
        }
        let (output, per_epoch, images) = match result {
            Ok(r) => r,
            Err(e)
                if ctx.is_cancelled()
                    && e.kind() == loraflow_core::job::StepErrorKind::Cancelled =>
            {
                return Err(Error::Cancelled);
            }
            Err(e) => return Err(e),
        };
        report(ctx, "storing the LoRA files");
        self.store(ctx, &output, per_epoch, images, &out, &name, &uploaded)
            .await
    }

    async fn put(
        ctx: &StepContext,
        path: &Path,
        kind: ArtifactKind,
        epoch: Option<usize>,
    ) -> Result<Artifact> {
        Ok(ctx
            .artifacts()
            .put(path, &file_name(path), kind, epoch.map(|e| e as u32))
            .await?)
    }

    // What one finished run left behind, stored in one place; the arguments
    // are that run's parts.
    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        ctx: &StepContext,
        output: &TrainOutput,
        per_epoch: usize,
        images: usize,
        out: &Path,
        name: &str,
        uploaded: &Uploaded,
    ) -> Result<StepOutput> {
        let mut epochs: Vec<EpochOutput> = Vec::new();
        let mut artifacts = Vec::new();
        let epoch_loss = |epoch: usize, fallback: f32| {
            output
                .epoch_losses
                .get(epoch.wrapping_sub(1))
                .copied()
                .unwrap_or(fallback)
        };
        // Epoch files of an earlier attempt this run resumed from.
        let first_epoch = output
            .saved
            .iter()
            .map(|s| s.epoch)
            .min()
            .unwrap_or(usize::MAX);
        if output.resumed_from.is_some() {
            for (epoch, path) in earlier_epoch_files(out, name) {
                if epoch < first_epoch {
                    let lora = Self::put(ctx, &path, ArtifactKind::Lora, Some(epoch)).await?;
                    // The earlier attempt's measurements came back with its training state.
                    let measured = output.validation.iter().rfind(|v| v.epoch == epoch);
                    epochs.push(EpochOutput {
                        epoch: epoch as u32,
                        lora: Some(lora),
                        samples: Vec::new(),
                        loss: Some(epoch_loss(epoch, f32::NAN) as f64).filter(|l| l.is_finite()),
                        validation_loss: measured.map(|v| v.loss as f64).filter(|l| l.is_finite()),
                        step: measured.map(|v| v.step as u64),
                        ..Default::default()
                    });
                }
            }
        }
        for saved in &output.saved {
            let lora = match uploaded.get(&saved.path) {
                Some(a) => a,
                None => Self::put(ctx, &saved.path, ArtifactKind::Lora, Some(saved.epoch)).await?,
            };
            if saved.reason == SaveReason::Requested {
                epochs.push(EpochOutput {
                    epoch: saved.epoch as u32,
                    lora: Some(lora),
                    loss: Some(saved.loss as f64).filter(|l| l.is_finite()),
                    step: Some(saved.step as u64),
                    requested: true,
                    ..Default::default()
                });
                continue;
            }
            let loss = epoch_loss(saved.epoch, saved.loss) as f64;
            epochs.push(EpochOutput {
                epoch: saved.epoch as u32,
                lora: Some(lora),
                samples: Vec::new(),
                loss: loss.is_finite().then_some(loss),
                validation_loss: saved
                    .validation_loss
                    .map(f64::from)
                    .filter(|l| l.is_finite()),
                step: Some(saved.step as u64),
                ..Default::default()
            });
        }
        // Samples rendered while training ran were asked for (`sample-now`): they belong to
        // the step they were rendered at, beside a LoRA saved there on request, if any.
        for batch in &output.samples {
            let mut samples = Vec::new();
            for path in &batch.paths {
                samples.push(match uploaded.get(path) {
                    Some(a) => a,
                    None => Self::put(ctx, path, ArtifactKind::Sample, Some(batch.epoch)).await?,
                });
            }
            let at = Some(batch.step as u64);
            match epochs.iter_mut().find(|e| e.requested && e.step == at) {
                Some(e) => e.samples.extend(samples),
                None => epochs.push(EpochOutput {
                    epoch: batch.epoch as u32,
                    samples,
                    step: at,
                    requested: true,
                    ..Default::default()
                }),
            }
        }

        let history = loss_history(output, per_epoch, &epochs);
        let json = out.join("loss_history.json");
        std::fs::write(&json, history.to_json())
            .map_err(|e| Error::io(format!("writing {}", json.display()), e))?;
        let curve = out.join("loss_curve.png");
        history.write_plot(&curve)?;
        let events = write_events(&out.join("tensorboard"), &history)?;
        let curve_artifact = Self::put(ctx, &curve, ArtifactKind::Report, None).await?;
        let curve_uri = curve_artifact.uri.clone();
        artifacts.push(Self::put(ctx, &json, ArtifactKind::Report, None).await?);
        artifacts.push(curve_artifact);
        let events_artifact = Self::put(ctx, &events, ArtifactKind::Report, None).await?;
        let events_uri = events_artifact.uri.clone();
        artifacts.push(events_artifact);
        artifacts.push(Self::put(ctx, &output.config_file, ArtifactKind::Other, None).await?);

        let elapsed = output.elapsed.as_secs_f64();
        Ok(StepOutput {
            outputs: serde_json::json!({
                "engine": Engine::Native.as_str(),
                "device": self.options.device,
                "images": images,
                "examples_per_epoch": output.examples_per_epoch,
                "epochs": output.epochs,
                "steps": output.steps,
                "final_loss": output.losses.last(),
                "epoch_losses": output.epoch_losses,
                "adapted_modules": output.adapted_modules.len(),
                "trainable_params": output.trainable_params,
                "elapsed_secs": elapsed,
                "resumed_from_step": output.resumed_from,
                "loss_curve": curve_uri,
                "tensorboard": events_uri,
                "validation_images": output.validation_images,
                "base_validation_loss": output
                    .validation
                    .iter()
                    .find(|v| v.epoch == 0)
                    .map(|v| v.loss),
                "validation_losses": epochs
                    .iter()
                    .map(|e| serde_json::json!({"epoch": e.epoch, "validation_loss": e.validation_loss}))
                    .collect::<Vec<_>>(),
            }),
            artifacts,
            epochs,
        })
    }
}

#[async_trait]
impl Executor for NativeTrainer {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::TRAIN.into()]
    }

    fn engines(&self) -> Vec<Engine> {
        vec![Engine::Native]
    }

    fn base_models(&self) -> Vec<loraflow_core::executor::InstalledModel> {
        self.options
            .installed_models()
            .into_iter()
            .map(|m| loraflow_core::executor::InstalledModel::new(Engine::Native, m))
            .collect()
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.train(step, ctx)
            .instrument(ctx.span().clone())
            .await
            .map_err(StepError::from)
    }
}

/// Files stored while training ran, so that the completion reports them without storing them
/// again.
#[derive(Debug, Default)]
struct Uploaded(BTreeMap<PathBuf, Artifact>);

impl Uploaded {
    fn get(&self, path: &Path) -> Option<Artifact> {
        self.0.get(path).cloned()
    }

    async fn put(
        &mut self,
        ctx: &StepContext,
        path: &Path,
        kind: ArtifactKind,
        epoch: usize,
    ) -> Result<Artifact> {
        let a = NativeTrainer::put(ctx, path, kind, Some(epoch)).await?;
        self.0.insert(path.to_path_buf(), a.clone());
        Ok(a)
    }

    /// For a LoRA saved or samples rendered on request: the files stored now, as the report
    /// the job shows while training runs.
    async fn requested_output(
        &mut self,
        ctx: &StepContext,
        event: &ProgressEvent,
    ) -> Result<Option<EpochOutput>> {
        let (epoch, step, lora, samples) = match event {
            ProgressEvent::Saved(s) if s.reason == SaveReason::Requested => {
                let lora = self.put(ctx, &s.path, ArtifactKind::Lora, s.epoch).await?;
                (s.epoch, s.step, Some(lora), Vec::new())
            }
            ProgressEvent::Sampled(batch) => {
                let mut samples = Vec::new();
                for path in &batch.paths {
                    samples.push(
                        self.put(ctx, path, ArtifactKind::Sample, batch.epoch)
                            .await?,
                    );
                }
                (batch.epoch, batch.step, None, samples)
            }
            _ => return Ok(None),
        };
        Ok(Some(EpochOutput {
            epoch: epoch as u32,
            lora,
            samples,
            step: Some(step as u64),
            requested: true,
            ..Default::default()
        }))
    }
}

/// The run's history: every step with its learning rate, epoch means, saved epochs and
/// validation losses.
fn loss_history(output: &TrainOutput, per_epoch: usize, epochs: &[EpochOutput]) -> LossHistory {
    LossHistory {
        steps: output
            .losses
            .iter()
            .enumerate()
            .map(|(i, &loss)| StepLoss {
                step: i + 1,
                epoch: i / per_epoch.max(1) + 1,
                loss,
                learning_rate: output.learning_rates.get(i).copied(),
            })
            .collect(),
        epochs: output
            .epoch_losses
            .iter()
            .enumerate()
            .map(|(i, &mean_loss)| EpochLoss {
                epoch: i + 1,
                mean_loss,
            })
            .collect(),
        saved: epochs
            .iter()
            .map(|e| SavedMark {
                epoch: e.epoch as usize,
                step: e
                    .step
                    .map_or_else(|| e.epoch as usize * per_epoch, |s| s as usize),
            })
            .collect(),
        validation: output
            .validation
            .iter()
            .map(|v| ValidationMark {
                epoch: v.epoch,
                step: v.step,
                loss: v.loss,
            })
            .collect(),
        approved_epoch: None,
    }
}

/// Writes the run's scalars as a TensorBoard event file in `dir` (tags as sd-scripts names
/// them: `loss/current`, `loss/average`, `loss/epoch`, `loss/validation`, `lr/unet`).
fn write_events(dir: &Path, history: &LossHistory) -> Result<PathBuf> {
    let io = |e| {
        Error::io(
            format!("writing TensorBoard events in {}", dir.display()),
            e,
        )
    };
    let mut w = crate::tensorboard::EventWriter::create(dir, "train").map_err(io)?;
    for s in &history.steps {
        w.scalar("loss/current", s.step as u64, s.loss)
            .map_err(io)?;
        if let Some(lr) = s.learning_rate {
            w.scalar("lr/unet", s.step as u64, lr as f32).map_err(io)?;
        }
    }
    for (step, loss) in history.smoothed() {
        w.scalar("loss/average", step as u64, loss).map_err(io)?;
    }
    for e in &history.epochs {
        if let Some(step) = history.last_step_of(e.epoch) {
            w.scalar("loss/epoch", step as u64, e.mean_loss)
                .map_err(io)?;
        }
    }
    for v in &history.validation {
        w.scalar("loss/validation", v.step as u64, v.loss)
            .map_err(io)?;
    }
    w.finish().map_err(io)
}
