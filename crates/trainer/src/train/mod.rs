//! The pieces of a training step.
//!
//! - [`config`]: [`TrainConfig`](config::TrainConfig) and its parts, with validation.
//! - [`dataset`]: pre-computed latents and text-encoder states.
//! - [`examples`]: the examples of a run and each epoch's bucketed batches.
//! - [`flow`]: FLUX.1's flow-matching objective (noising, packing, target `ε − x`, weighting).
//! - [`flow_step`]: one optimiser step of the Flux transformer's adapters.
//! - [`flow_timesteps`]: flow-matching σ sampling (uniform, sigmoid, shift, flux_shift,
//!   logit-normal, mode) and loss weightings.
//! - [`step`]: noising, targets, the min-SNR-weighted loss.
//! - [`optim`]: AdamW on the adapters, global-norm gradient clipping.
//! - [`lr`]: constant, linear and cosine schedules with warm-up.
//! - [`full`]: full fine-tuning of the VAE and the UNet (every weight, not adapters).

pub mod config;
pub mod dataset;
pub mod examples;
pub mod flow;
pub mod flow_step;
pub mod flow_timesteps;
pub mod full;
pub mod lr;
pub mod optim;
pub mod step;
pub mod validation;
