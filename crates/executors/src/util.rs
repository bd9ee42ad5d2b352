//! Small helpers shared by the executors.

use loraflow_core::executor::ArtifactError;
use loraflow_core::job::{StepError, StepErrorKind};

pub fn invalid_input(message: impl Into<String>) -> StepError {
    StepError {
        kind: StepErrorKind::InvalidInput,
        message: message.into(),
        retryable: false,
    }
}

pub fn unavailable(message: impl Into<String>) -> StepError {
    StepError {
        kind: StepErrorKind::Unavailable,
        message: message.into(),
        retryable: true,
    }
}

pub fn internal(message: impl Into<String>) -> StepError {
    StepError {
        kind: StepErrorKind::Internal,
        message: message.into(),
        retryable: false,
    }
}

pub fn cancelled() -> StepError {
    StepError {
        kind: StepErrorKind::Cancelled,
        message: "the step was cancelled".into(),
        retryable: true,
    }
}

/// Missing or corrupted inputs are the job's problem; storage trouble may pass.
pub fn from_artifact(e: ArtifactError) -> StepError {
    match e {
        ArtifactError::NotFound { .. }
        | ArtifactError::DigestMismatch { .. }
        | ArtifactError::Unsupported { .. } => invalid_input(e.to_string()),
        ArtifactError::Io { .. } => unavailable(e.to_string()),
    }
}

/// Run blocking work (image decoding, hashing) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("worker thread failed: {e}")))
}
