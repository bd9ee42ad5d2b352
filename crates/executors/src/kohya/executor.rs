//! [`KohyaTrainer`]: the `train` executor for the kohya engine. One attempt:
//! check the job against the settings, fetch the dataset (and labels), lay
//! it out, write the configs, run sd-scripts while reporting its progress,
//! and store the LoRA of every saved epoch.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use loraflow_core::artifact::{Artifact, ArtifactKind, EpochOutput};
use loraflow_core::catalogue::{Engine, ModelFamily};
use loraflow_core::executor::{Executor, StepAssignment, StepContext, StepOutput};
use loraflow_core::job::{StepError, StepProgress};
use loraflow_core::sampling::SampleSettings;
use loraflow_core::workflow::StepKind;
use tracing::Instrument;

use super::config::{self, RunPaths};
use super::error::{Error, Result};
use super::layout::{self, Layout};
use super::options::{KohyaModel, KohyaOptions};
use super::outputs::{self, Saved};
use super::params::TrainParams;
use super::process::{self, Ended, ScriptCommand, Transcript};
use super::progress::{self, ProgressTracker};

/// Drives kohya-ss/sd-scripts as a subprocess for `train` steps of jobs on
/// the kohya engine.
#[derive(Debug, Clone)]
pub struct KohyaTrainer {
    options: KohyaOptions,
}

/// What a job needs from this machine, checked before anything is fetched.
#[derive(Debug)]
struct Plan<'a> {
    model: &'a KohyaModel,
    family: ModelFamily,
    script: PathBuf,
    params: TrainParams,
}

fn report(ctx: &StepContext, message: &str) {
    ctx.report(StepProgress {
        message: Some(message.to_owned()),
        ..StepProgress::default()
    });
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

impl KohyaTrainer {
    /// A trainer with `options`, checked.
    pub fn new(options: KohyaOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self { options })
    }

    pub fn options(&self) -> &KohyaOptions {
        &self.options
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
        let params = TrainParams::from_params(&step.params)?;
        let script = self
            .options
            .sd_scripts_dir
            .join(self.options.scripts.for_family(family));
        if !script.is_file() {
            return Err(Error::ScriptMissing {
                path: script,
                family,
            });
        }
        if family == ModelFamily::Flux {
            let missing: Vec<String> = ["ae", "clip_l", "t5xxl"]
                .into_iter()
                .filter(|k| {
                    !model.extra_config.contains_key(*k)
                        && !self.options.extra_config.contains_key(*k)
                })
                .map(str::to_owned)
                .collect();
            if !missing.is_empty() {
                return Err(Error::FluxFilesMissing {
                    model: id.to_owned(),
                    missing,
                });
            }
        }
        if !model.checkpoint.exists() {
            return Err(Error::CheckpointMissing {
                model: id.to_owned(),
                path: model.checkpoint.clone(),
            });
        }
        Ok(Plan {
            model,
            family,
            script,
            params,
        })
    }

    /// Write the configs; returns the run's paths and the training config's path.
    fn write_configs(
        &self,
        step: &StepAssignment,
        plan: &Plan<'_>,
        layout: &Layout,
        work: &Path,
        sampling: &SampleSettings,
    ) -> Result<(RunPaths, PathBuf, toml::Table)> {
        let prompts = config::sample_prompts(sampling);
        let paths = RunPaths {
            checkpoint: plan.model.checkpoint.clone(),
            image_dir: layout.image_dir.clone(),
            dataset_config: work.join("dataset_config.toml"),
            output_dir: work.join("output"),
            output_name: layout::safe_name(&step.naming.subject, "lora"),
            sample_prompts: (!prompts.is_empty()).then(|| work.join("sample_prompts.txt")),
        };
        std::fs::create_dir_all(&paths.output_dir)
            .map_err(|e| Error::io(format!("creating {}", paths.output_dir.display()), e))?;
        let class_tokens = plan
            .params
            .trigger_word
            .clone()
            .unwrap_or_else(|| step.naming.subject.clone());
        let dataset = config::dataset_config(&plan.params, &layout.image_dir, &class_tokens);
        write(&paths.dataset_config, &config::to_toml(&dataset)?)?;
        if let Some(p) = &paths.sample_prompts {
            write(p, &prompts)?;
        }
        let training =
            config::training_config(&plan.params, plan.family, &paths, &self.options, plan.model);
        let training_path = work.join("training_config.toml");
        write(&training_path, &config::to_toml(&training)?)?;
        Ok((paths, training_path, training))
    }

    fn command(&self, script: &Path, training_config: &Path) -> ScriptCommand {
        let o = &self.options;
        let mut args: Vec<OsString> = o.launcher[1..].iter().map(OsString::from).collect();
        args.push(script.into());
        args.push("--config_file".into());
        args.push(training_config.into());
        args.extend(o.extra_args.iter().map(OsString::from));
        ScriptCommand {
            program: o.launcher[0].clone(),
            args,
            cwd: o.sd_scripts_dir.clone(),
            env: o.env.clone(),
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

    /// One attempt, with typed errors.
    pub async fn train(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput> {
        let plan = self.plan(step)?;
        let work = ctx.workdir().to_path_buf();
        report(ctx, "fetching the dataset");
        let (root, files, labels) = crate::external::inputs::fetch_inputs(step, ctx, &work).await?;
        if ctx.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let sampling = crate::external::inputs::sample_settings(step, labels.as_ref());

        let (train_root, repeats, subject) = (
            work.join("train"),
            plan.params.num_repeats,
            step.naming.subject.clone(),
        );
        let layout = tokio::task::spawn_blocking(move || {
            layout::write_layout(
                &root,
                &files,
                labels.as_ref(),
                &train_root,
                repeats,
                &subject,
            )
        })
        .await
        .map_err(|e| Error::io("laying out the dataset", e))??;
        let (paths, training_path, training) =
            self.write_configs(step, &plan, &layout, &work, &sampling)?;
        if ctx.is_cancelled() {
            return Err(Error::Cancelled);
        }

        report(ctx, "starting sd-scripts");
        let cmd = self.command(&plan.script, &training_path);
        let mut tracker = ProgressTracker::new(plan.params.samples_per_step());
        let mut transcript = Transcript::default();
        let ended = process::run_script(&cmd, ctx.cancelled(), |line| {
            tracing::debug!(target: "loraflow::kohya", parent: ctx.span(), "{line}");
            let parsed = progress::parse_line(line);
            transcript.record(line, matches!(parsed, progress::Line::Step(_)));
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
                return Err(match transcript.out_of_memory.clone() {
                    Some(line) => Error::OutOfMemory {
                        line,
                        tail: transcript.tail(),
                    },
                    None => Error::ScriptFailed {
                        status: format!("exited unsuccessfully ({status})"),
                        exception: transcript.exception.clone(),
                        tail: transcript.tail(),
                    },
                });
            }
            Ended::Exited(_) => {}
        }

        ctx.report(tracker.current("storing the LoRA files"));
        let last_epoch = tracker.total_epochs().unwrap_or(plan.params.epochs);
        let loras = outputs::find_loras(&paths.output_dir, &paths.output_name, last_epoch)?;
        let samples = outputs::find_samples(&paths.output_dir, &paths.output_name)?;
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
                validation_loss: tracker.validation_loss(saved.epoch),
                ..Default::default()
            });
        }
        // The configs go beside the weights, so a run can be reproduced.
        let mut artifacts = Vec::new();
        for (path, name) in [
            (&training_path, "training_config.toml"),
            (&paths.dataset_config, "dataset_config.toml"),
        ] {
            artifacts.push(
                ctx.artifacts()
                    .put(path, name, ArtifactKind::Other, None)
                    .await?,
            );
        }

        let last = tracker.last_step();
        Ok(StepOutput {
            outputs: serde_json::json!({
                "engine": Engine::Kohya.as_str(),
                "script": plan.script.display().to_string(),
                "network_module": training.get("network_module").and_then(|v| v.as_str()),
                "images": layout.images,
                "captions_from_labels": layout.from_labels,
                "captions_from_sidecars": layout.from_sidecars,
                "uncaptioned": layout.uncaptioned,
                "skipped_files": layout.skipped,
                "unused_labels": layout.unused_labels,
                "epochs": last_epoch,
                "saved_epochs": loras.iter().map(|s| s.epoch).collect::<Vec<_>>(),
                "total_steps": last.map(|s| s.total),
                "final_loss": last.and_then(|s| s.avr_loss),
            }),
            artifacts,
            epochs,
        })
    }
}

#[async_trait]
impl Executor for KohyaTrainer {
    fn kinds(&self) -> Vec<StepKind> {
        vec![StepKind::TRAIN.into()]
    }

    fn engines(&self) -> Vec<Engine> {
        vec![Engine::Kohya]
    }

    fn base_models(&self) -> Vec<loraflow_core::executor::InstalledModel> {
        self.options
            .check_install()
            .map(|i| i.advertised())
            .unwrap_or_default()
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.train(step, ctx)
            .instrument(ctx.span().clone())
            .await
            .map_err(StepError::from)
    }
}
