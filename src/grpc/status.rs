//! Engine errors as gRPC statuses.

use loraflow_executors::worker::UNKNOWN_EXECUTOR;
use loraflow_proto::status as wire;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

fn with_reason(code: Code, message: String, reason: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, wire::ERROR_DOMAIN, []);
    Status::with_error_details(code, message, details)
}

/// The status for an engine error. `prefix` nests field violations of a
/// request body (`job` for `CreateJob`).
pub fn to_status(e: Error, prefix: Option<&str>) -> Status {
    use loraflow_store::Error as S;
    match e {
        Error::Domain(d) | Error::Store(S::Domain(d)) => match prefix {
            Some(p) => wire::job_error_at(&d, p),
            None => wire::job_error(&d),
        },
        Error::InvalidArgument(v) => {
            let v = match prefix {
                Some(p) => v.nested(p),
                None => v,
            };
            wire::invalid_argument(&v, format!("invalid request: {v}"))
        }
        Error::JobNotFound(id) => with_reason(
            Code::NotFound,
            format!("job {id} not found"),
            "JOB_NOT_FOUND",
        ),
        Error::UnknownExecutor(id) => with_reason(
            Code::NotFound,
            format!("executor {id} is not registered; call RegisterExecutor first"),
            UNKNOWN_EXECUTOR,
        ),
        e @ Error::WrongState { .. } => {
            with_reason(Code::FailedPrecondition, e.to_string(), "WRONG_STATE")
        }
        Error::Store(S::StaleEtag {
            expected, actual, ..
        }) => wire::etag_mismatch(expected, actual),
        Error::Store(e @ S::Conflict { .. }) => {
            with_reason(Code::Aborted, e.to_string(), "CONFLICT")
        }
        Error::Store(e @ S::HistoryFull { .. }) => {
            with_reason(Code::ResourceExhausted, e.to_string(), "HISTORY_FULL")
        }
        Error::Store(e @ S::InvalidPageToken { .. }) => {
            let mut v = loraflow_core::validation::Violations::default();
            v.push("page_token", e.to_string());
            wire::invalid_argument(&v, e.to_string())
        }
        Error::Store(e @ S::Timeout { .. }) => Status::deadline_exceeded(e.to_string()),
        Error::Store(e @ (S::Unavailable { .. } | S::Database { .. })) => {
            Status::unavailable(e.to_string())
        }
        Error::Store(e @ S::Chain(_)) => Status::data_loss(e.to_string()),
        Error::Store(e) => Status::internal(e.to_string()),
        Error::Artifacts(e) => Status::unavailable(e.to_string()),
        Error::ShuttingDown => {
            Status::unavailable("the server is shutting down; retry on another replica")
        }
    }
}
