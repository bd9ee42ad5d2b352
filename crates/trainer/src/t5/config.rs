//! The encoder's configuration, transformers' `T5Config` (`text_encoder_2/config.json` of a
//! FLUX.1 folder).

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The feed-forward's activation (`feed_forward_proj`'s last part; `gated-gelu` is `gelu_new`,
/// the tanh approximation, as transformers maps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum T5Activation {
    /// `relu` (the original T5).
    Relu,
    /// Exact (erf) GELU, `gelu`.
    Gelu,
    /// The tanh approximation of GELU, `gelu_new` (T5 v1.1, flan-T5, FLUX's T5-XXL).
    GeluNew,
    /// `silu`.
    Silu,
}

/// Configuration of a [`super::T5EncoderModel`], under transformers' key names. The defaults
/// are T5 v1.1 XXL's, FLUX.1's second text encoder.
#[derive(Config, Debug, PartialEq)]
pub struct T5Config {
    /// Vocabulary size (rows of `shared`).
    #[config(default = 32_128)]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[config(default = 4096)]
    pub d_model: usize,
    /// Width of each attention head (`num_heads · d_kv` need not be `d_model`).
    #[config(default = 64)]
    pub d_kv: usize,
    /// Width of the feed-forward.
    #[config(default = 10_240)]
    pub d_ff: usize,
    /// Encoder blocks.
    #[config(default = 24)]
    pub num_layers: usize,
    /// Attention heads.
    #[config(default = 64)]
    pub num_heads: usize,
    /// Relative position buckets (half for each direction).
    #[config(default = 32)]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which all relative positions share the last bucket.
    #[config(default = 128)]
    pub relative_attention_max_distance: usize,
    /// Added to the mean square of the RMS norms.
    #[config(default = 1e-6)]
    pub layer_norm_epsilon: f64,
    /// Whether the feed-forward is gated (`gated-*`: `wo(act(wi_0 x) · wi_1 x)`) rather than
    /// `wo(act(wi x))`.
    #[config(default = true)]
    pub gated: bool,
    /// The feed-forward's activation.
    #[config(default = "T5Activation::GeluNew")]
    pub activation: T5Activation,
}

/// The largest value accepted for any width or count (T5-XXL uses at most 32 128).
const MAX_WIDTH: usize = 1 << 20;

impl T5Config {
    /// Reads a transformers `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_transformers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed transformers config, filling transformers' defaults for absent keys
    /// where they are T5 v1.1's, and checks it ([`validate`](Self::validate)).
    pub fn from_transformers(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("config", value, "expected a JSON object"))?;
        if let Some(kind) = obj.get("model_type").and_then(Value::as_str)
            && kind != "t5"
        {
            return Err(Error::Unsupported {
                field: "model_type".into(),
                value: kind.into(),
                hint: "only T5 configs are read as a T5 encoder".into(),
            });
        }
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let count = |key: &str, default: usize| -> Result<usize> {
            match get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| Error::invalid(key, v, "expected a non-negative integer")),
            }
        };
        let d = Self::new();
        let (gated, activation) = match get("feed_forward_proj") {
            None => (d.gated, d.activation),
            Some(v) => parse_feed_forward(v)?,
        };
        let config = Self {
            vocab_size: count("vocab_size", d.vocab_size)?,
            d_model: count("d_model", d.d_model)?,
            d_kv: count("d_kv", d.d_kv)?,
            d_ff: count("d_ff", d.d_ff)?,
            num_layers: count("num_layers", d.num_layers)?,
            num_heads: count("num_heads", d.num_heads)?,
            relative_attention_num_buckets: count(
                "relative_attention_num_buckets",
                d.relative_attention_num_buckets,
            )?,
            relative_attention_max_distance: count(
                "relative_attention_max_distance",
                d.relative_attention_max_distance,
            )?,
            layer_norm_epsilon: match get("layer_norm_epsilon") {
                None => d.layer_norm_epsilon,
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| Error::invalid("layer_norm_epsilon", v, "expected a number"))?,
            },
            gated,
            activation,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every width and count: non-zero, at most 2²⁰; at least 2 buckets, an even count,
    /// with a maximum distance beyond the exact half of a direction's buckets; epsilon in
    /// (0, 1).
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ] {
            if value == 0 || value > MAX_WIDTH {
                return Err(Error::invalid(
                    field,
                    value,
                    format!("expected 1..={MAX_WIDTH}"),
                ));
            }
        }
        let buckets = self.relative_attention_num_buckets;
        if buckets < 4 || !buckets.is_multiple_of(2) {
            return Err(Error::invalid(
                "relative_attention_num_buckets",
                buckets,
                "expected an even count of at least 4 (half for each direction)",
            ));
        }
        let max_exact = buckets / 4;
        if self.relative_attention_max_distance <= max_exact {
            return Err(Error::invalid(
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
                format!("expected more than {max_exact} (a quarter of the buckets)"),
            ));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon < 1.0) {
            return Err(Error::invalid(
                "layer_norm_epsilon",
                self.layer_norm_epsilon,
                "expected a number in (0, 1)",
            ));
        }
        Ok(())
    }
}

/// transformers' reading of `feed_forward_proj`: `ACT` or `gated-ACT`, with `gated-gelu`
/// meaning `gelu_new`.
fn parse_feed_forward(v: &Value) -> Result<(bool, T5Activation)> {
    let text = v
        .as_str()
        .ok_or_else(|| Error::invalid("feed_forward_proj", v, "expected a string"))?;
    let (gated, act) = match text.split_once('-') {
        Some(("gated", act)) => (true, act),
        None => (false, text),
        Some(_) => {
            return Err(Error::invalid(
                "feed_forward_proj",
                v,
                "expected `ACT` or `gated-ACT`",
            ));
        }
    };
    let activation = match (gated, act) {
        (true, "gelu") | (_, "gelu_new") => T5Activation::GeluNew,
        (false, "gelu") => T5Activation::Gelu,
        (_, "relu") => T5Activation::Relu,
        (_, "silu") => T5Activation::Silu,
        _ => {
            return Err(Error::Unsupported {
                field: "feed_forward_proj".into(),
                value: text.into(),
                hint: "the activation must be relu, gelu, gelu_new or silu".into(),
            });
        }
    };
    Ok((gated, activation))
}
