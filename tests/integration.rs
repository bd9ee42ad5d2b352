//! End-to-end tests of loraflow: real servers, stores and clients on loopback.
//!
//! One test binary per package: every file beside this one is a module of it, so the
//! dependencies are compiled into one executable rather than once per file.
//! Run one file's tests with its module name as the filter, e.g. `cargo test --test
//! integration -- audit::`.

mod common;
/// The S3-compatible server (moto) the S3 tests start on loopback.
#[cfg(feature = "s3")]
#[path = "../crates/executors/tests/support/s3_server.rs"]
mod s3_server;

mod audit;
mod audit_cli;
mod cli;
mod cli_api;
mod cli_edges;
mod console_browser;
mod custom_models;
mod edges;
mod engine_embedded;
mod engine_flux;
mod engine_sdxl;
mod examples;
mod faults;
mod grpc_api;
mod grpc_transport;
mod http_api;
mod models_check;
mod openapi_wire;
mod outcome_size;
mod params_truth;
mod poll_steps;
mod request_ids;
mod s3;
mod s3_cli;
mod scheduler_clock;
mod security;
mod signals;
mod submit_retry;
mod telemetry;
mod three_folders;
mod unservable;
mod upload_restart;
#[path = "webhooks/main.rs"]
mod webhooks;
mod worker_engines;
mod worker_restart;
