//! The worker runtime: runs any set of [`Executor`](loraflow_core::executor::Executor)s
//! behind the executor protocol ([`WorkerApi`]), in-process or over gRPC.

mod api;
mod grpc;
mod outcome;
mod runtime;

pub use api::{ApiError, HeartbeatReply, Registration, WorkerApi};
pub use grpc::{ConnectError, GrpcWorkerApi, UNKNOWN_EXECUTOR};
pub use outcome::{OutcomeLimits, OutcomeTooLarge};
pub use runtime::{RegistrationRefused, Worker, WorkerOptions};
