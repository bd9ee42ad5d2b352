//! Failures of the native executors, and the step error each becomes.

use std::path::PathBuf;

use loraflow_core::executor::ArtifactError;
use loraflow_core::job::{StepError, StepErrorKind};

/// Why a native step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's settings are unusable. Fix the configuration; not retryable
    /// (`FailedPrecondition`).
    #[error("native engine setting `{field}`: {reason}")]
    Options {
        /// The setting.
        field: String,
        /// What is wrong.
        reason: String,
    },

    /// The job names a base model this worker does not have. Not retryable here; another
    /// worker may have it (`FailedPrecondition`).
    #[error("base model {model:?} is not installed for the native engine (looked at {}); {}", looked_at.display(), crate::install::native_install_hint(model, looked_at))]
    UnknownModel {
        /// The base model id.
        model: String,
        /// Where it was expected.
        looked_at: PathBuf,
    },

    /// A job parameter the native engine cannot use as given. Not retryable
    /// (`InvalidArgument`).
    #[error("parameter `{param}`: {reason}")]
    Param {
        /// The job parameter.
        param: String,
        /// What is wrong, quoting the value.
        reason: String,
    },

    /// The trainer refused or failed (`InvalidArgument` for bad data and settings,
    /// `Unavailable` for I/O).
    #[error(transparent)]
    Trainer(#[from] loraflow_trainer::Error),

    /// Reading inputs or storing outputs failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),

    /// The device ran out of memory; a retry with a smaller batch or resolution may pass
    /// (`ResourceExhausted`).
    #[error("out of memory: {message}")]
    OutOfMemory {
        /// The allocator's or backend's message.
        message: String,
    },

    /// The training thread panicked (a bug or a backend failure). Not retryable (`Internal`).
    #[error("the native trainer stopped unexpectedly: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },

    /// Local file work failed (`Unavailable`).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// Drawing a picture (the loss plot, the contact sheet) failed: a bug, not the job's
    /// fault. Not retryable (`Internal`).
    #[error("drawing {what}: {reason}")]
    Picture {
        /// The picture.
        what: String,
        /// The plotting library's message.
        reason: String,
    },

    /// The step was cancelled (`Cancelled`).
    #[error("the step was cancelled")]
    Cancelled,
}

/// The module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn param(param: &str, reason: impl Into<String>) -> Self {
        Self::Param {
            param: param.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn picture(what: &str, reason: impl std::fmt::Display) -> Self {
        Self::Picture {
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// A panic payload, classified: allocation failures become [`Error::OutOfMemory`].
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        let lower = message.to_lowercase();
        let oom = [
            "out of memory",
            "outofmemory",
            "memory allocation",
            "failed to allocate",
        ]
        .iter()
        .any(|p| lower.contains(p));
        if oom {
            Self::OutOfMemory { message }
        } else {
            Self::Panicked { message }
        }
    }

    /// The kind of step failure this is.
    pub fn kind(&self) -> StepErrorKind {
        use loraflow_trainer::Error as T;
        match self {
            Self::Options { .. }
            | Self::UnknownModel { .. }
            | Self::Panicked { .. }
            | Self::Picture { .. } => StepErrorKind::Internal,
            Self::Param { .. } => StepErrorKind::InvalidInput,
            Self::Trainer(T::Cancelled { .. }) | Self::Cancelled => StepErrorKind::Cancelled,
            Self::Trainer(T::Io { .. }) | Self::Io { .. } => StepErrorKind::Unavailable,
            Self::Trainer(T::Device { .. }) => StepErrorKind::Internal,
            Self::Trainer(_) => StepErrorKind::InvalidInput,
            Self::Artifact(
                ArtifactError::NotFound { .. }
                | ArtifactError::DigestMismatch { .. }
                | ArtifactError::Unsupported { .. },
            ) => StepErrorKind::InvalidInput,
            Self::Artifact(ArtifactError::Io { .. }) => StepErrorKind::Unavailable,
            Self::OutOfMemory { .. } => StepErrorKind::OutOfMemory,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_panics_are_out_of_memory_and_retryable() {
        let e = Error::from_panic(Box::new(
            "wgpu: Out of Memory while allocating a buffer".to_string(),
        ));
        assert!(matches!(e, Error::OutOfMemory { .. }));
        let step = StepError::from(e);
        assert_eq!(step.kind, StepErrorKind::OutOfMemory);
        assert!(step.retryable);
        let e = Error::from_panic(Box::new("index out of bounds"));
        assert_eq!(StepError::from(e).kind, StepErrorKind::Internal);
    }
}
