//! The text side of Stable Diffusion: transformers' `CLIPTextModel` and CLIP's BPE tokenizer.
//!
//! - [`config`]: the configuration read from `text_encoder/config.json`.
//! - [`model`]: the encoder, `clip_skip`, and its adaptable layers (kohya `lora_te_*` keys).
//! - [`projection`]: `CLIPTextModelWithProjection`, SDXL's second encoder (penultimate state
//!   and projected pooled output).
//! - [`tokenizer`]: `tokenizer/vocab.json` + `merges.txt`, 77-token framing and padding.

pub mod config;
pub mod model;
pub mod projection;
pub mod tokenizer;

pub use config::{ClipActivation, ClipTextConfig};
pub use model::{ClipTextModel, ids_tensor};
pub use projection::{ClipProjectionConfig, ClipTextModelWithProjection, ProjectedOutput};
pub use tokenizer::ClipTokenizer;

/// kohya's text-encoder adapter targets: the attention projections and the MLP.
pub const TE_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
