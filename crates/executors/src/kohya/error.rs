//! Why a kohya training attempt could not run or did not finish, and the
//! [`StepError`] each reason becomes.

use std::path::PathBuf;
use std::time::Duration;

use loraflow_core::catalogue::ModelFamily;
use loraflow_core::executor::ArtifactError;
use loraflow_core::job::{StepError, StepErrorKind};

/// A kohya training attempt that failed. Each variant says how a caller
/// should handle it; [`From<Error> for StepError`](StepError) carries that
/// into the step's error kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The settings contradict themselves. Fix the executor's configuration;
    /// raised when the trainer is built, never mid-job.
    #[error("invalid kohya settings: {0}")]
    InvalidSettings(String),

    /// No checkpoint is configured for the job's base model. The job cannot
    /// run here as it is; `InvalidInput`.
    #[error(
        "base model {model:?} has no checkpoint in the kohya settings; configured base models: {}",
        if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
    )]
    UnknownBaseModel {
        model: String,
        configured: Vec<String>,
    },

    /// Neither the job nor the settings say which family the model is, so the
    /// script cannot be chosen; `InvalidInput`.
    #[error(
        "base model {model:?} has no model family: the job names none; set `family` under models.{model} in the kohya settings"
    )]
    UnknownFamily { model: String },

    /// The sd-scripts script for the family is not there. An operator must
    /// fix the installation; `Unavailable`, retryable elsewhere.
    #[error(
        "the sd-scripts script {} for {family} models does not exist; check sd_scripts_dir and scripts.{family}",
        path.display()
    )]
    ScriptMissing { path: PathBuf, family: ModelFamily },

    /// A FLUX.1 model without the separate files flux_train_network.py
    /// loads (`ae`, `clip_l`, `t5xxl`); `Unavailable`, retryable elsewhere.
    #[error(
        "base model {model:?} is a FLUX.1 model but the kohya settings give no {}; flux_train_network.py needs them: set them in models.{model}.extra_config",
        missing.join(", ")
    )]
    FluxFilesMissing { model: String, missing: Vec<String> },

    /// The configured checkpoint file is not there; `Unavailable`.
    #[error(
        "the checkpoint {} configured for base model {model:?} does not exist",
        path.display()
    )]
    CheckpointMissing { model: String, path: PathBuf },

    /// The launcher (python, accelerate) could not be started; `Unavailable`.
    #[error("could not start {program:?} to run sd-scripts: {message}")]
    LaunchFailed { program: String, message: String },

    /// A job parameter is missing or has a value sd-scripts cannot take;
    /// `InvalidInput`.
    #[error("parameter {name} {problem}")]
    InvalidParam { name: String, problem: String },

    /// The dataset cannot be laid out for sd-scripts (no images, two files
    /// that would get one name); `InvalidInput`.
    #[error("dataset: {0}")]
    Dataset(String),

    /// The dataset or an input artifact could not be read. Missing or
    /// corrupted inputs are `InvalidInput`; storage I/O is `Unavailable`.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),

    /// Local file work in the attempt's scratch directory failed; `Internal`.
    #[error("{context}: {message}")]
    Io { context: String, message: String },

    /// CUDA ran out of memory. Retryable; the scheduler may lower the batch
    /// size or resolution first. `OutOfMemory`.
    #[error("sd-scripts ran out of GPU memory: {line}\nlast lines of output:\n{tail}")]
    OutOfMemory { line: String, tail: String },

    /// sd-scripts exited unsuccessfully for another reason; `Internal`.
    #[error("sd-scripts {status}{}\nlast lines of output:\n{tail}", exception.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    ScriptFailed {
        status: String,
        /// The last Python exception line printed, if any.
        exception: Option<String>,
        tail: String,
    },

    /// sd-scripts exited successfully without writing the final LoRA; `Internal`.
    #[error("sd-scripts finished but wrote no {expected} in {}; files there: {}", dir.display(), if found.is_empty() { "none".to_owned() } else { found.join(", ") })]
    NoOutput {
        expected: String,
        dir: PathBuf,
        found: Vec<String>,
    },

    /// The attempt ran past the configured timeout and was stopped; `Internal`.
    #[error(
        "sd-scripts ran past the timeout of {}s and was stopped; raise `timeout` in the kohya settings or train fewer epochs",
        after.as_secs()
    )]
    TimedOut { after: Duration },

    /// The step was cancelled and sd-scripts was stopped; `Cancelled`.
    #[error("the step was cancelled; sd-scripts was stopped")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Io {
            context: context.into(),
            message: e.to_string(),
        }
    }

    pub(crate) fn param(name: &str, problem: impl Into<String>) -> Self {
        Self::InvalidParam {
            name: name.to_owned(),
            problem: problem.into(),
        }
    }

    /// The step error kind this failure maps to.
    pub fn kind(&self) -> StepErrorKind {
        match self {
            Self::UnknownBaseModel { .. }
            | Self::UnknownFamily { .. }
            | Self::InvalidParam { .. }
            | Self::Dataset(_) => StepErrorKind::InvalidInput,
            Self::ScriptMissing { .. }
            | Self::CheckpointMissing { .. }
            | Self::FluxFilesMissing { .. }
            | Self::LaunchFailed { .. } => StepErrorKind::Unavailable,
            Self::Artifact(ArtifactError::Io { .. }) => StepErrorKind::Unavailable,
            Self::Artifact(_) => StepErrorKind::InvalidInput,
            Self::OutOfMemory { .. } => StepErrorKind::OutOfMemory,
            Self::Cancelled => StepErrorKind::Cancelled,
            Self::InvalidSettings(_)
            | Self::Io { .. }
            | Self::ScriptFailed { .. }
            | Self::NoOutput { .. }
            | Self::TimedOut { .. } => StepErrorKind::Internal,
        }
    }
}

impl From<crate::external::Error> for Error {
    fn from(e: crate::external::Error) -> Self {
        use crate::external::Error as E;
        match e {
            E::Dataset(m) => Self::Dataset(m),
            E::Io { context, message } => Self::Io { context, message },
            E::LaunchFailed { program, message } => Self::LaunchFailed { program, message },
            E::InvalidParam { name, problem } => Self::InvalidParam { name, problem },
            E::Artifact(e) => Self::Artifact(e),
        }
    }
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        StepError {
            kind,
            message: e.to_string(),
            retryable: matches!(
                kind,
                StepErrorKind::OutOfMemory | StepErrorKind::Unavailable | StepErrorKind::Cancelled
            ),
        }
    }
}
