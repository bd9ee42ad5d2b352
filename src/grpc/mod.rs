//! The gRPC face of the engine.
//!
//! - [`serve`]: the server (JobService, ExecutorService, health, reflection).
//! - [`auth`]: bearer tokens per tenant and per executor.
//! - `jobs` / `executors`: the two services, thin over the engine's API.
//! - `fleet`: `ListExecutors`, the connected executors a tenant may see.
//! - `models`: the catalogue's base models and those a tenant registered.
//! - `artifacts`: `ArtifactService`, thin over [`crate::transfer`].
//! - `status`: engine errors as gRPC statuses.

mod artifacts;
pub mod auth;
mod executors;
mod fleet;
mod jobs;
mod server;
pub mod status;

pub use server::{ServeError, ServeOptions, serve};
