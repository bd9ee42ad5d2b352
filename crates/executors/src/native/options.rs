//! What an operator configures for the native engine: where each base model is, the device,
//! an optional persistent work folder, and sampling defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loraflow_trainer::sample::scheduler::SamplerKind;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Where a base model is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeModel {
    /// A diffusers folder, an SD1.x or SDXL single-file checkpoint, or a FLUX.1 transformer
    /// file under BFL's names (`flux1-dev.safetensors`); relative paths are resolved against
    /// [`NativeOptions::models_root`].
    pub path: PathBuf,
    /// For a single-file checkpoint: a diffusers folder with its configs and tokenizer (for a
    /// FLUX.1 transformer file, a FLUX.1 folder whose text encoders and VAE go with it).
    #[serde(default)]
    pub config_dir: Option<PathBuf>,
}

/// How samples are rendered (the job gives the prompts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleDefaults {
    /// Inference steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance_scale: f64,
    /// DDIM or Euler.
    pub sampler: SamplerKind,
    /// Negative prompt.
    pub negative_prompt: String,
    /// LoRA strength.
    pub lora_strength: f64,
    /// Image size; the model's default (UNet sample size × VAE factor) when absent.
    pub size: Option<usize>,
    /// Seed of the first prompt (the next prompts use the following seeds); the job's `seed`
    /// parameter wins when set.
    pub seed: u64,
}

impl Default for SampleDefaults {
    fn default() -> Self {
        Self {
            steps: 20,
            guidance_scale: 7.5,
            sampler: SamplerKind::Ddim,
            negative_prompt: String::new(),
            lora_strength: 1.0,
            size: None,
            seed: 42,
        }
    }
}

/// The settings of [`NativeTrainer`](super::NativeTrainer) and
/// [`NativeSampler`](super::NativeSampler).
///
/// ```toml
/// models_root = "/srv/loraflow/models"    # holds tiny-sd/, sd15/, ...
/// device = "cpu"                           # or "wgpu", "vulkan", "cuda:0"
/// work_dir = "/var/lib/loraflow/native"    # caches and resumable states across attempts
///
/// [models.sd15]
/// path = "v1-5-pruned-emaonly.safetensors"
/// config_dir = "sd15-configs"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeOptions {
    /// Base models not listed in `models` are looked up as `<models_root>/<id>`.
    pub models_root: PathBuf,
    /// Explicit locations by base model id.
    #[serde(default)]
    pub models: BTreeMap<String, NativeModel>,
    /// The burn device (`cpu`, `wgpu`, `vulkan`, `cuda:N`).
    #[serde(default = "default_device")]
    pub device: String,
    /// A folder that outlives attempts: latents are cached there, and a retried attempt of
    /// the same step resumes from the last saved training state. Without it, every attempt
    /// starts afresh in its scratch folder.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// Sampling settings.
    #[serde(default)]
    pub sample: SampleDefaults,
}

fn default_device() -> String {
    "cpu".to_string()
}

/// The first `assets/` folder with a `tiny-sd/` model, from the current folder upwards.
fn find_assets() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|dir| dir.join("assets"))
        .find(|a| a.join("tiny-sd").join("model_index.json").is_file())
}

impl Default for NativeOptions {
    /// Models under the first `assets/` folder holding `tiny-sd/` found from the current
    /// folder upwards (a checkout's `assets/`), else `./assets`; the CPU device.
    fn default() -> Self {
        Self::new(find_assets().unwrap_or_else(|| PathBuf::from("assets")))
    }
}

impl NativeOptions {
    /// Models under `models_root`, the CPU device.
    pub fn new(models_root: impl Into<PathBuf>) -> Self {
        Self {
            models_root: models_root.into(),
            models: BTreeMap::new(),
            device: default_device(),
            work_dir: None,
            sample: SampleDefaults::default(),
        }
    }

    /// Adds or replaces a base model's location.
    pub fn with_model(mut self, id: &str, path: impl Into<PathBuf>) -> Self {
        self.models.insert(
            id.to_string(),
            NativeModel {
                path: path.into(),
                config_dir: None,
            },
        );
        self
    }

    /// Sets the device.
    pub fn with_device(mut self, device: &str) -> Self {
        self.device = device.to_string();
        self
    }

    /// Checks the device (this build must have its backend) and the sampling settings.
    pub fn validate(&self) -> Result<()> {
        loraflow_trainer::device::parse_device(&self.device).map_err(|e| Error::Options {
            field: "device".into(),
            reason: e.to_string(),
        })?;
        let s = &self.sample;
        if s.steps == 0 {
            return Err(Error::Options {
                field: "sample.steps".into(),
                reason: "0 would render nothing; use 10 to 30".into(),
            });
        }
        if !(s.guidance_scale.is_finite() && s.guidance_scale >= 0.0) {
            return Err(Error::Options {
                field: "sample.guidance_scale".into(),
                reason: format!("{} must be a number of 0 or more", s.guidance_scale),
            });
        }
        Ok(())
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.models_root.join(p)
        }
    }

    /// The base model a step trains or samples: a model the job's tenant
    /// registered, fetched from its URI into the attempt's work folder (a
    /// diffusers folder, fetched like a dataset), or an installed one
    /// ([`model`](Self::model)). `(path, config_dir)`.
    pub async fn step_model(
        &self,
        step: &loraflow_core::executor::StepAssignment,
        ctx: &loraflow_core::executor::StepContext,
    ) -> Result<(PathBuf, Option<PathBuf>)> {
        let Some(uri) = &step.base_model_uri else {
            return self.model(step.base_model.as_str());
        };
        let dest = ctx.workdir().join("base-model");
        ctx.report(loraflow_core::job::StepProgress {
            message: Some(format!(
                "fetching base model {} from {uri}",
                step.base_model
            )),
            ..Default::default()
        });
        ctx.artifacts().fetch_dir(uri, &dest).await?;
        if !dest.join("model_index.json").is_file() {
            return Err(Error::param(
                "base_model",
                format!(
                    "registered model {} at {uri} has no model_index.json: the native engine \
                     trains a diffusers folder",
                    step.base_model
                ),
            ));
        }
        Ok((dest, None))
    }

    /// The model of a base model id: `(path, config_dir)`.
    pub fn model(&self, id: &str) -> Result<(PathBuf, Option<PathBuf>)> {
        let (path, config_dir) = match self.models.get(id) {
            Some(m) => (
                self.resolve(&m.path),
                m.config_dir.as_deref().map(|c| self.resolve(c)),
            ),
            None => (self.models_root.join(id), None),
        };
        if !path.exists() {
            return Err(Error::UnknownModel {
                model: id.to_string(),
                looked_at: path,
            });
        }
        Ok((path, config_dir))
    }
}
