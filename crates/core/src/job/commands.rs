//! The commands a training job accepts. Each names the intent; the aggregate
//! decides which events (if any) follow.

use serde::{Deserialize, Serialize};

use super::spec::{AdmittedDataset, JobSpec};
use super::state::FailureReason;
use super::step::{StepError, StepProgress};
use crate::artifact::{Artifact, EpochOutput};
use crate::ids::{ExecutorId, InstanceId, JobId, LeaseId, StepId};

/// Create the job from a client's spec (validated against the catalogue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateJob {
    pub job_id: JobId,
    pub spec: JobSpec,
}

/// Admit the dataset and plan the workflow; the first steps are queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitJob {
    pub dataset: AdmittedDataset,
}

/// Lease a queued step to an executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseStep {
    pub step_id: StepId,
    /// Fresh and unique; the executor quotes it in every later call.
    pub lease_id: LeaseId,
    pub executor_id: ExecutorId,
    /// The executor process that polled, when it named one.
    #[serde(default)]
    pub instance: Option<InstanceId>,
}

/// Renew a lease and record progress. Callers throttle these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub lease_id: LeaseId,
    pub progress: StepProgress,
}

/// The step of this lease finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteStep {
    pub lease_id: LeaseId,
    #[serde(default)]
    pub outputs: serde_json::Value,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    #[serde(default)]
    pub epochs: Vec<EpochOutput>,
}

/// The step of this lease failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailStep {
    pub lease_id: LeaseId,
    pub error: StepError,
}

/// The lease's heartbeat or start-to-close deadline has passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpireLease {
    pub lease_id: LeaseId,
}

/// The executor holding this lease registered again from another process
/// (`instance`): the process that held it is gone, so the lease ends now
/// instead of at its heartbeat deadline, and the step is retried at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpireRestartedLease {
    pub lease_id: LeaseId,
    /// The executor that registered; it must be the lease's.
    pub executor_id: ExecutorId,
    /// The process that registered; the lease must be another's.
    pub instance: InstanceId,
}

/// A queued step waited past its schedule-to-start timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpireQueuedStep {
    pub step_id: StepId,
    /// What no connected executor offered when the timeout fired, as the
    /// scheduler saw its fleet; the job's failure names it. `None` when
    /// executors able to run the step were connected but busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unservable: Option<crate::schedule::Unservable>,
}

/// Choose an epoch, or the LoRA saved at a step; the publish step is queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproveJob {
    /// The epoch whose end-of-epoch LoRA is chosen; ignored when `step` is set.
    pub epoch: u32,
    /// Choose the LoRA saved at this optimisation step instead (a `save-now`
    /// LoRA, or an epoch's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    pub approved_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectJob {
    pub reason: String,
    pub rejected_by: String,
}

/// Allowed from every non-terminal state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelJob {
    pub reason: String,
    pub cancelled_by: String,
}

/// Fail the job from outside (an operator, or the engine on an unrecoverable error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailJob {
    pub reason: FailureReason,
    pub message: String,
}

/// Every command of a [`TrainingJob`](super::TrainingJob).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobCommand {
    Create(CreateJob),
    Submit(SubmitJob),
    LeaseStep(LeaseStep),
    Heartbeat(Heartbeat),
    CompleteStep(CompleteStep),
    FailStep(FailStep),
    ExpireLease(ExpireLease),
    ExpireRestartedLease(ExpireRestartedLease),
    ExpireQueuedStep(ExpireQueuedStep),
    Approve(ApproveJob),
    Reject(RejectJob),
    Cancel(CancelJob),
    Fail(FailJob),
}

impl JobCommand {
    /// The command's name, as errors quote it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create(_) => "create",
            Self::Submit(_) => "submit",
            Self::LeaseStep(_) => "lease_step",
            Self::Heartbeat(_) => "heartbeat",
            Self::CompleteStep(_) => "complete_step",
            Self::FailStep(_) => "fail_step",
            Self::ExpireLease(_) => "expire_lease",
            Self::ExpireRestartedLease(_) => "expire_restarted_lease",
            Self::ExpireQueuedStep(_) => "expire_queued_step",
            Self::Approve(_) => "approve",
            Self::Reject(_) => "reject",
            Self::Cancel(_) => "cancel",
            Self::Fail(_) => "fail",
        }
    }
}
