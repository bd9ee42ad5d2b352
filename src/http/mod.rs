//! The HTTP face of the engine, on its own address (`[server] http_listen`,
//! `loraflow serve --http`): the JSON API, the web console, metrics and
//! health. See `docs/http.md`.
//!
//! - `server`: the router, limits, security headers, cross-origin checks.
//! - `jobs`: the `JobService` calls over JSON, thin over [`crate::api`].
//! - `review`: artifacts' bytes and the verification of a job's log.
//! - `datasets`: dataset uploads (`multipart/form-data`).
//! - `sse`: watching a job as Server-Sent Events, resumable.
//! - `body`: JSON bodies and query strings, checked.
//! - `wire`: the JSON answers.
//! - `error`: refusals as AIP-193 JSON, transcoded from the gRPC status.
//! - `openapi`: the OpenAPI document, generated from the handlers.
//! - `health`: `/healthz`, `/readyz`, `/metrics`.
//! - `console`: the web console's pages.

mod body;
mod console;
mod datasets;
mod error;
mod health;
mod jobs;
mod openapi;
mod review;
mod server;
mod sse;
mod wire;

pub use error::{ErrorBody, HttpError};
pub use openapi::ApiDoc;
pub use server::{AppState, CSP, HttpOptions, router, serve};
