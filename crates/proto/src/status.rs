//! Domain errors as gRPC statuses, with google.rpc error details.
//!
//! Every status carries an `ErrorInfo` whose `reason` is the error's name in
//! SCREAMING_SNAKE_CASE (`ILLEGAL_TRANSITION`, `STALE_LEASE`, ...) under the
//! domain [`ERROR_DOMAIN`], with the facts as metadata (`state`, `command`,
//! `step`, ...), so clients branch on data rather than on message text.
//! Invalid input also carries a `BadRequest` with one field violation per bad
//! field.
//!
//! `tonic::Status` and `job::Error` are both foreign to this crate, so the
//! mapping is a function ([`job_error`]) rather than a `From` impl.

use std::collections::HashMap;

use loraflow_core::job::Error;
use loraflow_core::validation::Violations;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::convert::nest;

/// The `ErrorInfo.domain` of every loraflow error.
pub const ERROR_DOMAIN: &str = "loraflow.v1";

/// `INVALID_ARGUMENT` listing every violation as a `BadRequest` field
/// violation. `message` is the summary; the violations are appended to it
/// so that clients that ignore details still see them.
pub fn invalid_argument(violations: &Violations, message: impl Into<String>) -> Status {
    let mut message = message.into();
    if !violations.is_empty() {
        message = format!("{message}: {violations}");
    }
    let mut details = bad_request(violations);
    details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `PERMISSION_DENIED` listing every refused field as a `BadRequest` field
/// violation, with `reason` in the `ErrorInfo` (`URI_NOT_ALLOWED`).
pub fn permission_denied(
    violations: &Violations,
    message: impl Into<String>,
    reason: &str,
) -> Status {
    let mut details = bad_request(violations);
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::PermissionDenied, message, details)
}

fn bad_request(violations: &Violations) -> ErrorDetails {
    ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
            .collect::<Vec<_>>(),
    )
}

/// `ABORTED`: the client's etag is not the job's current one (AIP-154). The
/// client should read the job again and decide anew.
pub fn etag_mismatch(given: u64, current: u64) -> Status {
    let meta = HashMap::from([
        ("given".to_owned(), given.to_string()),
        ("current".to_owned(), current.to_string()),
    ]);
    Status::with_error_details(
        Code::Aborted,
        format!("etag {given} is stale; the job is at etag {current}: read it again and retry"),
        ErrorDetails::with_error_info("ETAG_MISMATCH", ERROR_DOMAIN, meta),
    )
}

/// The status for a command the job refused, field paths as the aggregate
/// wrote them.
pub fn job_error(err: &Error) -> Status {
    job_error_at(err, "")
}

/// As [`job_error`], with the violations' field paths nested under
/// `prefix`: `job_error_at(e, "job")` for CreateJob, whose spec travels in the
/// request's `job` field.
pub fn job_error_at(err: &Error, prefix: &str) -> Status {
    let message = err.to_string();
    let (code, reason, meta, violations): (Code, &str, Vec<(&str, String)>, Option<Violations>) =
        match err {
            Error::AlreadyExists { job_id } => (
                Code::AlreadyExists,
                "ALREADY_EXISTS",
                vec![("job_id", job_id.to_string())],
                None,
            ),
            Error::NotFound => (Code::NotFound, "JOB_NOT_FOUND", vec![], None),
            Error::IllegalTransition { command, state } => (
                Code::FailedPrecondition,
                "ILLEGAL_TRANSITION",
                vec![
                    ("command", command.to_string()),
                    ("state", state.to_string()),
                ],
                None,
            ),
            Error::InvalidSpec(v) => (
                Code::InvalidArgument,
                "INVALID_SPEC",
                vec![],
                Some(v.clone()),
            ),
            Error::InvalidWorkflow(v) => (
                Code::InvalidArgument,
                "INVALID_WORKFLOW",
                vec![],
                Some(v.clone()),
            ),
            Error::ServiceUnavailable { message } => (
                Code::Unavailable,
                "SERVICE_UNAVAILABLE",
                vec![("message", message.clone())],
                None,
            ),
            Error::ModelBlocked { model, message } => (
                Code::Unavailable,
                "MODEL_BLOCKED",
                vec![
                    ("base_model", model.to_string()),
                    ("message", message.clone()),
                ],
                None,
            ),
            Error::DatasetRefused(v) => (
                Code::InvalidArgument,
                "DATASET_REFUSED",
                vec![],
                Some(v.clone()),
            ),
            Error::UnknownStep { step } => (
                Code::NotFound,
                "UNKNOWN_STEP",
                vec![("step", step.to_string())],
                None,
            ),
            Error::StepNotReady {
                step,
                action,
                status,
            } => (
                Code::FailedPrecondition,
                "STEP_NOT_READY",
                vec![
                    ("step", step.to_string()),
                    ("action", action.to_string()),
                    ("status", status.to_string()),
                ],
                None,
            ),
            Error::StepNotDue { step, not_before } => (
                Code::FailedPrecondition,
                "STEP_NOT_DUE",
                vec![
                    ("step", step.to_string()),
                    ("not_before", not_before.to_rfc3339()),
                ],
                None,
            ),
            Error::LeaseIdReused { lease_id } => (
                Code::AlreadyExists,
                "LEASE_ID_REUSED",
                vec![("lease_id", lease_id.to_string())],
                None,
            ),
            Error::UnknownLease { lease_id } => (
                Code::NotFound,
                "UNKNOWN_LEASE",
                vec![("lease_id", lease_id.to_string())],
                None,
            ),
            Error::StaleLease { lease_id, step } => (
                Code::FailedPrecondition,
                "STALE_LEASE",
                vec![
                    ("lease_id", lease_id.to_string()),
                    ("step", step.to_string()),
                ],
                None,
            ),
            Error::LeaseNotExpired { lease_id, deadline } => (
                Code::FailedPrecondition,
                "LEASE_NOT_EXPIRED",
                vec![
                    ("lease_id", lease_id.to_string()),
                    ("deadline", deadline.to_rfc3339()),
                ],
                None,
            ),
            Error::QueueNotExpired { step } => (
                Code::FailedPrecondition,
                "QUEUE_NOT_EXPIRED",
                vec![("step", step.to_string())],
                None,
            ),
            Error::LeaseHolderLive {
                lease_id,
                executor_id,
                instance,
            } => (
                Code::FailedPrecondition,
                "LEASE_HOLDER_LIVE",
                vec![
                    ("lease_id", lease_id.to_string()),
                    ("executor_id", executor_id.to_string()),
                    (
                        "instance",
                        instance.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                    ),
                ],
                None,
            ),
            Error::InvalidProgress(problem) => (
                Code::InvalidArgument,
                "INVALID_PROGRESS",
                vec![],
                Some(one("progress", problem)),
            ),
            Error::InvalidOutput(v) => (
                Code::InvalidArgument,
                "INVALID_OUTPUT",
                vec![],
                Some(v.clone()),
            ),
            Error::UnknownEpoch {
                epoch,
                available,
                steps,
            } => (
                Code::InvalidArgument,
                "UNKNOWN_EPOCH",
                vec![
                    ("epoch", epoch.to_string()),
                    ("available", joined(available)),
                    ("steps", joined(steps)),
                ],
                Some(one("epoch", &message)),
            ),
            Error::UnknownSave { step, available } => (
                Code::InvalidArgument,
                "UNKNOWN_SAVE",
                vec![("step", step.to_string()), ("available", joined(available))],
                Some(one("step", &message)),
            ),
            Error::MissingField { field } => (
                Code::InvalidArgument,
                "MISSING_FIELD",
                vec![("field", field.to_string())],
                Some(one(field, &message)),
            ),
        };
    let meta: HashMap<String, String> = meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut details = match &violations {
        Some(v) => bad_request(&nest(v.clone(), prefix)),
        None => ErrorDetails::new(),
    };
    details.set_error_info(reason, ERROR_DOMAIN, meta);
    Status::with_error_details(code, message, details)
}

fn one(field: &str, description: &str) -> Violations {
    let mut v = Violations::default();
    v.push(field, description);
    v
}

/// The field violations a status carries, as domain [`Violations`]; empty
/// when it has none. For clients and tests.
pub fn violations(status: &Status) -> Violations {
    let mut out = Violations::default();
    if let Some(br) = status.get_details_bad_request() {
        for v in br.field_violations {
            out.push(v.field, v.description);
        }
    }
    out
}

/// Numbers as ErrorInfo metadata: `1,2,3`.
fn joined<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use loraflow_core::job::JobState;

    fn sample_violations() -> Violations {
        let mut v = Violations::default();
        v.push(
            "params.learning_rate",
            "learning_rate 5 is above the maximum 0.01",
        );
        v.push("naming.subject", "subject must not be empty");
        v
    }

    #[test]
    fn bad_request_details_round_trip() {
        let v = sample_violations();
        let status = invalid_argument(&v, "invalid job spec");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("learning_rate 5"),
            "{}",
            status.message()
        );
        assert_eq!(violations(&status), v);
        let details = status.get_error_details();
        let br = details.bad_request().unwrap();
        assert_eq!(br.field_violations[1].field, "naming.subject");
        assert_eq!(details.error_info().unwrap().domain, ERROR_DOMAIN);
    }

    #[test]
    fn spec_errors_nest_under_the_request_field() {
        let status = job_error_at(&Error::InvalidSpec(sample_violations()), "job");
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<_> = violations(&status).0.into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["job.params.learning_rate", "job.naming.subject"]);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "INVALID_SPEC"
        );
    }

    #[test]
    fn illegal_transitions_name_the_state() {
        let status = job_error(&Error::IllegalTransition {
            command: "approve",
            state: JobState::Processing,
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("Processing"));
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "ILLEGAL_TRANSITION");
        assert_eq!(info.metadata["state"], "Processing");
        assert_eq!(info.metadata["command"], "approve");
    }

    #[test]
    fn every_variant_has_its_documented_code() {
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let v = sample_violations;
        let cases = [
            (
                Error::AlreadyExists { job_id: "j".into() },
                Code::AlreadyExists,
            ),
            (Error::NotFound, Code::NotFound),
            (
                Error::IllegalTransition {
                    command: "cancel",
                    state: JobState::Published,
                },
                Code::FailedPrecondition,
            ),
            (Error::InvalidSpec(v()), Code::InvalidArgument),
            (Error::InvalidWorkflow(v()), Code::InvalidArgument),
            (
                Error::ServiceUnavailable {
                    message: "maintenance".into(),
                },
                Code::Unavailable,
            ),
            (
                Error::ModelBlocked {
                    model: "sdxl".into(),
                    message: "licence review".into(),
                },
                Code::Unavailable,
            ),
            (Error::DatasetRefused(v()), Code::InvalidArgument),
            (Error::UnknownStep { step: "x".into() }, Code::NotFound),
            (
                Error::StepNotReady {
                    step: "train".into(),
                    action: "leased",
                    status: "completed",
                },
                Code::FailedPrecondition,
            ),
            (
                Error::StepNotDue {
                    step: "train".into(),
                    not_before: at,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::LeaseIdReused {
                    lease_id: "l".into(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::UnknownLease {
                    lease_id: "l".into(),
                },
                Code::NotFound,
            ),
            (
                Error::StaleLease {
                    lease_id: "l".into(),
                    step: "train".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::LeaseNotExpired {
                    lease_id: "l".into(),
                    deadline: at,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::QueueNotExpired {
                    step: "train".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::LeaseHolderLive {
                    lease_id: "l".into(),
                    executor_id: "gpu-1".into(),
                    instance: Some("p1".into()),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::InvalidProgress("percent 120 is outside 0..=100".into()),
                Code::InvalidArgument,
            ),
            (Error::InvalidOutput(v()), Code::InvalidArgument),
            (
                Error::UnknownEpoch {
                    epoch: 7,
                    available: vec![1, 2],
                    steps: vec![],
                },
                Code::InvalidArgument,
            ),
            (
                Error::UnknownSave {
                    step: 7,
                    available: vec![25],
                },
                Code::InvalidArgument,
            ),
            (
                Error::MissingField { field: "reason" },
                Code::InvalidArgument,
            ),
        ];
        for (err, code) in cases {
            let status = job_error(&err);
            assert_eq!(status.code(), code, "{err:?}");
            assert_eq!(status.message(), err.to_string());
            let details = status.get_error_details();
            assert!(details.error_info().is_some(), "{err:?} has no ErrorInfo");
            if code == Code::InvalidArgument {
                assert!(!violations(&status).is_empty(), "{err:?} has no BadRequest");
            }
        }
    }

    #[test]
    fn unavailable_carries_the_operators_message() {
        let status = job_error(&Error::ServiceUnavailable {
            message: "maintenance until 14:00".into(),
        });
        assert!(status.message().contains("maintenance until 14:00"));
    }

    #[test]
    fn unknown_epochs_point_at_the_epoch_field() {
        let status = job_error(&Error::UnknownEpoch {
            epoch: 7,
            available: vec![1, 2],
            steps: vec![25],
        });
        assert_eq!(violations(&status).0[0].field, "epoch");
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.metadata["available"], "1,2");
        assert_eq!(info.metadata["steps"], "25");
        assert!(status.message().contains("approved by step: [25]"));
        let status = job_error(&Error::UnknownSave {
            step: 7,
            available: vec![25],
        });
        assert_eq!(violations(&status).0[0].field, "step");
    }

    #[test]
    fn etag_mismatch_is_aborted() {
        let status = etag_mismatch(3, 5);
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "ETAG_MISMATCH"
        );
    }
}
