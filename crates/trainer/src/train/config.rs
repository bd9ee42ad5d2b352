//! The training configuration, serialisable and saved beside every artifact.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lr::LrSchedule;
use super::optim::AdamWSettings;
use super::step::ObjectiveConfig;
use super::validation::ValidationConfig;
use crate::clip::TE_TARGETS;
use crate::data::ImageDatasetConfig;
use crate::error::{Error, Result};
use crate::lora::NetworkConfig;
use crate::sample::scheduler::SamplerKind;
use crate::tensor_file::SaveDtype;

/// Where the base model comes from: a whole model (`path`), or a UNet alone (`unet_config`,
/// for training on pre-computed latents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A diffusers folder (`model_index.json`, `unet/` or FLUX.1's `transformer/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/`), an SD1.x or SDXL single-file checkpoint
    /// (`.safetensors`), or FLUX.1's transformer as one file under Black Forest Labs' names
    /// (`flux1-dev.safetensors`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// For a single-file `path`: a diffusers folder with the component configs and tokenizer
    /// (weights not needed). For a FLUX.1 transformer file, a diffusers FLUX.1 folder whose
    /// text encoders (`text_encoder/`, `text_encoder_2/`) and VAE (`vae/`) are loaded with it
    /// (its `transformer/` weights are not read), as the sample step reads it.
    #[serde(default)]
    pub config_dir: Option<PathBuf>,
    /// diffusers `unet/config.json`, when training a UNet alone.
    #[serde(default)]
    pub unet_config: Option<PathBuf>,
    /// diffusers `unet/diffusion_pytorch_model.safetensors` (fp32, fp16 or bf16). Without it the
    /// base is randomly initialised, which only makes sense for tests and benchmarks.
    #[serde(default)]
    pub unet_weights: Option<PathBuf>,
    /// kohya's `ss_base_model_version` (`sd_v1`, `sd_v2`); guessed from the UNet config when
    /// absent.
    #[serde(default)]
    pub base_model_version: Option<String>,
    /// Precision of the frozen UNet weights while training: `f32` (the default) or `bf16`,
    /// which halves the memory of the UNet's linear and convolution weights; adapters,
    /// gradients and optimiser state stay fp32 (see [`BaseWeights`]).
    #[serde(default)]
    pub base_weights: BaseWeights,
}

/// Precision in which the frozen base UNet is held during training (`model.base_weights`).
///
/// With `bf16` each linear and convolution of the UNet stores its weight and bias in bfloat16
/// and computes its base product in bfloat16 (its input rounded to bfloat16, its output
/// returned as fp32), as mixed-precision training does on GPUs; the LoRA factors, their
/// gradients and AdamW's state stay fp32, as do norms and embeddings. The text encoders and
/// the VAE keep fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseWeights {
    /// 32-bit floats: exact.
    #[default]
    F32,
    /// bfloat16: half the memory, about three significant digits.
    Bf16,
}

impl BaseWeights {
    /// The accepted spellings.
    pub const ALLOWED: &str = "\"f32\" or \"bf16\"";

    /// Parses `f32` or `bf16` (`fp32`, `float32`, `bfloat16` too), naming the field on error.
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(Error::invalid(
                "model.base_weights",
                format!("{value:?}"),
                format!(
                    "must be {} (fp16 is not offered: its range overflows in SD UNets)",
                    Self::ALLOWED
                ),
            )),
        }
    }

    /// The tensor precision to store the base in, `None` for fp32 (nothing to do).
    pub fn float_dtype(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(burn::tensor::FloatDType::BF16),
        }
    }
}

impl<'de> Deserialize<'de> for BaseWeights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// Where and how LoRA files are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Output directory (created if needed).
    pub dir: PathBuf,
    /// File stem: `<name>.safetensors` at the end, `<name>-<epoch:06>.safetensors` per epoch.
    pub name: String,
    /// Save every N epochs (besides the final file).
    #[serde(default)]
    pub save_every_n_epochs: Option<usize>,
    /// Element type of the saved factors.
    #[serde(default)]
    pub dtype: SaveDtype,
    /// Also write `<name>.peft.safetensors` in diffusers/PEFT format (UNet adapters under
    /// `unet.`, text-encoder adapters, when trained, under `text_encoder.`).
    #[serde(default)]
    pub peft: bool,
    /// Write the training state (adapters in f32, optimiser state, step and random streams)
    /// beside every saved LoRA, as `<file stem>.state/`, so a run can be resumed from it.
    #[serde(default = "yes")]
    pub save_state: bool,
}

fn yes() -> bool {
    true
}

/// Adapters on the text encoder as well (kohya's `lora_te_*` modules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderTraining {
    /// Its learning rate (sd-scripts' `text_encoder_lr`).
    pub learning_rate: f64,
    /// Module-path patterns; the attention projections and MLP by default.
    #[serde(default = "te_targets")]
    pub targets: Vec<String>,
}

fn te_targets() -> Vec<String> {
    TE_TARGETS.iter().map(|s| s.to_string()).collect()
}

impl TextEncoderTraining {
    /// Text-encoder adapters at `learning_rate` on kohya's default modules.
    pub fn new(learning_rate: f64) -> Self {
        Self {
            learning_rate,
            targets: te_targets(),
        }
    }
}

fn default_sample_steps() -> usize {
    20
}

fn default_guidance() -> f64 {
    7.5
}

/// Images rendered during training: on a `sample_now` request and every N epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// One image per prompt.
    pub prompts: Vec<String>,
    /// Negative prompt for all of them.
    #[serde(default)]
    pub negative_prompt: String,
    /// Inference steps.
    #[serde(default = "default_sample_steps")]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[serde(default = "default_guidance")]
    pub guidance_scale: f64,
    /// DDIM or Euler.
    #[serde(default)]
    pub sampler: SamplerKind,
    /// Seed of the first prompt (the next prompts use the following seeds).
    #[serde(default)]
    pub seed: u64,
    /// Image size (the width, when `height` is set); the training resolution (or the model's
    /// default) when absent.
    #[serde(default)]
    pub size: Option<usize>,
    /// Image height, when it differs from `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
    /// Also render every N epochs.
    #[serde(default)]
    pub every_n_epochs: Option<usize>,
}

fn default_device() -> String {
    "cpu".to_string()
}

fn one() -> usize {
    1
}

/// Everything a training run needs; serialised beside the outputs (seed included) so that a
/// run can be reproduced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `cpu`, `wgpu`, `vulkan` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// The base model.
    pub model: ModelConfig,
    /// Dataset file of pre-computed latents and text states
    /// ([`LatentDataset`](super::dataset::LatentDataset)); or use `images`.
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    /// A folder of images and captions (needs a whole model in `model.path`).
    #[serde(default)]
    pub images: Option<ImageDatasetConfig>,
    /// Output files.
    pub output: OutputConfig,
    /// Adapter placement, rank and alpha.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Adapters on the text encoder too.
    #[serde(default)]
    pub text_encoder: Option<TextEncoderTraining>,
    /// Text-encoder layer from the end the UNet is conditioned on (1 = last; kohya's count).
    #[serde(default = "one")]
    pub clip_skip: usize,
    /// Images rendered during training.
    #[serde(default)]
    pub sample: Option<SampleConfig>,
    /// Images held out of training, whose loss is measured at every saved LoRA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationConfig>,
    /// Continue from a training state (`<file stem>.state/`) written by an earlier run of the
    /// same configuration.
    #[serde(default)]
    pub resume: Option<PathBuf>,
    /// AdamW settings (PyTorch defaults).
    #[serde(default)]
    pub optimizer: AdamWSettings,
    /// Learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Prediction target (the model's by default), offset noise, min-SNR.
    #[serde(default)]
    pub objective: ObjectiveConfig,
    /// Examples per micro-batch.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Micro-batches per optimiser step. Their gradients are summed and divided by this
    /// number, also for the shorter last group of an epoch, as accelerate (and so sd-scripts
    /// and diffusers) does.
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// Passes over the dataset.
    #[serde(default = "one")]
    pub epochs: usize,
    /// Stop after this many optimiser steps (overrides `epochs` when reached first).
    #[serde(default)]
    pub max_train_steps: Option<usize>,
    /// Global gradient-norm clipping (sd-scripts' `max_grad_norm`, 1.0 there by default).
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    /// Recompute activations in the backward pass instead of keeping them (burn's balanced
    /// checkpointing): less memory, more time.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Seed of every random draw (adapter init, shuffling, noise, timesteps).
    #[serde(default)]
    pub seed: u64,
}

impl TrainConfig {
    /// A configuration for training a UNet alone on a latents file, with defaults for
    /// everything but the paths.
    pub fn new(
        unet_config: impl Into<PathBuf>,
        dataset: impl Into<PathBuf>,
        output_dir: impl Into<PathBuf>,
        output_name: &str,
    ) -> Self {
        let mut config = Self::for_images(
            PathBuf::new(),
            ImageDatasetConfig::new("", 512),
            output_dir,
            output_name,
        );
        config.model.path = None;
        config.model.unet_config = Some(unet_config.into());
        config.images = None;
        config.dataset = Some(dataset.into());
        config
    }

    /// A configuration for training on a folder of images with a whole model (a diffusers
    /// folder or single file), with defaults for everything else.
    pub fn for_images(
        model: impl Into<PathBuf>,
        images: ImageDatasetConfig,
        output_dir: impl Into<PathBuf>,
        output_name: &str,
    ) -> Self {
        Self {
            device: default_device(),
            model: ModelConfig {
                path: Some(model.into()),
                config_dir: None,
                unet_config: None,
                unet_weights: None,
                base_model_version: None,
                base_weights: BaseWeights::F32,
            },
            dataset: None,
            images: Some(images),
            output: OutputConfig {
                dir: output_dir.into(),
                name: output_name.to_string(),
                save_every_n_epochs: None,
                dtype: SaveDtype::F32,
                peft: false,
                save_state: true,
            },
            network: NetworkConfig::default(),
            text_encoder: None,
            clip_skip: 1,
            sample: None,
            validation: None,
            resume: None,
            optimizer: AdamWSettings::default(),
            lr_schedule: LrSchedule::default(),
            objective: ObjectiveConfig::default(),
            batch_size: 1,
            gradient_accumulation_steps: 1,
            epochs: 1,
            max_train_steps: None,
            max_grad_norm: None,
            gradient_checkpointing: false,
            seed: 0,
        }
    }

    /// Reads a JSON configuration.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        crate::device::parse_device(&self.device)?;
        for (field, v) in [
            ("batch_size", self.batch_size),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("epochs", self.epochs),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, v, "must be at least 1"));
            }
        }
        if self.max_train_steps == Some(0) {
            return Err(Error::invalid("max_train_steps", 0, "must be at least 1"));
        }
        if self.output.save_every_n_epochs == Some(0) {
            return Err(Error::invalid(
                "output.save_every_n_epochs",
                0,
                "must be at least 1",
            ));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return Err(Error::invalid(
                "max_grad_norm",
                n,
                "must be a positive number",
            ));
        }
        let name = &self.output.name;
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(Error::invalid(
                "output.name",
                format!("{name:?}"),
                "must be a plain file stem such as \"my_lora\"",
            ));
        }
        let offset = self.objective.noise_offset;
        if !(offset.is_finite() && offset >= 0.0) {
            return Err(Error::invalid(
                "objective.noise_offset",
                offset,
                "must be zero or positive (typically 0.05–0.1)",
            ));
        }
        if self.objective.override_model_prediction && self.objective.prediction.is_none() {
            return Err(Error::invalid(
                "objective.override_model_prediction",
                true,
                "overrides the model's prediction type with objective.prediction, which is unset",
            ));
        }
        if let Some(g) = self.objective.min_snr_gamma
            && !(g.is_finite() && g > 0.0)
        {
            return Err(Error::invalid(
                "objective.min_snr_gamma",
                g,
                "must be positive (typically 5)",
            ));
        }
        if let Some(flow) = &self.objective.flow {
            flow.validate()?;
        }
        self.network.validate()?;
        self.optimizer.validate()?;
        self.validate_sources()?;
        if let Some(te) = &self.text_encoder {
            AdamWSettings {
                learning_rate: te.learning_rate,
                ..self.optimizer
            }
            .validate()
            .map_err(|_| {
                Error::invalid(
                    "text_encoder.learning_rate",
                    te.learning_rate,
                    "expected a number in (0, 1], typically 5e-5",
                )
            })?;
            crate::lora::TargetPatterns::new(&te.targets)?;
        }
        if self.clip_skip == 0 {
            return Err(Error::invalid(
                "clip_skip",
                0,
                "counts from the last layer: 1 is the last",
            ));
        }
        if let Some(v) = &self.validation {
            v.validate()?;
            if v.dir.is_some() && self.images.is_none() {
                return Err(Error::invalid(
                    "validation.dir",
                    "set",
                    "a validation folder needs an image dataset (images), not a latents file",
                ));
            }
        }
        if let Some(s) = &self.sample {
            if self.model.path.is_none() {
                return Err(Error::invalid(
                    "sample",
                    "set",
                    "sampling needs the whole model in model.path",
                ));
            }
            if s.steps == 0 {
                return Err(Error::invalid("sample.steps", 0, "must be at least 1"));
            }
            if s.every_n_epochs == Some(0) {
                return Err(Error::invalid(
                    "sample.every_n_epochs",
                    0,
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// Exactly one base-model source and one dataset, and the pairs that work together.
    fn validate_sources(&self) -> Result<()> {
        let m = &self.model;
        match (&m.path, &m.unet_config) {
            (Some(_), Some(c)) => {
                return Err(Error::invalid(
                    "model.unet_config",
                    c.display(),
                    "give either model.path (a whole model) or model.unet_config, not both",
                ));
            }
            (None, None) => {
                return Err(Error::invalid(
                    "model",
                    "{}",
                    "give model.path (a diffusers folder or single-file checkpoint)",
                ));
            }
            _ => {}
        }
        match (&self.dataset, &self.images) {
            (Some(d), Some(_)) => Err(Error::invalid(
                "dataset",
                d.display(),
                "give either dataset (a latents file) or images (a folder), not both",
            )),
            (None, None) => Err(Error::invalid(
                "images",
                "none",
                "give images (a folder of images and captions) or dataset (a latents file)",
            )),
            (None, Some(images)) => {
                if m.path.is_none() {
                    return Err(Error::invalid(
                        "model.path",
                        "none",
                        "training on images needs the whole model (VAE and text encoder)",
                    ));
                }
                images.validate()
            }
            (Some(_), None) => {
                if self.text_encoder.is_some() {
                    return Err(Error::invalid(
                        "text_encoder",
                        "set",
                        "a latents file has fixed text states; train the text encoder on images",
                    ));
                }
                Ok(())
            }
        }
    }

    /// A digest of the settings that decide the trained weights, for checking that a resumed
    /// run continues the same training (device, output and resume path are left out).
    pub fn training_digest(&self) -> String {
        use sha2::Digest;
        // Folders may differ between attempts (a retried step gets a new scratch folder, a
        // model store may be mounted elsewhere): only file names count; the dataset's content
        // is checked separately.
        let name_only = |p: &mut PathBuf| {
            *p = p.file_name().map(PathBuf::from).unwrap_or_default();
        };
        let mut c = self.clone();
        c.device = String::new();
        c.resume = None;
        c.output.dir = PathBuf::new();
        c.output.save_every_n_epochs = None;
        c.sample = None;
        c.model.config_dir = None;
        if let Some(v) = &mut c.validation {
            // How held-out images are scored does not change the weights; which are held out does.
            v.timesteps = 0;
            if let Some(dir) = &mut v.dir {
                name_only(dir);
            }
        }
        if let Some(p) = &mut c.model.path {
            name_only(p);
        }
        if let Some(p) = &mut c.dataset {
            name_only(p);
        }
        if let Some(images) = &mut c.images {
            images.cache_dir = None;
            images.dir = PathBuf::new();
        }
        hex::encode(sha2::Sha256::digest(
            serde_json::to_vec(&c).expect("the config serialises"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TrainConfig {
        TrainConfig::new("unet/config.json", "data.safetensors", "out", "lora")
    }

    #[test]
    fn sources_must_be_one_of_each() {
        let mut c = base();
        c.images = Some(ImageDatasetConfig::new("imgs", 64));
        assert!(c.validate().unwrap_err().to_string().contains("not both"));
        c.dataset = None;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`model.path`"), "{err}");
        let c = TrainConfig::for_images("model", ImageDatasetConfig::new("imgs", 64), "o", "n");
        c.validate().unwrap();
        let mut c2 = c.clone();
        c2.device = "cpu ".into();
        c2.resume = Some("x".into());
        c2.images.as_mut().unwrap().dir = "/elsewhere/imgs".into();
        assert_eq!(c.training_digest(), c2.training_digest());
        c2.seed = 1;
        assert_ne!(c.training_digest(), c2.training_digest());
    }

    #[test]
    fn defaults_validate_and_round_trip_through_json() {
        let c = base();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_values_are_named_and_quoted() {
        let mut c = base();
        c.optimizer.learning_rate = 5.0;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("`optimizer.learning_rate`") && err.contains("5"),
            "{err}"
        );

        let mut c = base();
        c.network.rank = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("`network.rank`")
        );

        let mut c = base();
        c.output.name = "../x".into();
        assert!(c.validate().unwrap_err().to_string().contains("\"../x\""));

        let mut c = base();
        c.device = "tpu".into();
        assert!(c.validate().unwrap_err().to_string().contains("tpu"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<TrainConfig>(
            r#"{"model": {"unet_config": "c"}, "dataset": "d",
                "output": {"dir": "o", "name": "n"}, "learning_rate": 1e-4}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("learning_rate"), "{err}");
    }
}
