//! The text encoder's configuration, read from a transformers `text_encoder/config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The activation of the encoder MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x · σ(1.702 x)`: OpenAI's CLIP (SD1.x).
    QuickGelu,
    /// The exact (erf) GELU: OpenCLIP (SD2.x).
    Gelu,
}

/// A checked `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Token embedding rows.
    pub vocab_size: usize,
    /// Width of the hidden states (768 for SD1.x, 1024 for SD2.x).
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Position embedding rows (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `<|startoftext|>`.
    pub bos_token_id: usize,
    /// `<|endoftext|>`.
    pub eos_token_id: usize,
}

fn usize_key(obj: &serde_json::Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| Error::invalid(key, v, "expected a non-negative integer")),
    }
}

impl ClipTextConfig {
    /// Reads a transformers `config.json` (a `CLIPTextConfig`, or a `CLIPConfig` with a
    /// `text_config` section).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_transformers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed config, with transformers' defaults for absent keys.
    pub fn from_transformers(value: &Value) -> Result<Self> {
        let value = value.get("text_config").unwrap_or(value);
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("config", value, "expected a JSON object"))?;
        let hidden_act = match obj.get("hidden_act").and_then(Value::as_str) {
            None | Some("quick_gelu") => ClipActivation::QuickGelu,
            Some("gelu") => ClipActivation::Gelu,
            Some(other) => {
                return Err(Error::Unsupported {
                    field: "hidden_act".into(),
                    value: format!("{other:?}"),
                    hint: "expected quick_gelu (SD1.x) or gelu (SD2.x)".into(),
                });
            }
        };
        let layer_norm_eps = match obj.get("layer_norm_eps") {
            None | Some(Value::Null) => 1e-5,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::invalid("layer_norm_eps", v, "expected a number"))?,
        };
        let config = Self {
            vocab_size: usize_key(obj, "vocab_size", 49408)?,
            hidden_size: usize_key(obj, "hidden_size", 512)?,
            intermediate_size: usize_key(obj, "intermediate_size", 2048)?,
            num_hidden_layers: usize_key(obj, "num_hidden_layers", 12)?,
            num_attention_heads: usize_key(obj, "num_attention_heads", 8)?,
            max_position_embeddings: usize_key(obj, "max_position_embeddings", 77)?,
            hidden_act,
            layer_norm_eps,
            bos_token_id: usize_key(obj, "bos_token_id", 49406)?,
            eos_token_id: usize_key(obj, "eos_token_id", 49407)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the shapes the layers rely on.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::invalid(
                "num_attention_heads",
                self.num_attention_heads,
                format!(
                    "hidden_size {} must be a positive multiple of it",
                    self.hidden_size
                ),
            ));
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
            ("intermediate_size", self.intermediate_size),
        ] {
            if v == 0 {
                return Err(Error::invalid(key, v, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// OpenAI's CLIP ViT-L/14 text encoder, as in SD1.x (`openai/clip-vit-large-patch14`).
    pub fn sd15() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
        }
    }
}
