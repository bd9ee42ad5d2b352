//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading, training or saving a model.
///
/// Variants name the offending input (file, tensor, field and value) so that a message can be
/// shown to a user as it is. The `train` executor maps them to a step failure: configuration and
/// input errors are not retryable (`InvalidArgument`), I/O errors may be (`Unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another one.
    ///
    /// Not retryable: the caller must fix the configuration (`InvalidArgument`).
    #[error("invalid value {value} for `{field}`: {reason}")]
    InvalidConfig {
        /// Dotted name of the field, e.g. `network.rank`.
        field: String,
        /// The offending value, as written by the user.
        value: String,
        /// What is wrong and, where it helps, what would be accepted.
        reason: String,
    },

    /// A diffusers `config.json` uses a feature this crate does not implement.
    ///
    /// Not retryable with this engine; another engine may handle the model
    /// (`FailedPrecondition`).
    #[error("unsupported model configuration: `{field}` = {value} ({hint})")]
    Unsupported {
        /// The config key.
        field: String,
        /// Its value.
        value: String,
        /// What is supported instead.
        hint: String,
    },

    /// The device string in the configuration cannot be parsed or names a backend this build
    /// was compiled without.
    ///
    /// Not retryable on this worker; schedule on one built with the feature
    /// (`FailedPrecondition`).
    #[error("device `{device}`: {reason}")]
    Device {
        /// The device string as given.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A tensor the model needs is absent from a weights file.
    ///
    /// The file does not match the model configuration; not retryable (`InvalidArgument`).
    #[error("tensor `{name}` is missing from {}", path.display())]
    MissingTensor {
        /// The key looked up in the file.
        name: String,
        /// The file.
        path: PathBuf,
    },

    /// A tensor exists but its shape is not the one the model expects.
    ///
    /// Usually a config for another model family; not retryable (`InvalidArgument`).
    #[error("tensor `{name}` in {} has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The key in the file.
        name: String,
        /// The file.
        path: PathBuf,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape found in the file.
        found: Vec<usize>,
    },

    /// A tensor has an element type that cannot be converted to `f32`.
    ///
    /// Not retryable (`InvalidArgument`).
    #[error("tensor `{name}` in {} has unsupported dtype {dtype}", path.display())]
    UnsupportedDtype {
        /// The key in the file.
        name: String,
        /// The file.
        path: PathBuf,
        /// The safetensors dtype.
        dtype: String,
    },

    /// A LoRA file holds a key that names no layer of the model, or a malformed LoRA entry.
    ///
    /// Not retryable (`InvalidArgument`).
    #[error("LoRA file {}: {reason}", path.display())]
    InvalidLora {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },

    /// A file is not valid safetensors or JSON.
    ///
    /// Not retryable unless the file was still being written (`InvalidArgument`).
    #[error("cannot parse {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },

    /// Reading or writing a file failed.
    ///
    /// May be transient (disk full, network file system); retry with backoff (`Unavailable`).
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The loss became NaN or infinite; training cannot continue.
    ///
    /// Usually a learning rate too high for the configuration; not retryable as is
    /// (`FailedPrecondition`).
    #[error("loss is not finite ({loss}) at step {step}; lower the learning rate")]
    NonFiniteLoss {
        /// The optimizer step at which it happened (1-based).
        step: usize,
        /// The loss value.
        loss: f32,
    },

    /// Training stopped because cancellation was requested.
    ///
    /// Expected after a cancel; record the job as cancelled, do not retry (`Cancelled`).
    #[error("training cancelled after {completed_steps} steps")]
    Cancelled {
        /// Optimizer steps completed before the stop.
        completed_steps: usize,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action: "read",
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action: "write",
            path: path.into(),
            source,
        }
    }
}

/// A JSON file (a model's or scheduler's config), read and parsed; errors name the file.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
