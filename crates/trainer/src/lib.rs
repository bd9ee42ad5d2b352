//! loraflow's native LoRA trainer for image-diffusion models, on burn.
//!
//! It loads the models users already have (a diffusers folder or an SD1.x single-file
//! checkpoint), encodes a folder of captioned images once, attaches LoRA adapters to the frozen
//! UNet (and text encoder), trains them with the usual diffusion objective, renders samples, and
//! writes LoRA files in the formats ComfyUI, A1111 and diffusers load (kohya `lora_unet_*` /
//! `lora_te_*` keys with `ss_*` metadata, or PEFT `lora_A`/`lora_B`). The device (`cpu`, `wgpu`,
//! `vulkan`, `cuda:N`) is chosen at run time.
//!
//! # Layout
//!
//! - [`error`]: the crate's [`Error`] and [`Result`].
//! - [`device`]: configuration string → burn device.
//! - [`tensor_file`]: safetensors reading and writing as `f32` host tensors.
//! - [`rng`]: seeded host-side random streams (reproducible on every device).
//! - [`weights`]: loading PyTorch-named weights into any model of the crate.
//! - [`unet`]: diffusers' `UNet2DConditionModel` (SD1.x/SD2.x and SDXL), config-driven.
//! - [`clip`]: transformers' `CLIPTextModel`, `CLIPTextModelWithProjection` and CLIP's BPE
//!   tokenizer.
//! - [`vae`]: diffusers' `AutoencoderKL`.
//! - [`pipeline`]: a whole model from a diffusers folder or a single-file checkpoint.
//! - [`sdxl`]: Stable Diffusion XL: its folder, two text encoders and micro-conditioning.
//! - [`flux`]: FLUX.1's transformer (diffusers' `FluxTransformer2DModel`): double- and
//!   single-stream blocks, three-axis rotary positions, timestep/guidance/pooled-text
//!   conditioning, loaded from diffusers' weights.
//! - [`t5`]: transformers' `T5EncoderModel` (FLUX.1's second text encoder) and T5's
//!   SentencePiece unigram tokenizer.
//! - [`sample`]: text to image with DDIM or Euler and guidance, PNGs with text chunks.
//! - [`data`]: kohya-style image folders, captions, buckets, latent and text caches.
//! - [`lora`]: adaptable layers, target patterns, kohya and PEFT files, merging.
//! - [`schedule`]: the DDPM noise schedule, noising, targets and min-SNR weights.
//! - [`train`]: the training step, optimiser, gradient clipping, learning-rate schedules, and the
//!   examples and batches of a run.
//! - [`world`]: the procedural shapes world the demo model is trained on, and a reader that
//!   scores what a picture shows.
//! - [`trainer`]: [`TrainConfig`] → [`Trainer::run`] → [`TrainOutput`], the API the `train`
//!   executor wraps.

pub mod clip;
pub mod data;
pub mod device;
pub mod error;
pub mod flux;
pub mod lora;
pub mod pipeline;
pub mod rng;
pub mod sample;
pub mod schedule;
pub mod sdxl;
pub mod t5;
pub mod tensor_file;
pub mod train;
pub mod trainer;
pub mod unet;
pub mod vae;
pub mod weights;
pub mod world;

pub use error::{Error, Result};
pub use trainer::{
    CancelSignal, Controls, NeverCancel, ProgressEvent, ProgressSink, SaveReason, SavedLora,
    SavedSamples, StepProgress, TrainConfig, TrainOutput, Trainer, TrainingState, ValidationPoint,
};

/// Compiles the README's example as a doctest, so the documented API cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
