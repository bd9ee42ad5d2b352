//! FLUX.1's second text encoder: transformers' `T5EncoderModel` (T5 v1.1 / flan-T5: gated-GELU
//! feed-forward, RMS norms, relative position buckets, no biases) and T5's SentencePiece
//! unigram tokenizer.
//!
//! - [`config`]: the configuration read from `text_encoder_2/config.json`.
//! - [`attention`]: self-attention and the bucketed relative position bias.
//! - [`layer`]: the feed-forwards and the encoder block.
//! - [`encoder`]: the model, loaded by transformers' names, and its adaptable layers.
//! - [`tokenizer`]: `tokenizer_2/spiece.model`: the normaliser, Viterbi segmentation, unknown
//!   and byte-fallback pieces, `</s>` and padding.

pub mod attention;
pub mod config;
pub mod encoder;
pub mod layer;
pub mod tokenizer;

pub use attention::relative_position_bucket;
pub use config::{T5Activation, T5Config};
pub use encoder::T5EncoderModel;
pub use tokenizer::T5Tokenizer;

/// The adaptable linears of a T5 block (attention projections and feed-forward).
pub const T5_TARGETS: &[&str] = &["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"];
