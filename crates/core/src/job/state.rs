//! The job's state as clients see it, and why a job failed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum JobState {
    /// Created, parameters valid, dataset not yet admitted.
    Pending,
    /// Dataset admitted, workflow planned, waiting for an executor.
    Submitted,
    /// At least one step has been leased to an executor.
    Processing,
    /// Training and sampling are done; a reviewer must approve an epoch.
    InReview,
    /// An epoch was approved; it is being published.
    Approved,
    /// The approved LoRA is at its permanent location. Terminal.
    Published,
    /// Terminal, with a [`FailureReason`].
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        Self::Pending,
        Self::Submitted,
        Self::Processing,
        Self::InReview,
        Self::Approved,
        Self::Published,
        Self::Failed,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Published | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Submitted => "Submitted",
            Self::Processing => "Processing",
            Self::InReview => "InReview",
            Self::Approved => "Approved",
            Self::Published => "Published",
            Self::Failed => "Failed",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown job state {s:?}; expected one of Pending, Submitted, Processing, InReview, Approved, Published, Failed"))
    }
}

/// Why a job failed; machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum FailureReason {
    /// The dataset was refused by validation.
    InvalidDataset,
    /// Training ran out of memory and nothing was left to lower.
    OutOfMemory,
    /// A step failed, or its lease expired, on every attempt it was allowed.
    RetriesExhausted,
    /// A step allowed one attempt only lost its executor (no heartbeat, or
    /// past its start-to-close timeout); or an operator said so.
    ExecutorLost,
    /// Cancelled by a client or operator.
    Cancelled,
    /// A reviewer rejected the result.
    Rejected,
    /// Publishing the approved LoRA failed for good.
    PublishFailed,
    /// A step waited longer than its schedule-to-start timeout for an executor.
    ScheduleTimeout,
    /// Training finished without producing any LoRA to review.
    NoOutput,
    /// A step failed with an error that retrying cannot fix.
    StepFailed,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A failed job's reason and the human-readable story.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
}
