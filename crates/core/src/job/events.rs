//! The events of a training job. They are the only source of its state, and
//! they carry what views need (kinds, tenants, priorities) so projections stay
//! thin folds.
//!
//! Versioning: [`JobEvent::event_version`] is per event type. When a payload's
//! shape changes, bump its version and add an upcaster in
//! [`upcast`](super::upcast) so old logs still load.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::spec::{AdmittedDataset, JobSpec};
use super::state::FailureReason;
use super::step::{ExpiryCause, ParamAdjustment, StepError, StepProgress};
use crate::artifact::{Artifact, EpochOutput};
use crate::catalogue::Params;
use crate::ids::{ExecutorId, InstanceId, JobId, LeaseId, StepId, TenantId};
use crate::workflow::{Requirements, StepKind, WorkflowSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobCreated {
    pub job_id: JobId,
    pub spec: JobSpec,
    /// The parameters after defaults, profile and validation.
    #[cfg_attr(feature = "utoipa", schema(value_type = std::collections::BTreeMap<String, crate::catalogue::ParamValue>))]
    pub params: Params,
    pub created_at: DateTime<Utc>,
    /// The tenant's registered model `spec.base_model` names, as checked at
    /// registration; absent for a catalogue model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_model: Option<crate::catalogue::CustomModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobSubmitted {
    pub dataset: AdmittedDataset,
    /// The planned workflow (the template, or the job's override).
    pub workflow: WorkflowSpec,
    pub submitted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepQueued {
    pub step_id: StepId,
    pub kind: StepKind,
    pub attempt: u32,
    pub tenant: TenantId,
    pub priority: i32,
    pub requires: Requirements,
    pub queued_at: DateTime<Utc>,
    /// Not to be leased before this instant (retry backoff).
    pub not_before: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepLeased {
    pub step_id: StepId,
    pub kind: StepKind,
    pub attempt: u32,
    pub lease_id: LeaseId,
    pub executor_id: ExecutorId,
    /// The executor process the step went to (since 1.1; absent when the
    /// executor named none). A registration from another process of the
    /// same executor ends this lease at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    pub leased_at: DateTime<Utc>,
    /// Heartbeat deadline; each heartbeat moves it.
    pub deadline: DateTime<Utc>,
    /// Start-to-close deadline of this attempt.
    pub close_by: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepProgressed {
    pub step_id: StepId,
    pub attempt: u32,
    pub lease_id: LeaseId,
    pub progress: StepProgress,
    /// The renewed heartbeat deadline.
    pub deadline: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepCompleted {
    pub step_id: StepId,
    pub kind: StepKind,
    pub attempt: u32,
    pub lease_id: LeaseId,
    /// Step-specific results, as the executor returned them.
    #[serde(default)]
    pub outputs: serde_json::Value,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub epochs: Vec<EpochOutput>,
    pub completed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepFailed {
    pub step_id: StepId,
    pub kind: StepKind,
    pub attempt: u32,
    pub lease_id: LeaseId,
    pub error: StepError,
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct LeaseExpired {
    pub step_id: StepId,
    pub attempt: u32,
    pub lease_id: LeaseId,
    pub executor_id: ExecutorId,
    pub cause: ExpiryCause,
    /// For [`ExpiryCause::ExecutorRestarted`] (since 1.1): the new process
    /// of the executor, whose registration ended the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_as: Option<InstanceId>,
    pub expired_at: DateTime<Utc>,
}

/// A failed or expired attempt will be tried again; a `StepQueued` for the
/// next attempt follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepRetried {
    pub step_id: StepId,
    pub next_attempt: u32,
    pub max_attempts: u32,
    /// The backoff chosen, in milliseconds.
    pub backoff_ms: u64,
    /// Parameters changed for the next attempt (out-of-memory auto-adjust).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<ParamAdjustment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ReviewRequested {
    pub step_id: StepId,
    /// Every epoch a reviewer can choose, with its LoRA and samples.
    pub epochs: Vec<EpochOutput>,
    pub requested_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobApproved {
    pub epoch: u32,
    /// Set when the reviewer chose by optimisation step (since 1.1): the
    /// LoRA saved at that step, which may be a `save-now` one within `epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// The LoRA of the chosen epoch, which the publish step copies.
    pub lora: Artifact,
    pub approved_by: String,
    pub approved_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobRejected {
    pub reason: String,
    pub rejected_by: String,
    pub rejected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobPublished {
    pub epoch: u32,
    pub artifact: Artifact,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobFailed {
    pub reason: FailureReason,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
    pub failed_at: DateTime<Utc>,
}

/// A lease that was running when the job was cancelled; its executor is told
/// through its next heartbeat answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct RunningLease {
    pub step_id: StepId,
    pub lease_id: LeaseId,
    pub executor_id: ExecutorId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobCancelled {
    pub reason: String,
    pub cancelled_by: String,
    pub running: Vec<RunningLease>,
    pub cancelled_at: DateTime<Utc>,
}

/// Every event of a [`TrainingJob`](super::TrainingJob).
// `JobCreated` (the whole spec) is far larger than the rest; events live
// briefly between the store and a fold, so boxing it would buy nothing but
// an indirection in every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum JobEvent {
    JobCreated(JobCreated),
    JobSubmitted(JobSubmitted),
    StepQueued(StepQueued),
    StepLeased(StepLeased),
    StepProgressed(StepProgressed),
    StepCompleted(StepCompleted),
    StepFailed(StepFailed),
    LeaseExpired(LeaseExpired),
    StepRetried(StepRetried),
    ReviewRequested(ReviewRequested),
    JobApproved(JobApproved),
    JobRejected(JobRejected),
    JobPublished(JobPublished),
    JobFailed(JobFailed),
    JobCancelled(JobCancelled),
}

impl JobEvent {
    /// The event type name, as stored (`JobCreated`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::JobCreated(_) => "JobCreated",
            Self::JobSubmitted(_) => "JobSubmitted",
            Self::StepQueued(_) => "StepQueued",
            Self::StepLeased(_) => "StepLeased",
            Self::StepProgressed(_) => "StepProgressed",
            Self::StepCompleted(_) => "StepCompleted",
            Self::StepFailed(_) => "StepFailed",
            Self::LeaseExpired(_) => "LeaseExpired",
            Self::StepRetried(_) => "StepRetried",
            Self::ReviewRequested(_) => "ReviewRequested",
            Self::JobApproved(_) => "JobApproved",
            Self::JobRejected(_) => "JobRejected",
            Self::JobPublished(_) => "JobPublished",
            Self::JobFailed(_) => "JobFailed",
            Self::JobCancelled(_) => "JobCancelled",
        }
    }

    /// Whether the job is over after this event (Published or Failed): it is
    /// the last event the job ever has.
    pub fn ends_job(&self) -> bool {
        matches!(
            self,
            Self::JobPublished(_)
                | Self::JobFailed(_)
                | Self::JobCancelled(_)
                | Self::JobRejected(_)
        )
    }

    /// The step this event is about, if any.
    pub fn step_id(&self) -> Option<&StepId> {
        match self {
            Self::StepQueued(e) => Some(&e.step_id),
            Self::StepLeased(e) => Some(&e.step_id),
            Self::StepProgressed(e) => Some(&e.step_id),
            Self::StepCompleted(e) => Some(&e.step_id),
            Self::StepFailed(e) => Some(&e.step_id),
            Self::LeaseExpired(e) => Some(&e.step_id),
            Self::StepRetried(e) => Some(&e.step_id),
            Self::ReviewRequested(e) => Some(&e.step_id),
            Self::JobFailed(e) => e.step_id.as_ref(),
            _ => None,
        }
    }
}

/// The current version of `JobCreated`; 1.0 had a flat shape (see `upcast`).
pub const JOB_CREATED_VERSION: &str = "2.0.0";

/// The current version of `StepLeased`: 1.1 added the executor's
/// `instance`; a 1.0 payload loads as it is, with none.
pub const STEP_LEASED_VERSION: &str = "1.1.0";

/// The current version of `LeaseExpired`: 1.1 added the cause
/// `ExecutorRestarted` and `restarted_as`; a 1.0 payload loads as it is.
pub const LEASE_EXPIRED_VERSION: &str = "1.1.0";

/// The current version of `JobApproved`: 1.1 added `step`; a 1.0 payload
/// loads as it is, approved by epoch.
pub const JOB_APPROVED_VERSION: &str = "1.1.0";

/// The current version of `StepProgressed`: 1.1 added the progress'
/// `outputs` (samples and LoRAs reported while the step runs); a 1.0
/// payload loads as it is, with none.
pub const STEP_PROGRESSED_VERSION: &str = "1.1.0";

impl DomainEvent for JobEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::JobCreated(_) => JOB_CREATED_VERSION,
            Self::StepLeased(_) => STEP_LEASED_VERSION,
            Self::LeaseExpired(_) => LEASE_EXPIRED_VERSION,
            Self::JobApproved(_) => JOB_APPROVED_VERSION,
            Self::StepProgressed(_) => STEP_PROGRESSED_VERSION,
            _ => "1.0.0",
        }
        .to_owned()
    }
}
