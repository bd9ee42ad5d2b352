//! Where a job is (`JobState`) and why it failed (`FailureReason`, `Failure`).

use loraflow_core::job::{Failure, FailureReason, JobState};
use loraflow_core::validation::Violations;

use super::{Fields, enum_conversions, enum_value};
use crate::pb::v1 as pb;

enum_conversions!(JobState, pb::JobState, "JOB_STATE_UNSPECIFIED", {
    Pending <=> Pending,
    Submitted <=> Submitted,
    Processing <=> Processing,
    InReview <=> InReview,
    Approved <=> Approved,
    Published <=> Published,
    Failed <=> Failed,
});

enum_conversions!(FailureReason, pb::FailureReason, "FAILURE_REASON_UNSPECIFIED", {
    InvalidDataset <=> InvalidDataset,
    OutOfMemory <=> OutOfMemory,
    RetriesExhausted <=> RetriesExhausted,
    ExecutorLost <=> ExecutorLost,
    Cancelled <=> Cancelled,
    Rejected <=> Rejected,
    PublishFailed <=> PublishFailed,
    ScheduleTimeout <=> ScheduleTimeout,
    NoOutput <=> NoOutput,
    StepFailed <=> StepFailed,
});

/// A wire `JobState` field where UNSPECIFIED means "any" (list filters).
pub fn optional_job_state(raw: i32) -> Result<Option<JobState>, Violations> {
    if raw == pb::JobState::Unspecified as i32 {
        Ok(None)
    } else {
        enum_value::<pb::JobState, _>(raw, "JobState").map(Some)
    }
}

impl From<Failure> for pb::Failure {
    fn from(f: Failure) -> Self {
        Self {
            reason: pb::FailureReason::from(f.reason) as i32,
            message: f.message,
        }
    }
}

impl TryFrom<pb::Failure> for Failure {
    type Error = Violations;

    fn try_from(w: pb::Failure) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let reason = f.take(
            "reason",
            enum_value::<pb::FailureReason, _>(w.reason, "FailureReason"),
        );
        let Some(reason) = reason else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            reason,
            message: w.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REASONS: [FailureReason; 10] = [
        FailureReason::InvalidDataset,
        FailureReason::OutOfMemory,
        FailureReason::RetriesExhausted,
        FailureReason::ExecutorLost,
        FailureReason::Cancelled,
        FailureReason::Rejected,
        FailureReason::PublishFailed,
        FailureReason::ScheduleTimeout,
        FailureReason::NoOutput,
        FailureReason::StepFailed,
    ];

    #[test]
    fn every_state_round_trips() {
        for s in JobState::ALL {
            let raw = pb::JobState::from(s) as i32;
            assert_eq!(enum_value::<pb::JobState, JobState>(raw, "JobState"), Ok(s));
        }
    }

    #[test]
    fn every_failure_round_trips() {
        for reason in REASONS {
            let f = Failure {
                reason,
                message: format!("{reason:?}"),
            };
            assert_eq!(Failure::try_from(pb::Failure::from(f.clone())), Ok(f));
        }
    }

    #[test]
    fn unspecified_and_unknown_values_are_violations() {
        let err = JobState::try_from(pb::JobState::Unspecified).unwrap_err();
        assert!(err.0[0].description.contains("JOB_STATE_UNSPECIFIED"));
        let err = Failure::try_from(pb::Failure {
            reason: 42,
            message: String::new(),
        })
        .unwrap_err();
        assert_eq!(err.0[0].field, "reason");
        assert!(err.0[0].description.contains("42"));
    }

    #[test]
    fn unspecified_state_filters_nothing() {
        assert_eq!(optional_job_state(0), Ok(None));
        assert_eq!(
            optional_job_state(pb::JobState::InReview as i32),
            Ok(Some(JobState::InReview))
        );
        assert!(optional_job_state(77).is_err());
    }
}
