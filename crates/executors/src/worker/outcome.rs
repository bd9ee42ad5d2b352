//! A step's outcome never travels as a large message. Executors write
//! large results (manifests, file lists) as artifacts and report their
//! references; before `CompleteStep` the worker measures the outcome as it
//! will be encoded, and an outcome still over the limit fails the step with
//! [`OutcomeTooLarge`], which is never retried (retrying cannot shrink it,
//! and a worker that kept resending it would hold its slot for nothing).
//! Error messages are cut to a bounded length for the same reason.

use loraflow_core::executor::StepOutput;
use loraflow_core::job::{StepError, StepErrorKind};
use loraflow_core::limits::{Limits, truncate};

/// The worker's bounds on what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeLimits {
    /// Largest encoded `CompleteStep` message, in bytes.
    pub max_outcome_bytes: usize,
    /// Longest step error message, in characters.
    pub max_error_chars: usize,
}

impl Default for OutcomeLimits {
    fn default() -> Self {
        Self::from(&Limits::default())
    }
}

impl From<&Limits> for OutcomeLimits {
    fn from(l: &Limits) -> Self {
        Self {
            max_outcome_bytes: l.step_outcome_bytes,
            max_error_chars: l.step_error_chars,
        }
    }
}

/// A step's outcome is too large to report. The step fails for good: the
/// wire error is `INTERNAL`, not retryable (the job fails with reason
/// `STEP_FAILED`); the executor must write the large part as an artifact
/// and report its URI and SHA-256 instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "OUTCOME_TOO_LARGE: the outcome of step {step} ({kind}) encodes to {bytes} bytes; at most {limit} may be reported (limits.step_outcome_bytes). Large results must be written as artifacts and referenced by URI and SHA-256"
)]
pub struct OutcomeTooLarge {
    pub step: String,
    pub kind: String,
    pub bytes: usize,
    pub limit: usize,
}

impl From<OutcomeTooLarge> for StepError {
    fn from(e: OutcomeTooLarge) -> Self {
        StepError {
            kind: StepErrorKind::Internal,
            message: e.to_string(),
            retryable: false,
        }
    }
}

impl OutcomeLimits {
    /// `output` if its encoded size (`size`) is within the limit, else the
    /// error that fails the step.
    pub fn check(
        &self,
        step: &str,
        kind: &str,
        output: StepOutput,
        size: usize,
    ) -> Result<StepOutput, OutcomeTooLarge> {
        if size > self.max_outcome_bytes {
            return Err(OutcomeTooLarge {
                step: step.to_owned(),
                kind: kind.to_owned(),
                bytes: size,
                limit: self.max_outcome_bytes,
            });
        }
        Ok(output)
    }

    /// `error` with its message cut to the limit.
    pub fn bound_error(&self, mut error: StepError) -> StepError {
        error.message = truncate(&error.message, self.max_error_chars);
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_outcome_is_a_non_retryable_typed_error() {
        let limits = OutcomeLimits {
            max_outcome_bytes: 100,
            max_error_chars: 50,
        };
        let out = StepOutput::default();
        assert!(
            limits
                .check("validate", "validate_dataset", out.clone(), 100)
                .is_ok()
        );
        let err = limits
            .check("validate", "validate_dataset", out, 101)
            .unwrap_err();
        assert_eq!(err.bytes, 101);
        let wire = StepError::from(err);
        assert!(!wire.retryable);
        assert_eq!(wire.kind, StepErrorKind::Internal);
        assert!(
            wire.message.starts_with("OUTCOME_TOO_LARGE"),
            "{}",
            wire.message
        );
        assert!(
            wire.message.contains("limits.step_outcome_bytes"),
            "{}",
            wire.message
        );

        let long = StepError {
            kind: StepErrorKind::InvalidInput,
            message: "x".repeat(10_000),
            retryable: false,
        };
        let cut = limits.bound_error(long);
        assert!(cut.message.chars().count() <= 50, "{}", cut.message);
        assert!(cut.message.contains("more characters cut"));
    }
}
