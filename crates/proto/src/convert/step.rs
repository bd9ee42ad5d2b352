//! A step as it runs: progress, failures, status.

use loraflow_core::job::{StepError, StepErrorKind, StepProgress, StepStatus};
use loraflow_core::validation::Violations;

use super::{Fields, enum_conversions, enum_value};
use crate::pb::v1 as pb;

enum_conversions!(StepErrorKind, pb::StepErrorKind, "STEP_ERROR_KIND_UNSPECIFIED", {
    OutOfMemory <=> OutOfMemory,
    InvalidInput <=> InvalidInput,
    Unavailable <=> Unavailable,
    Cancelled <=> Cancelled,
    Internal <=> Internal,
});

impl From<StepProgress> for pb::StepProgress {
    fn from(p: StepProgress) -> Self {
        Self {
            percent: p.percent,
            epoch: p.epoch,
            step: p.step,
            total_steps: p.total_steps,
            loss: p.loss,
            samples_per_sec: p.samples_per_sec,
            message: p.message.unwrap_or_default(),
            validation_loss: p.validation_loss,
            outputs: p.outputs.into_iter().map(Into::into).collect(),
        }
    }
}

/// Infallible: the aggregate judges the figures (`InvalidProgress`) so that
/// in-process executors are held to the same rules. The `outputs` are not
/// converted here (artifacts can be malformed on the wire): a heartbeat
/// converts them with their field paths
/// ([`HeartbeatRequest::into_call`](pb::HeartbeatRequest::into_call)), and
/// a client's view of a step does not need them.
impl From<pb::StepProgress> for StepProgress {
    fn from(p: pb::StepProgress) -> Self {
        Self {
            percent: p.percent,
            epoch: p.epoch,
            step: p.step,
            total_steps: p.total_steps,
            loss: p.loss,
            samples_per_sec: p.samples_per_sec,
            validation_loss: p.validation_loss,
            message: (!p.message.is_empty()).then_some(p.message),
            outputs: Vec::new(),
        }
    }
}

impl From<StepError> for pb::StepError {
    fn from(e: StepError) -> Self {
        Self {
            kind: pb::StepErrorKind::from(e.kind) as i32,
            message: e.message,
            retryable: e.retryable,
        }
    }
}

impl TryFrom<pb::StepError> for StepError {
    type Error = Violations;

    fn try_from(e: pb::StepError) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let kind = f.take(
            "kind",
            enum_value::<pb::StepErrorKind, _>(e.kind, "StepErrorKind"),
        );
        let Some(kind) = kind else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            kind,
            message: e.message,
            retryable: e.retryable,
        })
    }
}

/// A step's status on the wire. One way only: the domain status carries
/// leases and deadlines that the wire `Step` spreads over other fields.
impl From<&StepStatus> for pb::StepStatus {
    fn from(s: &StepStatus) -> Self {
        match s {
            StepStatus::Waiting => Self::Waiting,
            StepStatus::Queued { .. } => Self::Queued,
            StepStatus::Leased { .. } => Self::Leased,
            StepStatus::AwaitingReview => Self::AwaitingReview,
            StepStatus::Completed => Self::Completed,
            StepStatus::Failed => Self::Failed,
            StepStatus::Dropped => Self::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips() {
        let full = StepProgress {
            percent: 42.5,
            epoch: Some(3),
            step: Some(120),
            total_steps: Some(400),
            loss: Some(0.118),
            samples_per_sec: Some(3.25),
            message: Some("caching latents".into()),
            validation_loss: Some(0.131),
            outputs: Vec::new(),
        };
        for p in [full, StepProgress::default()] {
            assert_eq!(StepProgress::from(pb::StepProgress::from(p.clone())), p);
        }
    }

    #[test]
    fn every_error_kind_round_trips() {
        for kind in [
            StepErrorKind::OutOfMemory,
            StepErrorKind::InvalidInput,
            StepErrorKind::Unavailable,
            StepErrorKind::Cancelled,
            StepErrorKind::Internal,
        ] {
            let e = StepError {
                kind,
                message: format!("{kind}"),
                retryable: kind != StepErrorKind::InvalidInput,
            };
            assert_eq!(StepError::try_from(pb::StepError::from(e.clone())), Ok(e));
        }
    }

    #[test]
    fn an_error_without_a_kind_is_refused() {
        let err = StepError::try_from(pb::StepError::default()).unwrap_err();
        assert_eq!(err.0[0].field, "kind");
    }
}
