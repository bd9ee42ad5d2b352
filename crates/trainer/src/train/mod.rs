//! The pieces of a training step.
//!
//! - [`config`]: [`TrainConfig`](config::TrainConfig) and its parts, with validation.
//! - [`dataset`]: pre-computed latents and text-encoder states.
//! - [`examples`]: the examples of a run and each epoch's bucketed batches.
//! - [`step`]: noising, targets, the min-SNR-weighted loss.
//! - [`optim`]: AdamW on the adapters, global-norm gradient clipping.
//! - [`lr`]: constant, linear and cosine schedules with warm-up.
//! - [`full`]: full fine-tuning of the VAE and the UNet (every weight, not adapters).

pub mod config;
pub mod dataset;
pub mod examples;
pub mod full;
pub mod lr;
pub mod optim;
pub mod step;
pub mod validation;
