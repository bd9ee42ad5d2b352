//! Why an ai-toolkit training attempt could not run or did not finish, and
//! the [`StepError`] each reason becomes.

use std::path::PathBuf;
use std::time::Duration;

use loraflow_core::executor::ArtifactError;
use loraflow_core::job::{StepError, StepErrorKind};

/// An ai-toolkit training attempt that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The settings contradict themselves; raised when the trainer is built.
    #[error("invalid ai-toolkit settings: {0}")]
    InvalidSettings(String),

    /// The installation is not usable (startup check); every problem listed.
    #[error("the ai-toolkit installation is not usable: {}", problems.join("; "))]
    Installation { problems: Vec<String> },

    /// No model is configured for the job's base model; `InvalidInput`.
    #[error(
        "base model {model:?} is not configured for ai-toolkit; configured base models: {}; add it under [models.{model}] in the ai-toolkit settings",
        if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
    )]
    UnknownBaseModel {
        model: String,
        configured: Vec<String>,
    },

    /// Neither the job nor the settings say which family the model is;
    /// `InvalidInput`.
    #[error(
        "base model {model:?} has no model family: the job names none; set `family` under models.{model} in the ai-toolkit settings"
    )]
    UnknownFamily { model: String },

    /// ai-toolkit trains this family with a LoRA config loraflow does not
    /// generate (only sdxl and flux); `InvalidInput`.
    #[error("the ai-toolkit engine trains sdxl and flux models; base model {model:?} is {family}")]
    UnsupportedFamily { model: String, family: String },

    /// `run.py` is not in the configured checkout; `Unavailable`.
    #[error("{} does not exist; check ai_toolkit_dir in the ai-toolkit settings", path.display())]
    RunPyMissing { path: PathBuf },

    /// A local model path is not there, or ai-toolkit could not load the
    /// model; `Unavailable`.
    #[error("base model {model:?} is not available to ai-toolkit: {detail}")]
    ModelMissing { model: String, detail: String },

    /// python could not be started; `Unavailable`.
    #[error("could not start {program:?} to run ai-toolkit: {message}")]
    LaunchFailed { program: String, message: String },

    /// A job parameter is missing or has a value ai-toolkit cannot take;
    /// `InvalidInput`.
    #[error("parameter {name} {problem}")]
    InvalidParam { name: String, problem: String },

    /// The dataset cannot be laid out; `InvalidInput`.
    #[error("dataset: {0}")]
    Dataset(String),

    #[error(transparent)]
    Artifact(#[from] ArtifactError),

    /// Local file work failed; `Internal`.
    #[error("{context}: {message}")]
    Io { context: String, message: String },

    /// ai-toolkit refused the generated job config (a checkout whose config
    /// format differs from the one loraflow writes); `Internal`.
    #[error("ai-toolkit refused the job config: {line}\nlast lines of output:\n{tail}")]
    ConfigRejected { line: String, tail: String },

    /// CUDA ran out of memory; retryable. `OutOfMemory`.
    #[error("ai-toolkit ran out of GPU memory: {line}\nlast lines of output:\n{tail}")]
    OutOfMemory { line: String, tail: String },

    /// ai-toolkit exited unsuccessfully for another reason; `Internal`.
    #[error("ai-toolkit {status}{}\nlast lines of output:\n{tail}", exception.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Failed {
        status: String,
        exception: Option<String>,
        tail: String,
    },

    /// ai-toolkit exited successfully without the final LoRA; `Internal`.
    #[error("ai-toolkit finished but wrote no {expected} in {}; files there: {}", dir.display(), if found.is_empty() { "none".to_owned() } else { found.join(", ") })]
    NoOutput {
        expected: String,
        dir: PathBuf,
        found: Vec<String>,
    },

    /// Stopped at the configured timeout; `Internal`.
    #[error(
        "ai-toolkit ran past the timeout of {}s and was stopped; raise `timeout` in the ai-toolkit settings or train fewer epochs",
        after.as_secs()
    )]
    TimedOut { after: Duration },

    /// The step was cancelled and ai-toolkit was stopped; `Cancelled`.
    #[error("the step was cancelled; ai-toolkit was stopped")]
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
            | Self::UnsupportedFamily { .. }
            | Self::InvalidParam { .. }
            | Self::Dataset(_) => StepErrorKind::InvalidInput,
            Self::RunPyMissing { .. }
            | Self::Installation { .. }
            | Self::ModelMissing { .. }
            | Self::LaunchFailed { .. } => StepErrorKind::Unavailable,
            Self::Artifact(ArtifactError::Io { .. }) => StepErrorKind::Unavailable,
            Self::Artifact(_) => StepErrorKind::InvalidInput,
            Self::OutOfMemory { .. } => StepErrorKind::OutOfMemory,
            Self::Cancelled => StepErrorKind::Cancelled,
            Self::InvalidSettings(_)
            | Self::Io { .. }
            | Self::ConfigRejected { .. }
            | Self::Failed { .. }
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
