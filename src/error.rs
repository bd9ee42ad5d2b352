//! The engine's error: what an embedding service or the gRPC layer gets back.

use loraflow_core::ids::{ExecutorId, JobId};
use loraflow_core::job::JobState;
use loraflow_core::validation::Violations;

/// Why an engine call failed. Each variant says how to handle it and the
/// gRPC status it becomes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job refused the command (illegal transition, invalid spec, ...);
    /// nothing was written. The gRPC status follows the inner error.
    #[error(transparent)]
    Domain(#[from] loraflow_core::job::Error),

    /// The request itself is malformed; every bad field is listed.
    /// `INVALID_ARGUMENT` with `BadRequest` details.
    #[error("invalid request: {0}")]
    InvalidArgument(Violations),

    /// The request names something the tenant may not touch (a dataset
    /// URI outside its uploads and allowed roots); every such field is
    /// listed. Nothing was read or written. `PERMISSION_DENIED` with
    /// `BadRequest` details and reason `URI_NOT_ALLOWED`.
    #[error("permission denied: {0}")]
    PermissionDenied(Violations),

    /// No such job for this tenant (also when it belongs to another tenant,
    /// so that ids do not leak). `NOT_FOUND`.
    #[error("job {0} not found")]
    JobNotFound(JobId),

    /// No job was created with this request id (by this tenant): there is
    /// nothing to resume; submit the job again. `NOT_FOUND` with reason
    /// `UNKNOWN_REQUEST`.
    #[error(
        "no job was created with request id {0:?}; submit the job again (with --request-id {0} to keep it idempotent)"
    )]
    UnknownRequest(String),

    /// The executor must register (again) before polling. `NOT_FOUND` with
    /// reason `UNKNOWN_EXECUTOR`.
    #[error("executor {0} is not registered; call RegisterExecutor first")]
    UnknownExecutor(ExecutorId),

    /// The call needs the job in another state. `FAILED_PRECONDITION`.
    #[error("cannot {action} a job in state {state}")]
    WrongState {
        action: &'static str,
        state: JobState,
    },

    /// Storage failed or refused (conflict, stale etag, database down); see
    /// the inner error for its status.
    #[error(transparent)]
    Store(#[from] loraflow_store::Error),

    /// The artifact store failed. `UNAVAILABLE`.
    #[error("artifact store: {0}")]
    Artifacts(#[from] loraflow_core::executor::ArtifactError),

    /// The tenant has no registered base model of that name (another
    /// tenant's is not its own). `NOT_FOUND`.
    #[error("tenant {tenant} has no registered base model {name:?}; `loraflow models` lists them")]
    ModelNotFound { tenant: String, name: String },

    /// The tenant already registered a base model of that name; delete it
    /// first or choose another name. `ALREADY_EXISTS`.
    #[error(
        "tenant {tenant} already registered a base model {name:?}; delete it first (`loraflow models delete {name}`) or choose another name"
    )]
    ModelExists { tenant: String, name: String },

    /// The engine is shutting down. `UNAVAILABLE`.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
