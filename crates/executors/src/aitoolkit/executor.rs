//! [`AiToolkitTrainer`]: the `train` executor for the ai-toolkit engine. One
//! attempt: check the job against the settings, fetch the dataset (and
//! labels), lay it out as a folder of images and captions, plan the steps,
//! write the job config, run `python run.py <config>` while reporting its
//! progress, and store the LoRA and samples of every saved epoch.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use loraflow_core::artifact::{Artifact, ArtifactKind, EpochOutput};
use loraflow_core::catalogue::{Engine, ModelFamily};
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_core::workflow::StepKind;
use tracing::Instrument;

use super::check::{self, Installation};
use super::config::{self, JobInputs, RunPaths};
use super::error::{Error, Result};
use super::options::{AiToolkitModel, AiToolkitOptions, ModelSource};
use super::outputs::{self, Saved};
use super::params::{StepPlan, TrainParams};
use super::progress::{self, Line, ProgressTracker};
use crate::external::image_folder::{self, safe_name};
use crate::external::inputs::fetch_inputs;
use crate::external::process::{self, Ended, ScriptCommand, Transcript};

/// Drives ostris/ai-toolkit as a subprocess for `train` steps of jobs on the
/// ai-toolkit engine.
#[derive(Debug, Clone)]
pub struct AiToolkitTrainer {
    options: AiToolkitOptions,
}

/// What a job needs from this machine, checked before anything is fetched.
#[derive(Debug)]
struct Plan<'a> {
    model: &'a AiToolkitModel,
    family: ModelFamily,
    name_or_path: String,
    params: TrainParams,
}

fn report(ctx: &StepContext, message: &str) {
    ctx.report(StepProgress {
        message: Some(message.to_owned()),
        ..StepProgress::default()
    });
}

/// Lines by which ai-toolkit (or the Hugging Face libraries under it) says
/// the model could not be found or fetched.
const MODEL_MISSING: [&str; 5] = [
    "is not a local folder and is not a valid model identifier",
    "RepositoryNotFoundError",
    "GatedRepoError",
    "LocalEntryNotFoundError",
    "Repository Not Found",
];

/// Lines by which ai-toolkit refuses a job config (`toolkit/config.py`,
/// `jobs/BaseJob.py`).
const CONFIG_REJECTED: [&str; 5] = [
    "config file is invalid",
    "config file error",
    "config file must have",
    "Could not find config file",
    "Environment variable ",
];

impl AiToolkitTrainer {
    /// A trainer with `options`, checked.
    pub fn new(options: AiToolkitOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self { options })
    }

    pub fn options(&self) -> &AiToolkitOptions {
        &self.options
    }

    /// The startup check: `run.py` in the checkout, python runs, local
    /// models exist (see [`check::check_installation`]).
    pub fn check_installation(&self) -> Result<Installation> {
        check::check_installation(&self.options)
    }

    fn plan(&self, step: &StepAssignment) -> Result<Plan<'_>> {
        let id = step.base_model.as_str();
        let model = self
            .options
            .models
            .get(id)
            .ok_or_else(|| Error::UnknownBaseModel {
                model: id.to_owned(),
                configured: self.options.models.keys().cloned().collect(),
            })?;
        let family = step
            .model_family
            .or(model.family)
            .ok_or_else(|| Error::UnknownFamily {
                model: id.to_owned(),
            })?;
        if !matches!(family, ModelFamily::Sdxl | ModelFamily::Flux) {
            return Err(Error::UnsupportedFamily {
                model: id.to_owned(),
                family: family.to_string(),
            });
        }
        let params = TrainParams::from_params(&step.params)?;
        let run_py = self.options.run_py();
        if !run_py.is_file() {
            return Err(Error::RunPyMissing { path: run_py });
        }
        let name_or_path = match self.options.source(model) {
            ModelSource::Local(path) if !path.exists() => {
                return Err(Error::ModelMissing {
                    model: id.to_owned(),
                    detail: format!(
                        "{} does not exist; put the model there or fix models.{id}.name_or_path",
                        path.display()
                    ),
                });
            }
            ModelSource::Local(path) => path.to_string_lossy().into_owned(),
            ModelSource::Hub(name) => name,
        };
        Ok(Plan {
            model,
            family,
            name_or_path,
            params,
        })
    }

    fn command(&self, config: &Path, seed: Option<u64>) -> ScriptCommand {
        let o = &self.options;
        let mut env = o.env.clone();
        // run.py seeds python, numpy and torch from SEED.
        if let Some(seed) = seed {
            env.insert("SEED".into(), seed.to_string());
        }
        ScriptCommand {
            program: o.python.clone(),
            args: vec![OsString::from("run.py"), config.into()],
            cwd: o.ai_toolkit_dir.clone(),
            env,
            timeout: o.timeout,
            stop_grace: o.stop_grace,
        }
    }

    async fn store(ctx: &StepContext, saved: &Saved, kind: ArtifactKind) -> Result<Artifact> {
        Ok(ctx
            .artifacts()
            .put(&saved.path, &saved.file_name, kind, Some(saved.epoch))
            .await?)
    }

    /// The error for a run that exited unsuccessfully.
    fn failure(
        step: &StepAssignment,
        status: std::process::ExitStatus,
        transcript: &Transcript,
        tracker: &ProgressTracker,
        lines: &[String],
    ) -> Error {
        let tail = transcript.tail();
        if let Some(line) = transcript.out_of_memory.clone() {
            return Error::OutOfMemory { line, tail };
        }
        let find = |needles: &[&str]| {
            lines
                .iter()
                .find(|l| needles.iter().any(|n| l.contains(n)))
                .map(|l| l.trim().to_owned())
        };
        if let Some(line) = find(&MODEL_MISSING) {
            return Error::ModelMissing {
                model: step.base_model.as_str().to_owned(),
                detail: format!("{line}\nlast lines of output:\n{tail}"),
            };
        }
        if let Some(line) = find(&CONFIG_REJECTED) {
            return Error::ConfigRejected { line, tail };
        }
        Error::Failed {
            status: format!("exited unsuccessfully ({status})"),
            exception: transcript
                .exception
                .clone()
                .or_else(|| tracker.job_error().map(str::to_owned)),
            tail,
        }
    }

    /// One attempt, with typed errors.
    pub async fn train(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput> {
        let plan = self.plan(step)?;
        let work = ctx.workdir().to_path_buf();
        report(ctx, "fetching the dataset");
        let (root, files, labels) = fetch_inputs(step, ctx, &work).await?;
        if ctx.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let sampling = crate::external::inputs::sample_settings(step, labels.as_ref());
        let image_dir = work.join("images");
        let layout = {
            let image_dir = image_dir.clone();
            tokio::task::spawn_blocking(move || {
                image_folder::write_layout(&root, &files, labels.as_ref(), &image_dir)
            })
            .await
            .map_err(|e| Error::io("laying out the dataset", e))??
        };

        let steps = StepPlan::new(&plan.params, layout.images);
        let paths = RunPaths {
            training_folder: work.join("output"),
            image_dir,
            name: safe_name(&step.naming.subject, "lora"),
        };
        std::fs::create_dir_all(&paths.training_folder)
            .map_err(|e| Error::io(format!("creating {}", paths.training_folder.display()), e))?;
        let default_caption = plan
            .params
            .trigger_word
            .clone()
            .unwrap_or_else(|| step.naming.subject.clone());
        let job = config::job_config(&JobInputs {
            params: &plan.params,
            plan: &steps,
            family: plan.family,
            model_id: step.base_model.as_str(),
            model: plan.model,
            name_or_path: &plan.name_or_path,
            options: &self.options,
            paths: &paths,
            sampling: &sampling,
            default_caption: &default_caption,
        })?;
        let config_path = config_path(&work);
        std::fs::write(&config_path, config::to_yaml(&job)?)
            .map_err(|e| Error::io(format!("writing {}", config_path.display()), e))?;
        if ctx.is_cancelled() {
            return Err(Error::Cancelled);
        }

        report(ctx, "starting ai-toolkit");
        let cmd = self.command(&config_path, plan.params.seed);
        let samples_per_step =
            plan.params.batch_size.unwrap_or(1) * plan.params.gradient_accumulation.unwrap_or(1);
        let mut tracker = ProgressTracker::new(steps, samples_per_step);
        let mut transcript = Transcript::default();
        // The lines that may name a cause (not the bar's redraws), bounded.
        let mut notable: Vec<String> = Vec::new();
        let ended = process::run_script(&cmd, ctx.cancelled(), |line| {
            tracing::debug!(target: "loraflow::ai_toolkit", parent: ctx.span(), "{line}");
            let parsed = progress::parse_line(line, &paths.name);
            let is_bar = matches!(parsed, Line::Step(_));
            transcript.record(line, is_bar);
            if !is_bar
                && (MODEL_MISSING.iter().chain(&CONFIG_REJECTED)).any(|n| line.contains(n))
                && notable.len() < 16
            {
                notable.push(line.to_owned());
            }
            if let Some(p) = tracker.observe(&parsed) {
                ctx.report(p);
            }
        })
        .await?;
        match ended {
            Ended::Cancelled => return Err(Error::Cancelled),
            Ended::TimedOut => {
                return Err(Error::TimedOut {
                    after: self.options.timeout,
                });
            }
            Ended::Exited(status) if !status.success() => {
                return Err(Self::failure(step, status, &transcript, &tracker, &notable));
            }
            Ended::Exited(_) => {}
        }

        ctx.report(tracker.current("storing the LoRA files"));
        let save_root = paths.save_root();
        let loras = outputs::find_loras(&save_root, &paths.name, &steps)?;
        let samples = outputs::find_samples(&save_root, &steps)?;
        let mut epochs = Vec::with_capacity(loras.len());
        for saved in &loras {
            let lora = Self::store(ctx, saved, ArtifactKind::Lora).await?;
            let mut epoch_samples = Vec::new();
            for sample in samples.iter().filter(|s| s.epoch == saved.epoch) {
                epoch_samples.push(Self::store(ctx, sample, ArtifactKind::Sample).await?);
            }
            epochs.push(EpochOutput {
                epoch: saved.epoch,
                lora: Some(lora),
                samples: epoch_samples,
                loss: tracker.epoch_loss(saved.epoch),
                ..Default::default()
            });
        }
        // The config goes beside the weights, so a run can be reproduced.
        let artifacts = vec![
            ctx.artifacts()
                .put(&config_path, "job_config.yaml", ArtifactKind::Other, None)
                .await?,
        ];

        let last = tracker.last_step();
        Ok(StepOutput {
            outputs: serde_json::json!({
                "engine": Engine::AiToolkit.as_str(),
                "model": plan.name_or_path,
                "arch": plan.family.to_string(),
                "images": layout.images,
                "captions_from_labels": layout.from_labels,
                "captions_from_sidecars": layout.from_sidecars,
                "uncaptioned": layout.uncaptioned,
                "skipped_files": layout.skipped,
                "unused_labels": layout.unused_labels,
                "epochs": steps.epochs,
                "steps_per_epoch": steps.steps_per_epoch,
                "total_steps": steps.steps,
                "saved_epochs": loras.iter().map(|s| s.epoch).collect::<Vec<_>>(),
                "final_loss": last.and_then(|s| s.loss),
            }),
            artifacts,
            epochs,
        })
    }
}

/// Where the generated config of an attempt is, for tests and tools.
pub fn config_path(workdir: &Path) -> PathBuf {
    workdir.join("job_config.yaml")
}

#[async_trait]
impl Executor for AiToolkitTrainer {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::TRAIN.into()]
    }

    fn engines(&self) -> Vec<Engine> {
        vec![Engine::AiToolkit]
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.train(step, ctx)
            .instrument(ctx.span().clone())
            .await
            .map_err(StepError::from)
    }
}
