//! What an operator configures to run ai-toolkit on a machine: where the
//! checkout is, which python runs it, where each base model is, and limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loraflow_core::catalogue::ModelFamily;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Keys of `config.process[0]` loraflow must own: it plans the run and reads
/// the outputs back from them, so `extra` may not set them (section.key).
pub const RESERVED_KEYS: [&str; 10] = [
    "type",
    "training_folder",
    "datasets",
    "trigger_word",
    "train.steps",
    "save.save_every",
    "save.max_step_saves_to_keep",
    "save.save_format",
    "sample.sample_every",
    "network.type",
];

/// The settings of an [`AiToolkitTrainer`](super::AiToolkitTrainer).
///
/// ```toml
/// ai_toolkit_dir = "/opt/ai-toolkit"
/// python = "/opt/ai-toolkit/venv/bin/python"
/// models_dir = "/models"
/// device = "cuda:0"
/// timeout = "12h"
/// env = { HF_HOME = "/models/huggingface" }
///
/// [models.flux-dev]
/// name_or_path = "FLUX.1-dev"          # a folder under models_dir, a path, or a hub id
/// family = "flux"
/// quantize = true
///
/// [models.sdxl]
/// name_or_path = "/models/sd_xl_base_1.0.safetensors"
///
/// [extra.train]
/// ema_config = { use_ema = true, ema_decay = 0.99 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiToolkitOptions {
    /// The ai-toolkit checkout: `run.py` is run in it.
    pub ai_toolkit_dir: PathBuf,
    /// The python that runs `run.py` (the checkout's virtualenv, usually).
    #[serde(default = "default_python")]
    pub python: String,
    /// Where base models are: a model's relative `name_or_path` is looked
    /// up here first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    /// Base model id → how ai-toolkit loads it.
    #[serde(default)]
    pub models: BTreeMap<String, AiToolkitModel>,
    /// `config.process[0].device`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `train.dtype`: the precision of training.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// `save.dtype`: the precision of the saved LoRA files.
    #[serde(default = "default_save_dtype")]
    pub save_dtype: String,
    /// Keys merged into the sections of `config.process[0]` last
    /// (`[extra.train]`, `[extra.model]`, `[extra.sample]`, ...), so they win
    /// over generated ones, except [`RESERVED_KEYS`].
    #[serde(default)]
    pub extra: toml::Table,
    /// Environment variables for `run.py` (`CUDA_VISIBLE_DEVICES`, `HF_HOME`, ...).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Stop an attempt that runs longer than this.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// After asking ai-toolkit to stop (SIGTERM), how long to wait before
    /// killing it.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
}

/// One base model as this machine has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiToolkitModel {
    /// `model.name_or_path`: a folder or file (absolute, or relative to
    /// `models_dir`), or a Hugging Face id ai-toolkit downloads.
    pub name_or_path: String,
    /// Used when the job does not carry the catalogue's family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ModelFamily>,
    /// `model.quantize` (8-bit transformer); default: on for FLUX.1, which
    /// needs it on a 24 GB GPU, off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<bool>,
    /// Keys added to the `model` section for this model (`low_vram`, ...).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub extra: toml::Table,
}

fn default_python() -> String {
    "python".to_owned()
}

fn default_device() -> String {
    "cuda:0".to_owned()
}

fn default_dtype() -> String {
    "bf16".to_owned()
}

fn default_save_dtype() -> String {
    "float16".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// Where a model's `name_or_path` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local file or folder (it may not exist).
    Local(PathBuf),
    /// A hub id ai-toolkit resolves itself (`black-forest-labs/FLUX.1-dev`).
    Hub(String),
}

impl AiToolkitOptions {
    /// Settings for the checkout at `ai_toolkit_dir` with defaults elsewhere
    /// and no models yet.
    pub fn new(ai_toolkit_dir: impl Into<PathBuf>) -> Self {
        Self {
            ai_toolkit_dir: ai_toolkit_dir.into(),
            python: default_python(),
            models_dir: None,
            models: BTreeMap::new(),
            device: default_device(),
            dtype: default_dtype(),
            save_dtype: default_save_dtype(),
            extra: toml::Table::new(),
            env: BTreeMap::new(),
            timeout: default_timeout(),
            stop_grace: default_grace(),
        }
    }

    /// Add a base model.
    pub fn with_model(
        mut self,
        id: impl Into<String>,
        name_or_path: impl Into<String>,
        family: ModelFamily,
    ) -> Self {
        self.models.insert(
            id.into(),
            AiToolkitModel {
                name_or_path: name_or_path.into(),
                family: Some(family),
                quantize: None,
                extra: toml::Table::new(),
            },
        );
        self
    }

    /// `run.py` in the checkout.
    pub fn run_py(&self) -> PathBuf {
        self.ai_toolkit_dir.join("run.py")
    }

    /// Where `model` is: an absolute path or one starting with `.` is local;
    /// a relative name that exists under `models_dir` is local there; a name
    /// with no such folder is a hub id when it looks like one (`org/name`),
    /// otherwise a missing local model under `models_dir`.
    pub fn source(&self, model: &AiToolkitModel) -> ModelSource {
        let name = model.name_or_path.trim();
        let path = Path::new(name);
        if path.is_absolute() || name.starts_with('.') {
            return ModelSource::Local(path.to_path_buf());
        }
        if let Some(dir) = &self.models_dir {
            let local = dir.join(path);
            if local.exists() || name.split('/').count() != 2 {
                return ModelSource::Local(local);
            }
        }
        ModelSource::Hub(name.to_owned())
    }

    /// Check the settings themselves; every problem is listed.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.python.trim().is_empty() {
            problems
                .push("python is empty; use \"python\" or the checkout's venv/bin/python".into());
        }
        if self.timeout.is_zero() {
            problems.push("timeout 0s would stop every run at once".to_owned());
        }
        let reserved = |table: &toml::Table, place: &str, section: Option<&str>| {
            let mut found = Vec::new();
            for (key, value) in table {
                let full = match section {
                    Some(s) => format!("{s}.{key}"),
                    None => key.clone(),
                };
                if RESERVED_KEYS.contains(&full.as_str()) {
                    found.push(format!(
                        "{place} sets {full}, which loraflow sets itself; remove it"
                    ));
                }
                if section.is_none() && !value.is_table() {
                    found.push(format!(
                        "{place}.{key} is not a table; extra keys go in a section such as [extra.train]"
                    ));
                }
                if section.is_none()
                    && let Some(inner) = value.as_table()
                {
                    for k in inner.keys() {
                        let full = format!("{key}.{k}");
                        if RESERVED_KEYS.contains(&full.as_str()) {
                            found.push(format!(
                                "{place} sets {full}, which loraflow sets itself; remove it"
                            ));
                        }
                    }
                }
            }
            found
        };
        problems.extend(reserved(&self.extra, "extra", None));
        for (id, model) in &self.models {
            if model.name_or_path.trim().is_empty() {
                problems.push(format!("models.{id}.name_or_path is empty"));
            }
            problems.extend(reserved(
                &model.extra,
                &format!("models.{id}.extra"),
                Some("model"),
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidSettings(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_found_under_models_dir_or_on_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("FLUX.1-dev")).unwrap();
        let mut o = AiToolkitOptions::new("/opt/ai-toolkit");
        o.models_dir = Some(dir.path().to_path_buf());
        let m = |name: &str| AiToolkitModel {
            name_or_path: name.into(),
            family: None,
            quantize: None,
            extra: toml::Table::new(),
        };
        assert_eq!(
            o.source(&m("FLUX.1-dev")),
            ModelSource::Local(dir.path().join("FLUX.1-dev"))
        );
        assert_eq!(
            o.source(&m("black-forest-labs/FLUX.1-dev")),
            ModelSource::Hub("black-forest-labs/FLUX.1-dev".into())
        );
        assert_eq!(
            o.source(&m("sdxl.safetensors")),
            ModelSource::Local(dir.path().join("sdxl.safetensors"))
        );
        assert_eq!(
            o.source(&m("/m/x.safetensors")),
            ModelSource::Local("/m/x.safetensors".into())
        );
    }

    #[test]
    fn reserved_keys_and_loose_extras_are_refused() {
        let o: AiToolkitOptions = toml::from_str(
            r#"
            ai_toolkit_dir = "/opt/ai-toolkit"
            extra = { train = { steps = 5, ema_config = { use_ema = true } }, low_vram = true }
            [models.sdxl]
            name_or_path = "/m/sdxl.safetensors"
            extra = { quantize = false }
            "#,
        )
        .unwrap();
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("extra sets train.steps"), "{err}");
        assert!(err.contains("extra.low_vram is not a table"), "{err}");
        assert!(!err.contains("models.sdxl"), "{err}");
    }
}
