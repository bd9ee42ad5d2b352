//! What the shared pieces of the external engines can fail with; each
//! engine's own error type takes these in (`From`) as its matching variants.

use loraflow_core::executor::ArtifactError;

/// A failure of the shared subprocess, layout, input or parameter code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The dataset cannot be laid out (no images, an unreadable caption).
    #[error("dataset: {0}")]
    Dataset(String),

    /// Local file work failed.
    #[error("{context}: {message}")]
    Io { context: String, message: String },

    /// The program could not be started.
    #[error("could not start {program:?}: {message}")]
    LaunchFailed { program: String, message: String },

    /// A job parameter is missing or has a value the engine cannot take.
    #[error("parameter {name} {problem}")]
    InvalidParam { name: String, problem: String },

    /// The dataset or an input artifact could not be read.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
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
}
