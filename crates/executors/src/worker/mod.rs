//! The worker runtime: runs any set of [`Executor`](loraflow_core::executor::Executor)s
//! behind the executor protocol ([`WorkerApi`]), in-process or over gRPC,
//! with artifacts in the store or through the server ([`RemoteArtifacts`]
//! over a [`TransferClient`]).

mod api;
mod grpc;
mod outcome;
mod remote_artifacts;
mod runtime;
mod transfer;

pub use api::{ApiError, HeartbeatReply, Registration, WorkerApi};
pub use grpc::{ConnectError, GrpcWorkerApi, UNKNOWN_EXECUTOR};
pub use outcome::{OutcomeLimits, OutcomeTooLarge};
pub use remote_artifacts::RemoteArtifacts;
pub use runtime::{ArtifactAccess, RegistrationRefused, Worker, WorkerOptions};
pub use transfer::{RetryPolicy, TransferClient, UploadTarget};
