//! A step's life inside a job: queued, leased, completed or failed, attempt by
//! attempt.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalogue::ParamValue;
use crate::ids::{ExecutorId, InstanceId, LeaseId};
use crate::workflow::StepKind;

/// Progress an executor reports in a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepProgress {
    /// 0 to 100.
    pub percent: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_sec: Option<f64>,
    /// Loss on held-out images at the last saved epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Samples and LoRAs produced since the last report (a `sample-now`
    /// request's images, a `save-now` LoRA), so that reviewers see them
    /// while the step still runs. The step's completion reports them again;
    /// the job counts each file once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<crate::artifact::EpochOutput>,
}

impl StepProgress {
    /// A description of what is wrong, if anything.
    pub(crate) fn problem(&self) -> Option<String> {
        if !(0.0..=100.0).contains(&self.percent) {
            return Some(format!("percent {} is outside 0..=100", self.percent));
        }
        if let Some(loss) = self.loss.filter(|l| !l.is_finite()) {
            return Some(format!("loss {loss} is not a finite number"));
        }
        if let Some(l) = self.validation_loss.filter(|l| !l.is_finite() || *l < 0.0) {
            return Some(format!("validation_loss {l} must be a non-negative number"));
        }
        if let Some(s) = self.samples_per_sec.filter(|s| !s.is_finite() || *s < 0.0) {
            return Some(format!("samples_per_sec {s} must be a non-negative number"));
        }
        if let (Some(step), Some(total)) = (self.step, self.total_steps)
            && step > total
        {
            return Some(format!("step {step} is past total_steps {total}"));
        }
        None
    }
}

/// What kind of failure an executor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum StepErrorKind {
    /// The GPU (or host) ran out of memory.
    OutOfMemory,
    /// The step's input is bad (corrupt images, unusable dataset).
    InvalidInput,
    /// A dependency (storage, network, the external engine) failed.
    Unavailable,
    /// The step was stopped because it was cancelled.
    Cancelled,
    /// Anything else.
    Internal,
}

impl std::fmt::Display for StepErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A failure reported by an executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepError {
    pub kind: StepErrorKind,
    pub message: String,
    /// Whether trying again could help. `InvalidInput` never is.
    pub retryable: bool,
}

/// A parameter the scheduler changed for a retry (the out-of-memory
/// auto-adjust), recorded so the change is audited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ParamAdjustment {
    pub param: String,
    pub from: ParamValue,
    pub to: ParamValue,
}

/// Why a lease ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum ExpiryCause {
    /// No heartbeat within the heartbeat timeout.
    HeartbeatTimeout,
    /// The attempt ran past its start-to-close timeout.
    StartToCloseTimeout,
    /// The executor registered again from a new process: the process that
    /// held the lease is gone. Recorded at once, not after the heartbeat
    /// timeout, and the step is retried without backoff.
    ExecutorRestarted,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    Completed,
    Failed(StepError),
    Expired(ExpiryCause),
}

/// One attempt at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub lease_id: LeaseId,
    pub executor_id: ExecutorId,
    /// The executor process that holds it, when the executor named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    pub leased_at: DateTime<Utc>,
    pub outcome: Option<AttemptOutcome>,
}

/// Where a step is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum StepStatus {
    /// Its dependencies are not done yet.
    Waiting,
    /// Ready; may be leased from `not_before` on.
    Queued {
        attempt: u32,
        queued_at: DateTime<Utc>,
        not_before: DateTime<Utc>,
    },
    /// Leased to an executor.
    Leased {
        attempt: u32,
        lease_id: LeaseId,
        executor_id: ExecutorId,
        /// Renewed by each heartbeat.
        deadline: DateTime<Utc>,
        /// The start-to-close limit; heartbeats do not move it.
        close_by: DateTime<Utc>,
    },
    /// The review gate, waiting for a reviewer.
    AwaitingReview,
    Completed,
    /// Failed for good (the job failed with it).
    Failed,
    /// Never ran: the job ended first.
    Dropped,
}

impl StepStatus {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queued { .. } => "queued",
            Self::Leased { .. } => "leased",
            Self::AwaitingReview => "awaiting review",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }
}

/// Everything the job knows about one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub kind: StepKind,
    pub status: StepStatus,
    pub attempts: Vec<Attempt>,
    /// Parameter changes made for retries, oldest first.
    pub adjustments: Vec<ParamAdjustment>,
    pub progress: Option<StepProgress>,
    /// What the completed attempt returned; inputs of the steps after it.
    #[serde(default)]
    pub artifacts: Vec<crate::artifact::Artifact>,
    #[serde(default)]
    pub outputs: serde_json::Value,
}

impl StepRecord {
    pub(crate) fn new(kind: StepKind) -> Self {
        Self {
            kind,
            status: StepStatus::Waiting,
            attempts: Vec::new(),
            adjustments: Vec::new(),
            progress: None,
            artifacts: Vec::new(),
            outputs: serde_json::Value::Null,
        }
    }

    pub fn attempt(&self, lease_id: &LeaseId) -> Option<&Attempt> {
        self.attempts.iter().find(|a| &a.lease_id == lease_id)
    }

    pub(crate) fn attempt_mut(&mut self, lease_id: &LeaseId) -> Option<&mut Attempt> {
        self.attempts.iter_mut().find(|a| &a.lease_id == lease_id)
    }

    /// The lease the step currently runs under, if any.
    pub fn current_lease(&self) -> Option<&LeaseId> {
        match &self.status {
            StepStatus::Leased { lease_id, .. } => Some(lease_id),
            _ => None,
        }
    }
}
