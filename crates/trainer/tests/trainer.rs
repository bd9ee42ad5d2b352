//! Tests of loraflow-trainer: parity with diffusers/transformers, LoRA files, training.
//!
//! One test binary per package: every file beside this one is a module of it, so the
//! dependencies are compiled into one executable rather than once per file.
//! Run one file's tests with its module name as the filter, e.g. `cargo test --test
//! trainer -- accumulation::`.

mod common;

mod accumulation;
mod base_weights;
mod concept;
mod image_training;
mod lora_files;
mod lora_step_parity;
mod pipeline_parity;
mod sdxl_lora_files;
mod sdxl_lora_step_parity;
mod sdxl_lora_text;
mod sdxl_pipeline_parity;
mod sdxl_single_file;
mod sdxl_text_parity;
mod sdxl_trainer;
mod sdxl_training;
mod sdxl_unet_parity;
mod text_vae_parity;
mod training;
mod unet_parity;
mod validation;
mod world;
