//! The typed call layer under both front-ends: one function per
//! `JobService` call, taking the caller ([`Requester`]) and the request as the
//! wire contract defines it, checking it once, calling the engine and
//! returning a domain result or one [`ApiError`].
//!
//! The gRPC handlers (`crate::grpc`) and the HTTP/JSON handlers
//! (`crate::http`) are thin adapters over it: they authenticate, build the
//! request, and encode the answer. A check or a limit lives here (or in the
//! request conversions of `loraflow-proto` that this layer calls), never in
//! an adapter.
//!
//! - [`jobs`]: the `JobService` calls.
//! - [`audit`]: verifying a job's log.
//! - [`artifacts`]: one artifact of a job, by digest.
//! - [`datasets`]: a dataset uploaded whole, stored in the caller's namespace.
//! - [`ApiError`]: what a call refuses with; `crate::grpc` maps it to a
//!   status, and the HTTP front-end transcodes that status to JSON.

pub mod artifacts;
pub mod audit;
pub mod datasets;
pub mod jobs;
pub mod models;

pub use jobs::{Created, JobsPage, StatusAnswer};
pub use models::{Models, SchemaFor};

use loraflow_core::ids::{BaseModelId, TenantId};
use loraflow_core::validation::Violations;

/// Which front-end a call came through: it names the call's tracing span
/// (`grpc` or `http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Grpc,
    Http,
}

/// Who makes a call: the tenant its token stands for, and the front-end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub tenant: TenantId,
    pub via: Via,
}

impl Requester {
    pub fn new(tenant: TenantId, via: Via) -> Self {
        Self { tenant, via }
    }

    /// The span of one call about one job (`job` empty: recorded by the
    /// engine once known).
    pub(crate) fn span(&self, method: &'static str, job: Option<&str>) -> tracing::Span {
        let tenant = &self.tenant;
        match (self.via, job) {
            (Via::Grpc, Some(job)) => tracing::info_span!("grpc", method, %tenant, job),
            (Via::Grpc, None) => {
                tracing::info_span!("grpc", method, %tenant, job = tracing::field::Empty)
            }
            (Via::Http, Some(job)) => tracing::info_span!("http", method, %tenant, job),
            (Via::Http, None) => {
                tracing::info_span!("http", method, %tenant, job = tracing::field::Empty)
            }
        }
    }

    /// The span of a call about no job in particular.
    pub(crate) fn span_tenant(&self, method: &'static str) -> tracing::Span {
        let tenant = &self.tenant;
        match self.via {
            Via::Grpc => tracing::info_span!("grpc", method, %tenant),
            Via::Http => tracing::info_span!("http", method, %tenant),
        }
    }
}

/// Why a call was refused. Every front-end answers it with the same code,
/// message and details (`crate::grpc::status::api_status`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The engine refused or failed; `field` nests the violations of a
    /// request body under its field (`job` for `CreateJob`).
    #[error("{error}")]
    Engine {
        error: crate::Error,
        field: Option<&'static str>,
    },
    /// `GetParameterSchema` of a model the catalogue does not list.
    #[error("base model {:?} is not in the catalogue, nor one this tenant registered; see ListBaseModels", .0.as_str())]
    BaseModelNotFound(BaseModelId),
}

impl ApiError {
    /// An engine error about the request field `field`.
    pub fn at(error: crate::Error, field: &'static str) -> Self {
        Self::Engine {
            error,
            field: Some(field),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(error: crate::Error) -> Self {
        Self::Engine { error, field: None }
    }
}

impl From<Violations> for ApiError {
    fn from(v: Violations) -> Self {
        crate::Error::InvalidArgument(v).into()
    }
}
