//! loraflow: an event-sourced workflow engine for LoRA fine-tuning jobs of
//! image-diffusion models.
//!
//! - [`core`]: the domain (re-exported `loraflow-core`).
//! - [`config`]: the `loraflow.toml` file.
//! - [`clock`]: the engine's clock (follows tokio time, so tests can pause it).
//! - `admission`: datasets listed and checked before a job is created.
//! - [`engine`]: the [`Engine`]: store, projections, scheduler and in-process executors.
//! - `scheduler`: the scheduler runtime over the pure policy in `loraflow_core::schedule`.
//! - [`error`]: the engine's error type.
//! - [`tenancy`]: which URIs a tenant may name (its uploads, its allowed roots).
//! - [`tls`]: the process's TLS crypto provider (ring).
//! - [`api`]: the typed call layer both front-ends share (one function per call).
//! - [`grpc`]: the gRPC server over the engine.
//! - [`http`]: the HTTP/JSON API, the web console, metrics and health.
//! - [`metrics`]: Prometheus metrics of one server process.
//! - [`transfer`]: files through the server (resumable, digest-checked
//!   uploads and downloads, dataset uploads, publishing) for `ArtifactService`.
//! - [`audit`]: replay a job's events and verify their hash chain.
//! - [`webhooks`]: signed, ordered, retried delivery of job events to callback URLs.

pub use loraflow_core as core;

mod admission;
pub mod api;
pub mod audit;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
mod scheduler;
pub mod telemetry;
pub mod tenancy;
pub mod tls;
pub mod transfer;
pub mod webhooks;

pub use admission::admit;
pub use engine::{Engine, EngineBuilder, JobView, NewJob};
pub use error::{Error, Result};
pub use loraflow_executors as executors;
pub use loraflow_store as store;
