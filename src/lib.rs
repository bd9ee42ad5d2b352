//! loraflow: an event-sourced workflow engine for LoRA fine-tuning jobs of
//! image-diffusion models.
//!
//! This facade re-exports the domain ([`core`]); later layers add the engine,
//! the gRPC services and the CLI.

pub use loraflow_core as core;
