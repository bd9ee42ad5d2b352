//! What a training engine has installed on this machine, checked when a
//! worker starts: an engine whose setup is broken (no scripts folder, no
//! interpreter, no model) is refused then, naming the path, instead of
//! failing every job sent to it. See `native::install` and `kohya::install`.

use std::path::PathBuf;

use loraflow_core::catalogue::Engine;
use loraflow_core::executor::InstalledModel;

/// The base models an engine can train here, and the ones it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub engine: Engine,
    /// Base model ids that are ready, sorted.
    pub models: Vec<String>,
    /// Configured models that are not ready, each with why (naming the
    /// path): log them; the engine serves the others.
    pub skipped: Vec<String>,
}

impl Installation {
    /// The models as a worker advertises them.
    pub fn advertised(&self) -> Vec<InstalledModel> {
        self.models
            .iter()
            .map(|m| InstalledModel::new(self.engine, m.as_str()))
            .collect()
    }
}

/// An engine that cannot run on this machine as configured. The worker logs
/// it, does not advertise the engine, and serves its other executors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {engine} engine is not available on this worker: {reason} ({}); {fix}", path.display())]
pub struct EngineRefused {
    pub engine: Engine,
    /// The path that is missing or wrong.
    pub path: PathBuf,
    pub reason: String,
    /// What to do about it.
    pub fix: String,
}

/// The fix for a missing native model: where its files go, and the command
/// that checks them.
pub fn native_install_hint(model: &str, folder: &std::path::Path) -> String {
    format!(
        "install it by putting its diffusers folder (model_index.json, unet/, vae/, text_encoder/, \
         tokenizer/, scheduler/) at {}, or a single-file checkpoint with its configs as \
         [models.{model}] path = \"...\", config_dir = \"...\" in the native settings; \
         `loraflow models check <path>` says whether a folder or file is complete and trainable, \
         then restart the worker",
        folder.display()
    )
}
