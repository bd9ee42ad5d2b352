//! Refusals as JSON, in the shape of AIP-193: the gRPC status of the same
//! refusal (one mapping, `crate::grpc::status::api_status`), transcoded.
//!
//! ```json
//! {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "...",
//!   "details": [
//!     {"@type": "type.googleapis.com/google.rpc.BadRequest",
//!      "fieldViolations": [{"field": "job_id", "description": "..."}]},
//!     {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
//!      "reason": "INVALID_ARGUMENT", "domain": "loraflow.v1", "metadata": {}}]}}
//! ```

use std::collections::BTreeMap;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use loraflow_core::validation::Violations;
use serde::Serialize;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use utoipa::ToSchema;

use crate::api::ApiError;

/// The body of every refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorStatus,
}

/// `google.rpc.Status` as JSON, with the HTTP status as `code`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorStatus {
    /// The HTTP status code.
    pub code: u16,
    /// The gRPC code's name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...).
    pub status: String,
    pub message: String,
    /// `google.rpc.BadRequest` (every bad field) and `google.rpc.ErrorInfo`
    /// (the reason, in domain `loraflow.v1`), when the refusal has them.
    pub details: Vec<ErrorDetail>,
}

/// One detail of a refusal, told apart by `@type`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "@type")]
pub enum ErrorDetail {
    /// Every bad field of the request.
    #[serde(rename = "type.googleapis.com/google.rpc.BadRequest")]
    BadRequest {
        #[serde(rename = "fieldViolations")]
        field_violations: Vec<FieldViolation>,
    },
    /// Why, as a machine-readable reason.
    #[serde(rename = "type.googleapis.com/google.rpc.ErrorInfo")]
    ErrorInfo {
        /// `INVALID_ARGUMENT`, `URI_NOT_ALLOWED`, ...
        reason: String,
        /// `loraflow.v1`.
        domain: String,
        metadata: BTreeMap<String, String>,
    },
}

/// One bad field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldViolation {
    /// The field's path in the request (`job.params.epochs`, `reason`).
    pub field: String,
    /// What was given and what is allowed.
    pub description: String,
}

/// A refusal of the HTTP API.
#[derive(Debug)]
pub struct HttpError {
    status: Status,
    /// Overrides the code's usual HTTP status (413 for a body too large).
    http: Option<StatusCode>,
}

impl HttpError {
    pub fn new(status: Status) -> Self {
        Self { status, http: None }
    }

    /// `INVALID_ARGUMENT` listing `violations`.
    pub fn invalid(violations: &Violations) -> Self {
        Self::new(loraflow_proto::status::invalid_argument(
            violations,
            "invalid request",
        ))
    }

    /// One bad field.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        let mut v = Violations::default();
        v.push(field, description.into());
        Self::invalid(&v)
    }

    /// The request body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: Status::resource_exhausted(format!(
                "the request body is larger than the limit of {limit} bytes"
            )),
            http: Some(StatusCode::PAYLOAD_TOO_LARGE),
        }
    }

    /// The gRPC status this refusal transcodes.
    pub fn status(&self) -> &Status {
        &self.status
    }
}

impl From<Status> for HttpError {
    fn from(status: Status) -> Self {
        Self::new(status)
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self::new(crate::grpc::status::api_status(e))
    }
}

/// The HTTP status of a gRPC code (google.rpc.Code's table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The name of a gRPC code, as google.rpc.Code spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The details a status carries.
fn details(status: &Status) -> Vec<ErrorDetail> {
    let mut out = Vec::new();
    let d = status.get_error_details();
    if let Some(br) = d.bad_request() {
        out.push(ErrorDetail::BadRequest {
            field_violations: br
                .field_violations
                .iter()
                .map(|v| FieldViolation {
                    field: v.field.clone(),
                    description: v.description.clone(),
                })
                .collect(),
        });
    }
    if let Some(info) = d.error_info() {
        out.push(ErrorDetail::ErrorInfo {
            reason: info.reason.clone(),
            domain: info.domain.clone(),
            metadata: info
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    out
}

impl ErrorBody {
    /// The body of `status`, answered with HTTP status `http`.
    pub fn of(status: &Status, http: StatusCode) -> Self {
        Self {
            error: ErrorStatus {
                code: http.as_u16(),
                status: code_name(status.code()).to_owned(),
                message: status.message().to_owned(),
                details: details(status),
            },
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let http = self.http.unwrap_or_else(|| http_status(self.status.code()));
        let mut resp = (http, Json(ErrorBody::of(&self.status, http))).into_response();
        if http == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
