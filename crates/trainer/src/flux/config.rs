//! The transformer's configuration, diffusers' `FluxTransformer2DModel` `config.json`.

use std::path::Path;

use burn::config::Config;
use serde_json::Value;

use crate::error::{Error, Result};

/// Configuration of a [`super::FluxTransformer2DModel`], under diffusers' key names. The
/// defaults are FLUX.1's (12 B parameters); FLUX.1-dev has `guidance_embeds = true`, schnell
/// `false`.
#[derive(Config, Debug, PartialEq)]
pub struct FluxTransformerConfig {
    /// Side of the square patches each token carries (the output has `patch_size² ·
    /// out_channels` features per token; the 2×2 packing of latents is done by the caller).
    #[config(default = 1)]
    pub patch_size: usize,
    /// Features of each image token in (`64` = 16 latent channels × 2×2 packing).
    #[config(default = 64)]
    pub in_channels: usize,
    /// Features of each token out, per patch position; `in_channels` when `None`.
    #[config(default = "None")]
    pub out_channels: Option<usize>,
    /// Double-stream blocks.
    #[config(default = 19)]
    pub num_layers: usize,
    /// Single-stream blocks.
    #[config(default = 38)]
    pub num_single_layers: usize,
    /// Width of each attention head (the sum of `axes_dims_rope`).
    #[config(default = 128)]
    pub attention_head_dim: usize,
    /// Attention heads; the token width is `num_attention_heads · attention_head_dim`.
    #[config(default = 24)]
    pub num_attention_heads: usize,
    /// Width of the text-encoder (T5) states.
    #[config(default = 4096)]
    pub joint_attention_dim: usize,
    /// Width of the pooled text embedding (CLIP-L's pooled output).
    #[config(default = 768)]
    pub pooled_projection_dim: usize,
    /// Whether the model embeds a distilled guidance value (FLUX.1-dev).
    #[config(default = false)]
    pub guidance_embeds: bool,
    /// Head width given to each position axis by the rotary embedding; even, summing to
    /// `attention_head_dim`.
    #[config(default = "vec![16, 56, 56]")]
    pub axes_dims_rope: Vec<usize>,
}

/// Every key of diffusers' config this crate reads; any other key that is not diffusers'
/// bookkeeping (`_class_name`, `_diffusers_version`, ...) is refused rather than ignored.
const KEYS: [&str; 11] = [
    "patch_size",
    "in_channels",
    "out_channels",
    "num_layers",
    "num_single_layers",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "pooled_projection_dim",
    "guidance_embeds",
    "axes_dims_rope",
];

/// The largest value accepted for any width or count (FLUX.1 uses at most 4096).
const MAX_WIDTH: usize = 65_536;

impl FluxTransformerConfig {
    /// FLUX.1-dev's transformer (guidance embeddings).
    pub fn flux_dev() -> Self {
        Self::new().with_guidance_embeds(true)
    }

    /// FLUX.1-schnell's transformer (no guidance embeddings).
    pub fn flux_schnell() -> Self {
        Self::new()
    }

    /// Reads a diffusers `transformer/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_diffusers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed diffusers config, filling diffusers' defaults for absent keys, and
    /// checks it ([`validate`](Self::validate)).
    pub fn from_diffusers(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("config", value, "expected a JSON object"))?;
        if let Some(class) = obj.get("_class_name").and_then(Value::as_str)
            && class != "FluxTransformer2DModel"
        {
            return Err(Error::Unsupported {
                field: "_class_name".into(),
                value: class.into(),
                hint: "only FluxTransformer2DModel is read as a Flux transformer".into(),
            });
        }
        for (key, v) in obj {
            if !key.starts_with('_') && !KEYS.contains(&key.as_str()) && !v.is_null() {
                return Err(Error::Unsupported {
                    field: key.clone(),
                    value: v.to_string(),
                    hint: format!("the Flux transformer reads only {}", KEYS.join(", ")),
                });
            }
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
        let defaults = Self::new();
        let config = Self {
            patch_size: count("patch_size", defaults.patch_size)?,
            in_channels: count("in_channels", defaults.in_channels)?,
            out_channels: match get("out_channels") {
                None => None,
                Some(_) => Some(count("out_channels", 0)?),
            },
            num_layers: count("num_layers", defaults.num_layers)?,
            num_single_layers: count("num_single_layers", defaults.num_single_layers)?,
            attention_head_dim: count("attention_head_dim", defaults.attention_head_dim)?,
            num_attention_heads: count("num_attention_heads", defaults.num_attention_heads)?,
            joint_attention_dim: count("joint_attention_dim", defaults.joint_attention_dim)?,
            pooled_projection_dim: count("pooled_projection_dim", defaults.pooled_projection_dim)?,
            guidance_embeds: match get("guidance_embeds") {
                None => defaults.guidance_embeds,
                Some(v) => v.as_bool().ok_or_else(|| {
                    Error::invalid("guidance_embeds", v, "expected true or false")
                })?,
            },
            axes_dims_rope: match get("axes_dims_rope") {
                None => defaults.axes_dims_rope,
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.iter().map(|d| d.as_u64().map(|n| n as usize)).collect())
                    .ok_or_else(|| {
                        Error::invalid("axes_dims_rope", v, "expected a list of integers")
                    })?,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the widths against each other; the error names the key, its value and what is
    /// allowed.
    pub fn validate(&self) -> Result<()> {
        let widths = [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ];
        for (key, v) in widths {
            if v == 0 || v > MAX_WIDTH {
                return Err(Error::invalid(
                    key,
                    v,
                    format!("must be in 1..={MAX_WIDTH}"),
                ));
            }
        }
        if let Some(out) = self.out_channels
            && (out == 0 || out > MAX_WIDTH)
        {
            return Err(Error::invalid(
                "out_channels",
                out,
                format!("must be in 1..={MAX_WIDTH} (or null for in_channels)"),
            ));
        }
        for (key, v) in [
            ("num_layers", self.num_layers),
            ("num_single_layers", self.num_single_layers),
        ] {
            if v > 1024 {
                return Err(Error::invalid(key, v, "must be at most 1024"));
            }
        }
        let axes = &self.axes_dims_rope;
        let sum: usize = axes.iter().sum();
        if axes.is_empty() || axes.len() > 8 || axes.iter().any(|d| *d == 0 || d % 2 == 1) {
            return Err(Error::invalid(
                "axes_dims_rope",
                format!("{axes:?}"),
                "expected 1 to 8 positive even widths",
            ));
        }
        if sum != self.attention_head_dim {
            return Err(Error::invalid(
                "axes_dims_rope",
                format!("{axes:?}"),
                format!(
                    "the widths must sum to attention_head_dim ({}), not {sum}",
                    self.attention_head_dim
                ),
            ));
        }
        Ok(())
    }

    /// Token width inside the blocks: `num_attention_heads · attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Features of each output token: `patch_size² · out_channels`.
    pub fn output_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels.unwrap_or(self.in_channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_flux1() {
        let dev = FluxTransformerConfig::flux_dev();
        assert!(dev.guidance_embeds);
        assert_eq!(dev.inner_dim(), 3072);
        assert_eq!(dev.output_dim(), 64);
        dev.validate().unwrap();
        assert!(!FluxTransformerConfig::flux_schnell().guidance_embeds);
    }

    #[test]
    fn reads_diffusers_keys_and_refuses_others() {
        let json = serde_json::json!({
            "_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.42.1",
            "patch_size": 1, "in_channels": 4, "out_channels": null, "num_layers": 1,
            "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
            "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": true,
            "axes_dims_rope": [4, 4, 8]
        });
        let config = FluxTransformerConfig::from_diffusers(&json).unwrap();
        assert_eq!(config.inner_dim(), 32);
        assert_eq!(config.output_dim(), 4);
        assert!(config.guidance_embeds);

        let mut other = json.clone();
        other["image_rotary_theta"] = serde_json::json!(500);
        let err = FluxTransformerConfig::from_diffusers(&other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("image_rotary_theta"), "{err}");

        let mut bad = json.clone();
        bad["axes_dims_rope"] = serde_json::json!([4, 4, 4]);
        let err = FluxTransformerConfig::from_diffusers(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("axes_dims_rope") && err.contains("[4, 4, 4]") && err.contains("(16)"),
            "{err}"
        );

        let mut odd = json;
        odd["axes_dims_rope"] = serde_json::json!([5, 3, 8]);
        let err = FluxTransformerConfig::from_diffusers(&odd)
            .unwrap_err()
            .to_string();
        assert!(err.contains("even"), "{err}");
    }
}
