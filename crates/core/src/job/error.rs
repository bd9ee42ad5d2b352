//! Why a command was refused. A refused command writes no event.

use chrono::{DateTime, Utc};

use super::state::JobState;
use crate::ids::{BaseModelId, ExecutorId, InstanceId, JobId, LeaseId, StepId};
use crate::validation::Violations;

/// A command the job refused. Each variant says how a caller should handle it
/// and the gRPC status it maps to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// `create` on a job that exists. Handling: return the existing job if the
    /// request is a repeat; `ALREADY_EXISTS`.
    #[error("job {job_id} already exists")]
    AlreadyExists { job_id: JobId },

    /// Any command but `create` on a job that was never created. `NOT_FOUND`.
    #[error("job does not exist; create it first")]
    NotFound,

    /// The command is not allowed in the job's state. `FAILED_PRECONDITION`.
    #[error("cannot {command} a job in state {state}")]
    IllegalTransition {
        command: &'static str,
        state: JobState,
    },

    /// The job spec has invalid fields (all of them listed). `INVALID_ARGUMENT`.
    #[error("invalid job spec: {0}")]
    InvalidSpec(Violations),

    /// The planned workflow is invalid (all problems listed). `INVALID_ARGUMENT`.
    #[error("invalid workflow: {0}")]
    InvalidWorkflow(Violations),

    /// The operator closed the service. Retry later; `UNAVAILABLE`.
    #[error("the training service is unavailable: {message}")]
    ServiceUnavailable { message: String },

    /// The operator blocked this base model for now. `UNAVAILABLE`.
    #[error("base model {model} is temporarily blocked: {message}")]
    ModelBlocked { model: BaseModelId, message: String },

    /// The dataset is refused by the service's limits. `INVALID_ARGUMENT`.
    #[error("dataset not admitted: {0}")]
    DatasetRefused(Violations),

    /// The named step is not in the job's workflow. `NOT_FOUND`.
    #[error("step {step} is not part of this job's workflow")]
    UnknownStep { step: StepId },

    /// The step exists but is not queued (already leased, done, ...). `FAILED_PRECONDITION`.
    #[error("step {step} cannot be {action}: it is {status}")]
    StepNotReady {
        step: StepId,
        action: &'static str,
        status: &'static str,
    },

    /// The step is in retry backoff. Retry after `not_before`; `FAILED_PRECONDITION`.
    #[error("step {step} may not be leased before {not_before}")]
    StepNotDue {
        step: StepId,
        not_before: DateTime<Utc>,
    },

    /// The lease id was used before. `ALREADY_EXISTS`.
    #[error("lease id {lease_id} is already in use; leases need fresh ids")]
    LeaseIdReused { lease_id: LeaseId },

    /// No step of this job was ever leased under this id. `NOT_FOUND`.
    #[error("lease {lease_id} is unknown to this job")]
    UnknownLease { lease_id: LeaseId },

    /// The lease ended (expired, failed, or superseded by a retry). The
    /// executor must stop working on it; `FAILED_PRECONDITION`.
    #[error("lease {lease_id} of step {step} is no longer current")]
    StaleLease { lease_id: LeaseId, step: StepId },

    /// Expiry asked before the deadline. `FAILED_PRECONDITION`.
    #[error("lease {lease_id} does not expire before {deadline}")]
    LeaseNotExpired {
        lease_id: LeaseId,
        deadline: DateTime<Utc>,
    },

    /// A restart was reported for a lease whose holder has not restarted:
    /// the registering process is the holder (a reconnect keeps its
    /// leases), or the lease is another executor's. Nothing to end;
    /// `FAILED_PRECONDITION`.
    #[error(
        "lease {lease_id} is held by executor {executor_id} (process {}), which has not restarted",
        instance.as_ref().map_or("unnamed", |i| i.as_str())
    )]
    LeaseHolderLive {
        lease_id: LeaseId,
        executor_id: ExecutorId,
        instance: Option<InstanceId>,
    },

    /// Expiry of a queued step asked before its schedule-to-start timeout. `FAILED_PRECONDITION`.
    #[error("step {step} is not past its schedule-to-start timeout")]
    QueueNotExpired { step: StepId },

    /// A heartbeat with impossible progress figures. `INVALID_ARGUMENT`.
    #[error("invalid progress: {0}")]
    InvalidProgress(String),

    /// A completion whose outputs do not fit the step. `INVALID_ARGUMENT`.
    #[error("invalid step output: {0}")]
    InvalidOutput(Violations),

    /// Approval of an epoch that training did not produce. `INVALID_ARGUMENT`.
    #[error(
        "epoch {epoch} has no LoRA to approve; available epochs: {available:?}{}",
        by_step(steps)
    )]
    UnknownEpoch {
        epoch: u32,
        available: Vec<u32>,
        /// Steps of LoRAs saved on request, approvable by step.
        steps: Vec<u64>,
    },

    /// Approval by step of a step at which no LoRA was saved. `INVALID_ARGUMENT`.
    #[error("no LoRA was saved at step {step}; LoRAs were saved at steps {available:?}")]
    UnknownSave { step: u64, available: Vec<u64> },

    /// A required text field (reviewer, reason) is empty. `INVALID_ARGUMENT`.
    #[error("{field} must not be empty")]
    MissingField { field: &'static str },
}

/// The hint of [`Error::UnknownEpoch`] about LoRAs saved on request.
fn by_step(steps: &[u64]) -> String {
    if steps.is_empty() {
        String::new()
    } else {
        format!("; LoRAs saved on request, approved by step: {steps:?}")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
