//! loraflow: an event-sourced workflow engine for LoRA fine-tuning jobs of
//! image-diffusion models.
//!
//! - [`core`]: the domain (re-exported `loraflow-core`).
//! - [`config`]: the `loraflow.toml` file.
//! - [`clock`]: the engine's clock (follows tokio time, so tests can pause it).
//! - `admission`: datasets listed and checked before a job is created.

pub use loraflow_core as core;

mod admission;
pub mod clock;
pub mod config;

pub use admission::admit;
