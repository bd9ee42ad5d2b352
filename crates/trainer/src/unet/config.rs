//! The UNet's configuration, read from a diffusers `config.json`.
//!
//! The SD1.x/SD2.x family and SDXL (`addition_embed_type = "text_time"`, see
//! [`super::text_time`]) are implemented; a config that asks for anything else (class
//! embeddings, other added conditioning, scale-shift time conditioning, other activations, ...)
//! is rejected with an [`Error::Unsupported`] naming the key, rather than silently mis-built.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::text_time::TextTimeConfig;
use crate::error::{Error, Result};

/// Down block types of diffusers' `down_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockKind {
    /// Resnets only (`DownBlock2D`).
    DownBlock2D,
    /// Resnets each followed by a transformer (`CrossAttnDownBlock2D`).
    CrossAttnDownBlock2D,
}

/// Up block types of diffusers' `up_block_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockKind {
    /// Resnets only (`UpBlock2D`).
    UpBlock2D,
    /// Resnets each followed by a transformer (`CrossAttnUpBlock2D`).
    CrossAttnUpBlock2D,
}

/// A checked UNet2DConditionModel configuration with every per-block list expanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out (the prediction).
    pub out_channels: usize,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// One per level.
    pub down_block_types: Vec<DownBlockKind>,
    /// One per level, deepest first.
    pub up_block_types: Vec<UpBlockKind>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: Vec<usize>,
    /// Transformer blocks inside each Transformer2DModel, per level.
    pub transformer_layers_per_block: Vec<usize>,
    /// Attention heads per level. diffusers calls this `attention_head_dim` for historical
    /// reasons; the per-head width is `channels / heads`.
    pub num_attention_heads: Vec<usize>,
    /// Width of the text-encoder states, per level.
    pub cross_attention_dim: Vec<usize>,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of the resnets and the output norm.
    pub norm_eps: f64,
    /// `proj_in`/`proj_out` are linears (SD2) rather than 1×1 convolutions (SD1).
    pub use_linear_projection: bool,
    /// Timestep embedding order `cos, sin` instead of `sin, cos`.
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequency shift.
    pub freq_shift: f64,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// Output scale of the mid block's resnets.
    pub mid_block_scale_factor: f64,
    /// Map the input from [0, 1] to [-1, 1] first.
    pub center_input_sample: bool,
    /// Kernel of `conv_in`.
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out`.
    pub conv_out_kernel: usize,
    /// Width of the time embedding (default `4 × block_out_channels[0]`).
    pub time_embedding_dim: usize,
    /// Latent resolution the model was trained at, if given.
    pub sample_size: Option<usize>,
    /// SDXL's added conditioning (`addition_embed_type = "text_time"`), if any.
    #[serde(default)]
    pub addition: Option<TextTimeConfig>,
}

fn unsupported(field: &str, value: &Value, hint: &str) -> Error {
    Error::Unsupported {
        field: field.to_string(),
        value: value.to_string(),
        hint: hint.to_string(),
    }
}

/// Reads an optional key; `null` counts as absent.
fn get<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn usize_of(key: &str, v: &Value) -> Result<usize> {
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| Error::invalid(key, v, "expected a non-negative integer"))
}

fn f64_of(key: &str, v: &Value) -> Result<f64> {
    v.as_f64()
        .ok_or_else(|| Error::invalid(key, v, "expected a number"))
}

fn bool_of(key: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| Error::invalid(key, v, "expected true or false"))
}

/// An integer or a list with one integer per block.
fn per_block(key: &str, v: &Value, blocks: usize) -> Result<Vec<usize>> {
    match v {
        Value::Array(items) => {
            if items.len() != blocks {
                return Err(Error::invalid(
                    key,
                    v,
                    format!("expected one value per block ({blocks})"),
                ));
            }
            items.iter().map(|i| usize_of(key, i)).collect()
        }
        other => Ok(vec![usize_of(key, other)?; blocks]),
    }
}

fn strings(key: &str, v: &Value) -> Result<Vec<String>> {
    v.as_array()
        .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
        .ok_or_else(|| Error::invalid(key, v, "expected a list of block type names"))
}

impl UNetConfig {
    /// Reads a diffusers `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_diffusers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed diffusers config, filling diffusers' defaults for absent keys.
    pub fn from_diffusers(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("config", value, "expected a JSON object"))?;

        // Features outside the SD1/SD2 family: refuse rather than build something else.
        let must_be_null = [
            (
                "class_embed_type",
                "class-conditioned UNets are not implemented",
            ),
            (
                "encoder_hid_dim_type",
                "encoder projections are not implemented",
            ),
            (
                "time_cond_proj_dim",
                "LCM-style timestep conditioning is not implemented",
            ),
            (
                "timestep_post_act",
                "only the SD time embedding is implemented",
            ),
            (
                "time_embedding_act_fn",
                "only the SD time embedding is implemented",
            ),
            (
                "cross_attention_norm",
                "only un-normalised cross-attention is implemented",
            ),
            (
                "num_attention_heads",
                "set `attention_head_dim` as SD configs do",
            ),
            ("reverse_transformer_layers_per_block", "not implemented"),
            (
                "num_class_embeds",
                "class-conditioned UNets are not implemented",
            ),
        ];
        for (key, hint) in must_be_null {
            if let Some(v) = get(obj, key) {
                return Err(unsupported(key, v, &format!("must be null: {hint}")));
            }
        }
        let must_equal = [
            ("act_fn", Value::from("silu")),
            ("resnet_time_scale_shift", Value::from("default")),
            ("time_embedding_type", Value::from("positional")),
            ("attention_type", Value::from("default")),
            ("mid_block_type", Value::from("UNetMidBlock2DCrossAttn")),
            ("only_cross_attention", Value::from(false)),
            ("dual_cross_attention", Value::from(false)),
            ("resnet_skip_time_act", Value::from(false)),
            ("class_embeddings_concat", Value::from(false)),
        ];
        for (key, expected) in must_equal {
            if let Some(v) = obj.get(key)
                && v != &expected
            {
                return Err(unsupported(
                    key,
                    v,
                    &format!("only {expected} is implemented"),
                ));
            }
        }
        if let Some(v) = get(obj, "resnet_out_scale_factor")
            && f64_of("resnet_out_scale_factor", v)? != 1.0
        {
            return Err(unsupported(
                "resnet_out_scale_factor",
                v,
                "only 1.0 is implemented",
            ));
        }
        if let Some(v) = get(obj, "dropout")
            && f64_of("dropout", v)? != 0.0
        {
            return Err(unsupported(
                "dropout",
                v,
                "training runs without dropout; use 0.0",
            ));
        }

        let block_out_channels = match get(obj, "block_out_channels") {
            Some(v) => v
                .as_array()
                .ok_or_else(|| Error::invalid("block_out_channels", v, "expected a list"))?
                .iter()
                .map(|c| usize_of("block_out_channels", c))
                .collect::<Result<Vec<_>>>()?,
            None => vec![320, 640, 1280, 1280],
        };
        let blocks = block_out_channels.len();
        if blocks == 0 || block_out_channels.contains(&0) {
            return Err(Error::invalid(
                "block_out_channels",
                format!("{block_out_channels:?}"),
                "expected at least one level, each with at least one channel",
            ));
        }

        let down_names = match get(obj, "down_block_types") {
            Some(v) => strings("down_block_types", v)?,
            None => vec![
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "DownBlock2D".into(),
            ],
        };
        let up_names = match get(obj, "up_block_types") {
            Some(v) => strings("up_block_types", v)?,
            None => vec![
                "UpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
            ],
        };
        let down_block_types = down_names
            .iter()
            .map(|n| match n.as_str() {
                "DownBlock2D" => Ok(DownBlockKind::DownBlock2D),
                "CrossAttnDownBlock2D" => Ok(DownBlockKind::CrossAttnDownBlock2D),
                other => Err(unsupported(
                    "down_block_types",
                    &Value::from(other),
                    "expected DownBlock2D or CrossAttnDownBlock2D",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_block_types = up_names
            .iter()
            .map(|n| match n.as_str() {
                "UpBlock2D" => Ok(UpBlockKind::UpBlock2D),
                "CrossAttnUpBlock2D" => Ok(UpBlockKind::CrossAttnUpBlock2D),
                other => Err(unsupported(
                    "up_block_types",
                    &Value::from(other),
                    "expected UpBlock2D or CrossAttnUpBlock2D",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        for (key, n) in [
            ("down_block_types", down_block_types.len()),
            ("up_block_types", up_block_types.len()),
        ] {
            if n != blocks {
                return Err(Error::invalid(
                    key,
                    n,
                    format!("expected as many block types as block_out_channels ({blocks})"),
                ));
            }
        }

        let heads_value = get(obj, "attention_head_dim")
            .cloned()
            .unwrap_or(Value::from(8));
        let num_attention_heads = per_block("attention_head_dim", &heads_value, blocks)?;
        let cross_value = get(obj, "cross_attention_dim")
            .cloned()
            .unwrap_or(Value::from(1280));
        let cross_attention_dim = per_block("cross_attention_dim", &cross_value, blocks)?;
        let layers_value = get(obj, "layers_per_block")
            .cloned()
            .unwrap_or(Value::from(2));
        let layers_per_block = per_block("layers_per_block", &layers_value, blocks)?;
        let tl_value = get(obj, "transformer_layers_per_block")
            .cloned()
            .unwrap_or(Value::from(1));
        let transformer_layers_per_block =
            per_block("transformer_layers_per_block", &tl_value, blocks)?;

        let read_usize = |key: &str, default: usize| -> Result<usize> {
            get(obj, key).map_or(Ok(default), |v| usize_of(key, v))
        };
        let read_f64 = |key: &str, default: f64| -> Result<f64> {
            get(obj, key).map_or(Ok(default), |v| f64_of(key, v))
        };
        let read_bool = |key: &str, default: bool| -> Result<bool> {
            get(obj, key).map_or(Ok(default), |v| bool_of(key, v))
        };

        let norm_num_groups = match obj.get("norm_num_groups") {
            Some(Value::Null) => {
                return Err(unsupported(
                    "norm_num_groups",
                    &Value::Null,
                    "UNets without output GroupNorm are not implemented",
                ));
            }
            Some(v) => usize_of("norm_num_groups", v)?,
            None => 32,
        };
        let sample_size = match get(obj, "sample_size") {
            None => None,
            Some(Value::Array(a)) => a.first().map(|v| usize_of("sample_size", v)).transpose()?,
            Some(v) => Some(usize_of("sample_size", v)?),
        };

        let config = Self {
            in_channels: read_usize("in_channels", 4)?,
            out_channels: read_usize("out_channels", 4)?,
            time_embedding_dim: read_usize("time_embedding_dim", block_out_channels[0] * 4)?,
            block_out_channels,
            down_block_types,
            up_block_types,
            layers_per_block,
            transformer_layers_per_block,
            num_attention_heads,
            cross_attention_dim,
            norm_num_groups,
            norm_eps: read_f64("norm_eps", 1e-5)?,
            use_linear_projection: read_bool("use_linear_projection", false)?,
            flip_sin_to_cos: read_bool("flip_sin_to_cos", true)?,
            freq_shift: read_f64("freq_shift", 0.0)?,
            downsample_padding: read_usize("downsample_padding", 1)?,
            mid_block_scale_factor: read_f64("mid_block_scale_factor", 1.0)?,
            center_input_sample: read_bool("center_input_sample", false)?,
            conv_in_kernel: read_usize("conv_in_kernel", 3)?,
            conv_out_kernel: read_usize("conv_out_kernel", 3)?,
            sample_size,
            addition: TextTimeConfig::from_diffusers(obj)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the divisibility rules the layers rely on.
    pub fn validate(&self) -> Result<()> {
        let blocks = self.block_out_channels.len();
        for (key, n) in [
            ("down_block_types", self.down_block_types.len()),
            ("up_block_types", self.up_block_types.len()),
            ("layers_per_block", self.layers_per_block.len()),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.len(),
            ),
            ("attention_head_dim", self.num_attention_heads.len()),
            ("cross_attention_dim", self.cross_attention_dim.len()),
        ] {
            if n != blocks {
                return Err(Error::invalid(key, n, format!("expected {blocks} entries")));
            }
        }
        if self.norm_num_groups == 0 {
            return Err(Error::invalid("norm_num_groups", 0, "must be at least 1"));
        }
        for &c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 {
                return Err(Error::invalid(
                    "norm_num_groups",
                    self.norm_num_groups,
                    format!("block_out_channels entry {c} is not divisible by it"),
                ));
            }
        }
        let n = blocks;
        for (i, (&c, &h)) in self
            .block_out_channels
            .iter()
            .zip(&self.num_attention_heads)
            .enumerate()
        {
            // Only levels with a transformer (cross-attention down or up block, or the mid
            // block at the deepest level) use the head count.
            let attends = self.down_block_types[i] == DownBlockKind::CrossAttnDownBlock2D
                || self.up_block_types[n - 1 - i] == UpBlockKind::CrossAttnUpBlock2D
                || i == n - 1;
            if attends && (h == 0 || c % h != 0) {
                return Err(Error::invalid(
                    "attention_head_dim",
                    h,
                    format!(
                        "block {i} has {c} channels, which must be a multiple of the head count"
                    ),
                ));
            }
        }
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(Error::invalid(key, k, "kernels must be odd"));
            }
        }
        if self.layers_per_block.contains(&0) {
            return Err(Error::invalid(
                "layers_per_block",
                format!("{:?}", self.layers_per_block),
                "every block needs at least one resnet",
            ));
        }
        Ok(())
    }

    /// The Stable Diffusion 1.5 UNet (`runwayml/stable-diffusion-v1-5/unet/config.json`).
    pub fn sd15() -> Self {
        Self::from_diffusers(&serde_json::json!({
            "_class_name": "UNet2DConditionModel",
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "layers_per_block": 2,
            "sample_size": 64
        }))
        .expect("the SD1.5 config is valid")
    }

    /// The Stable Diffusion 2.x UNet (`stabilityai/stable-diffusion-2-1/unet/config.json`).
    pub fn sd2() -> Self {
        Self::from_diffusers(&serde_json::json!({
            "_class_name": "UNet2DConditionModel",
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "layers_per_block": 2,
            "use_linear_projection": true,
            "upcast_attention": true,
            "sample_size": 96
        }))
        .expect("the SD2 config is valid")
    }

    /// The SDXL 1.0 base UNet (`stabilityai/stable-diffusion-xl-base-1.0/unet/config.json`).
    pub fn sdxl_base() -> Self {
        Self::from_diffusers(&serde_json::json!({
            "_class_name": "UNet2DConditionModel",
            "addition_embed_type": "text_time",
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256,
            "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "layers_per_block": 2,
            "projection_class_embeddings_input_dim": 2816,
            "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "use_linear_projection": true
        }))
        .expect("the SDXL base config is valid")
    }

    /// The heads of the mid block (those of the deepest level).
    pub fn mid_heads(&self) -> usize {
        *self
            .num_attention_heads
            .last()
            .expect("validated: at least one level")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_give_sd15() {
        let c = UNetConfig::sd15();
        assert_eq!(c.num_attention_heads, vec![8; 4]);
        assert_eq!(c.cross_attention_dim, vec![768; 4]);
        assert_eq!(c.time_embedding_dim, 1280);
        assert_eq!(c.up_block_types[0], UpBlockKind::UpBlock2D);
        assert!(!c.use_linear_projection);
        let c2 = UNetConfig::sd2();
        assert_eq!(c2.num_attention_heads, vec![5, 10, 20, 20]);
        assert!(c2.use_linear_projection);
    }

    #[test]
    fn sdxl_configs_are_read_and_other_added_conditioning_refused() {
        let c = UNetConfig::sdxl_base();
        assert_eq!(c.num_attention_heads, vec![5, 10, 20]);
        assert_eq!(c.transformer_layers_per_block, vec![1, 2, 10]);
        assert_eq!(c.cross_attention_dim, vec![2048; 3]);
        let added = c.addition.unwrap();
        assert_eq!(added.text_embeds_dim(6), Some(1280));
        assert_eq!(UNetConfig::sd15().addition, None);
        let err = UNetConfig::from_diffusers(&json!({"addition_embed_type": "text"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`addition_embed_type`"), "{err}");
        assert!(err.contains("\"text\""), "{err}");
        let err = UNetConfig::from_diffusers(&json!({"addition_embed_type": "text_time"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("addition_time_embed_dim"), "{err}");
    }

    #[test]
    fn bad_values_are_quoted() {
        let err = UNetConfig::from_diffusers(&json!({
            "block_out_channels": [32, 48], "norm_num_groups": 32,
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"]
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("entry 48 is not divisible"), "{err}");
        let err = UNetConfig::from_diffusers(&json!({"down_block_types": ["Foo"]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"Foo\""), "{err}");
        let err = UNetConfig::from_diffusers(&json!({"layers_per_block": [1, 2]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("one value per block (4)"), "{err}");
    }
}
