//! The training configuration, serialisable and saved beside every artifact.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lr::LrSchedule;
use super::optim::AdamWSettings;
use super::step::Objective;
use crate::error::{Error, Result};
use crate::lora::NetworkConfig;
use crate::tensor_file::SaveDtype;

/// Where the base model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// diffusers `unet/config.json`.
    pub unet_config: PathBuf,
    /// diffusers `unet/diffusion_pytorch_model.safetensors` (fp32, fp16 or bf16). Without it the
    /// base is randomly initialised, which only makes sense for tests and benchmarks.
    #[serde(default)]
    pub unet_weights: Option<PathBuf>,
    /// kohya's `ss_base_model_version` (`sd_v1`, `sd_v2`); guessed from the UNet config when
    /// absent.
    #[serde(default)]
    pub base_model_version: Option<String>,
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
    /// Also write `<name>.peft.safetensors` in diffusers/PEFT format.
    #[serde(default)]
    pub peft: bool,
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
    /// ([`LatentDataset`](super::dataset::LatentDataset)).
    pub dataset: PathBuf,
    /// Output files.
    pub output: OutputConfig,
    /// Adapter placement, rank and alpha.
    #[serde(default)]
    pub network: NetworkConfig,
    /// AdamW settings (PyTorch defaults).
    #[serde(default)]
    pub optimizer: AdamWSettings,
    /// Learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Prediction target, offset noise, min-SNR.
    #[serde(default)]
    pub objective: Objective,
    /// Examples per micro-batch.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
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
    /// A configuration with defaults for everything but the paths.
    pub fn new(
        unet_config: impl Into<PathBuf>,
        dataset: impl Into<PathBuf>,
        output_dir: impl Into<PathBuf>,
        output_name: &str,
    ) -> Self {
        Self {
            device: default_device(),
            model: ModelConfig {
                unet_config: unet_config.into(),
                unet_weights: None,
                base_model_version: None,
            },
            dataset: dataset.into(),
            output: OutputConfig {
                dir: output_dir.into(),
                name: output_name.to_string(),
                save_every_n_epochs: None,
                dtype: SaveDtype::F32,
                peft: false,
            },
            network: NetworkConfig::default(),
            optimizer: AdamWSettings::default(),
            lr_schedule: LrSchedule::default(),
            objective: Objective::default(),
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
        if let Some(g) = self.objective.min_snr_gamma
            && !(g.is_finite() && g > 0.0)
        {
            return Err(Error::invalid(
                "objective.min_snr_gamma",
                g,
                "must be positive (typically 5)",
            ));
        }
        self.network.validate()?;
        self.optimizer.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TrainConfig {
        TrainConfig::new("unet/config.json", "data.safetensors", "out", "lora")
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
