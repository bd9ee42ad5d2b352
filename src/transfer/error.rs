//! Why a transfer was refused.

use loraflow_core::executor::ArtifactError;

/// A refused or failed transfer. Each variant says which gRPC code it maps
/// to (`src/grpc/artifacts.rs`) and what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field is malformed or over its limit: `INVALID_ARGUMENT` with a
    /// `BadRequest` naming `field`. Fix the request; resending it as it is
    /// cannot help.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The caller may not touch this: `PERMISSION_DENIED`. Nothing was written.
    #[error("permission denied: {0}")]
    Denied(String),
    /// No such upload session (never opened, finished long ago, or expired):
    /// `NOT_FOUND`. Start a new session.
    #[error(
        "no upload session {id:?} (unknown or expired after {ttl_s}s idle); start the upload again"
    )]
    UnknownSession { id: String, ttl_s: u64 },
    /// A chunk does not start at the committed offset:
    /// `FAILED_PRECONDITION`. Ask `StartUpload` with the session id where
    /// it stands and send from there.
    #[error(
        "chunk at offset {offset} but the server holds {committed} bytes of upload {id}; resume from {committed}"
    )]
    WrongOffset {
        id: String,
        offset: u64,
        committed: u64,
    },
    /// The received bytes are not the ones announced: `DATA_LOSS`. Nothing
    /// was stored; the session is gone.
    #[error("upload {id}: {what}; nothing was stored")]
    Mismatch { id: String, what: String },
    /// A dataset is committed before all its files are in:
    /// `FAILED_PRECONDITION`.
    #[error("dataset upload {id} still misses {missing:?}; upload them, then commit")]
    Incomplete { id: String, missing: Vec<String> },
    /// Too many sessions open at once: `RESOURCE_EXHAUSTED`. Retry later.
    #[error("{0}")]
    Busy(String),
    /// The file is not there: `NOT_FOUND`.
    #[error("no artifact at {0}")]
    NotFound(String),
    /// Storage failed: `UNAVAILABLE`. Retrying may help.
    #[error("storage failed: {0}")]
    Storage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<ArtifactError> for Error {
    fn from(e: ArtifactError) -> Self {
        match e {
            ArtifactError::NotFound { uri } => Self::NotFound(uri),
            ArtifactError::DigestMismatch { .. } => Self::Mismatch {
                id: String::new(),
                what: e.to_string(),
            },
            ArtifactError::Unsupported { .. } => Self::invalid("uri", e.to_string()),
            ArtifactError::Io { .. } => Self::Storage(e.to_string()),
        }
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<loraflow_store::Error> for Error {
    fn from(e: loraflow_store::Error) -> Self {
        Self::Storage(e.to_string())
    }
}
