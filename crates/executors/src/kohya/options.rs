//! What an operator configures to run sd-scripts on a machine: where the
//! checkout is, how scripts are launched, which checkpoint each base model
//! trains from, and limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loraflow_core::catalogue::ModelFamily;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Training-config keys loraflow must own: it reads the outputs back from
/// them, so settings may not override them.
pub const RESERVED_KEYS: [&str; 6] = [
    "output_dir",
    "output_name",
    "save_model_as",
    "dataset_config",
    "config_file",
    "max_train_epochs",
];

/// The settings of a [`KohyaTrainer`](super::KohyaTrainer).
///
/// ```toml
/// sd_scripts_dir = "/opt/sd-scripts"
/// launcher = ["/opt/sd-scripts/venv/bin/accelerate", "launch", "--num_cpu_threads_per_process", "1"]
/// timeout = "12h"
/// extra_config = { sdpa = true, gradient_checkpointing = true }
///
/// [models.sd15]
/// checkpoint = "/models/v1-5-pruned-emaonly.safetensors"
///
/// [models.flux-dev]
/// checkpoint = "/models/flux1-dev.safetensors"
/// family = "flux"
/// extra_config = { ae = "/models/ae.safetensors", clip_l = "/models/clip_l.safetensors", t5xxl = "/models/t5xxl_fp16.safetensors" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KohyaOptions {
    /// The sd-scripts checkout; scripts are found in it and run from it.
    pub sd_scripts_dir: PathBuf,
    /// The program (and its leading arguments) that runs a script:
    /// `["python"]`, a virtualenv's python, or `["accelerate", "launch", ...]`.
    #[serde(default = "default_launcher")]
    pub launcher: Vec<String>,
    #[serde(default)]
    pub scripts: Scripts,
    /// Base model id → the checkpoint it trains from.
    pub models: BTreeMap<String, KohyaModel>,
    /// Arguments appended to every command line, after `--config_file`.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Training-config keys added last, so they win over generated ones
    /// (`sdpa`, `gradient_checkpointing`, `max_data_loader_n_workers`, ...).
    #[serde(default)]
    pub extra_config: toml::Table,
    /// Environment variables for the script (`CUDA_VISIBLE_DEVICES`, ...).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub mixed_precision: MixedPrecision,
    /// Cache VAE latents before training: faster, and less GPU memory.
    #[serde(default = "yes")]
    pub cache_latents: bool,
    /// Stop an attempt that runs longer than this.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// After asking sd-scripts to stop (SIGTERM), how long to wait before
    /// killing it.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
}

fn default_launcher() -> Vec<String> {
    vec!["python".to_owned()]
}

fn yes() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// The training script for each model family, relative to the checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scripts {
    pub sd15: PathBuf,
    pub sd2: PathBuf,
    pub sdxl: PathBuf,
    pub flux: PathBuf,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            sd15: "train_network.py".into(),
            sd2: "train_network.py".into(),
            sdxl: "sdxl_train_network.py".into(),
            flux: "flux_train_network.py".into(),
        }
    }
}

impl Scripts {
    pub fn for_family(&self, family: ModelFamily) -> &Path {
        match family {
            ModelFamily::Sd15 => &self.sd15,
            ModelFamily::Sd2 => &self.sd2,
            ModelFamily::Sdxl => &self.sdxl,
            ModelFamily::Flux => &self.flux,
        }
    }
}

/// One base model as this machine has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KohyaModel {
    /// The local checkpoint (`pretrained_model_name_or_path`).
    pub checkpoint: PathBuf,
    /// Used when the job does not carry the catalogue's family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ModelFamily>,
    /// Training-config keys this model needs (FLUX.1: `ae`, `clip_l`,
    /// `t5xxl`), added before the global `extra_config`.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub extra_config: toml::Table,
}

/// sd-scripts' `--mixed_precision`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    No,
    Fp16,
    #[default]
    Bf16,
}

impl MixedPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
        }
    }
}

impl KohyaOptions {
    /// Settings for the checkout at `sd_scripts_dir` with defaults elsewhere
    /// and no models yet.
    pub fn new(sd_scripts_dir: impl Into<PathBuf>) -> Self {
        Self {
            sd_scripts_dir: sd_scripts_dir.into(),
            launcher: default_launcher(),
            scripts: Scripts::default(),
            models: BTreeMap::new(),
            extra_args: Vec::new(),
            extra_config: toml::Table::new(),
            env: BTreeMap::new(),
            mixed_precision: MixedPrecision::default(),
            cache_latents: true,
            timeout: default_timeout(),
            stop_grace: default_grace(),
        }
    }

    /// Add a base model and its checkpoint.
    pub fn with_model(mut self, id: impl Into<String>, checkpoint: impl Into<PathBuf>) -> Self {
        self.models.insert(
            id.into(),
            KohyaModel {
                checkpoint: checkpoint.into(),
                family: None,
                extra_config: toml::Table::new(),
            },
        );
        self
    }

    /// Check the settings themselves; every problem is listed.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.launcher.first().is_none_or(|p| p.trim().is_empty()) {
            problems.push(
                "launcher is empty; use [\"python\"] or [\"accelerate\", \"launch\"]".to_owned(),
            );
        }
        if self.timeout.is_zero() {
            problems.push("timeout 0s would stop every run at once".to_owned());
        }
        let reserved = |table: &toml::Table, place: &str, problems: &mut Vec<String>| {
            for key in RESERVED_KEYS.iter().filter(|k| table.contains_key(**k)) {
                problems.push(format!(
                    "{place} sets {key}, which loraflow sets itself; remove it"
                ));
            }
        };
        reserved(&self.extra_config, "extra_config", &mut problems);
        for (id, model) in &self.models {
            reserved(
                &model.extra_config,
                &format!("models.{id}.extra_config"),
                &mut problems,
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidSettings(problems.join("; ")))
        }
    }
}
