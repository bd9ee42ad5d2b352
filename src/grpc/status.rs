//! Engine errors as gRPC statuses.

use loraflow_executors::worker::UNKNOWN_EXECUTOR;
use loraflow_proto::status as wire;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// A status with an `ErrorInfo` naming `reason` in loraflow's error domain.
pub fn with_reason(code: Code, message: String, reason: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, wire::ERROR_DOMAIN, []);
    Status::with_error_details(code, message, details)
}

/// The status for a refused call: the one mapping every front-end answers
/// with (the HTTP/JSON API transcodes it).
pub fn api_status(e: crate::api::ApiError) -> Status {
    match e {
        crate::api::ApiError::Engine { error, field } => to_status(error, field),
        e @ crate::api::ApiError::BaseModelNotFound(_) => {
            with_reason(Code::NotFound, e.to_string(), "BASE_MODEL_NOT_FOUND")
        }
    }
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
            // `invalid_argument` appends the violations to the message once.
            wire::invalid_argument(&v, "invalid request")
        }
        Error::PermissionDenied(v) => {
            let v = match prefix {
                Some(p) => v.nested(p),
                None => v,
            };
            wire::permission_denied(&v, format!("permission denied: {v}"), "URI_NOT_ALLOWED")
        }
        Error::JobNotFound(id) => with_reason(
            Code::NotFound,
            format!("job {id} not found"),
            "JOB_NOT_FOUND",
        ),
        e @ Error::UnknownRequest(_) => {
            with_reason(Code::NotFound, e.to_string(), "UNKNOWN_REQUEST")
        }
        Error::UnknownExecutor(id) => with_reason(
            Code::NotFound,
            format!("executor {id} is not registered; call RegisterExecutor first"),
            UNKNOWN_EXECUTOR,
        ),
        e @ Error::ModelNotFound { .. } => {
            with_reason(Code::NotFound, e.to_string(), "MODEL_NOT_FOUND")
        }
        e @ Error::ModelExists { .. } => {
            with_reason(Code::AlreadyExists, e.to_string(), "MODEL_EXISTS")
        }
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
        Error::Store(e @ S::TamperedLog(_)) => {
            with_reason(Code::DataLoss, e.to_string(), "TAMPERED_LOG")
        }
        Error::Store(e @ S::Missing { .. }) => Status::not_found(e.to_string()),
        Error::Store(e) => Status::internal(e.to_string()),
        Error::Artifacts(e) => Status::unavailable(e.to_string()),
        Error::ShuttingDown => {
            Status::unavailable("the server is shutting down; retry on another replica")
        }
    }
}

#[cfg(test)]
mod tests {
    use loraflow_core::job::{Error as JobError, JobState};
    use loraflow_core::validation::Violations;
    use loraflow_store::Error as S;

    use super::*;

    /// One of each engine and store error (domain errors have their own
    /// table in the proto crate). The match is exhaustive, so a new variant
    /// does not compile until it is listed here.
    fn every_error() -> Vec<Error> {
        let boxed = || -> Box<dyn std::error::Error + Send + Sync> { "down".into() };
        let errors = vec![
            Error::Domain(JobError::NotFound),
            Error::Domain(JobError::IllegalTransition {
                command: "approve",
                state: JobState::Published,
            }),
            Error::InvalidArgument(Violations::default()),
            Error::PermissionDenied(Violations::default()),
            Error::JobNotFound("j".into()),
            Error::UnknownExecutor("gpu-1".into()),
            Error::UnknownRequest("r".into()),
            Error::ModelNotFound {
                tenant: "t".into(),
                name: "m".into(),
            },
            Error::ModelExists {
                tenant: "t".into(),
                name: "m".into(),
            },
            Error::WrongState {
                action: "retry",
                state: JobState::Published,
            },
            Error::Store(S::Domain(JobError::NotFound)),
            Error::Store(S::Conflict {
                job_id: "j".into(),
                attempts: 8,
            }),
            Error::Store(S::StaleEtag {
                job_id: "j".into(),
                expected: 1,
                actual: 2,
            }),
            Error::Store(S::HistoryFull {
                job_id: "j".into(),
                limit: 9,
            }),
            Error::Store(S::Unavailable(boxed())),
            Error::Store(S::Database(boxed())),
            Error::Store(S::Serialization(boxed())),
            Error::Store(S::InvalidUrl {
                url: "x".into(),
                reason: "y".into(),
                accepted: "z",
            }),
            Error::Store(S::InvalidPageToken { reason: "r".into() }),
            Error::Store(S::Migration {
                version: 1,
                name: "n",
                source: boxed(),
            }),
            Error::Store(S::Timeout {
                wanted: 2,
                reached: 1,
            }),
            Error::Store(S::TamperedLog(loraflow_store::ChainError {
                job_id: "j".into(),
                sequence: 1,
                position: 1,
                fault: loraflow_store::ChainFault::Edited,
                detail: "d".into(),
            })),
            Error::Store(S::Missing {
                url: "sqlite://nope.db".into(),
                reason: "no file".into(),
            }),
            Error::Store(S::Key(loraflow_store::KeyError::Invalid {
                what: "k".into(),
                expected: "e",
                reason: "r".into(),
            })),
            Error::Artifacts(loraflow_core::executor::ArtifactError::NotFound { uri: "u".into() }),
            Error::ShuttingDown,
        ];
        for e in &errors {
            match e {
                Error::Domain(_)
                | Error::InvalidArgument(_)
                | Error::PermissionDenied(_)
                | Error::JobNotFound(_)
                | Error::UnknownExecutor(_)
                | Error::UnknownRequest(_)
                | Error::ModelNotFound { .. }
                | Error::ModelExists { .. }
                | Error::WrongState { .. }
                | Error::Artifacts(_)
                | Error::ShuttingDown => {}
                Error::Store(s) => match s {
                    S::Domain(_)
                    | S::Conflict { .. }
                    | S::StaleEtag { .. }
                    | S::HistoryFull { .. }
                    | S::Unavailable(_)
                    | S::Database(_)
                    | S::Serialization(_)
                    | S::InvalidUrl { .. }
                    | S::InvalidPageToken { .. }
                    | S::Migration { .. }
                    | S::Timeout { .. }
                    | S::TamperedLog(_)
                    | S::Missing { .. }
                    | S::Key(_) => {}
                },
            }
        }
        errors
    }

    /// The server turns every `OUT_OF_RANGE` into `RESOURCE_EXHAUSTED`,
    /// taking it for tonic's size limit; no error of ours may be one.
    #[test]
    fn never_out_of_range() {
        for e in every_error() {
            let shown = e.to_string();
            let status = to_status(e, Some("job"));
            assert_ne!(status.code(), Code::OutOfRange, "{shown}");
        }
    }
}
