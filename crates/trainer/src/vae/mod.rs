//! diffusers' `AutoencoderKL`: images to latents and back, config-driven.
//!
//! - [`blocks`]: resnets, the mid-block attention, encoder and decoder levels.
//!
//! Latents for training and sampling are scaled by the config's `scaling_factor` (0.18215 for
//! SD1.x/SD2.x): [`AutoencoderKL::encode_latents`] returns `mean · scaling_factor`, and
//! [`AutoencoderKL::decode_latents`] divides by it first, as diffusers' pipelines do.

pub mod blocks;

use std::path::Path;

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::lora::{LoraConv2d, LoraConv2dConfig};
use crate::weights::{Weights, load_module};
use blocks::{DecoderBlock, EncoderBlock, VAE_EPS, VaeMidBlock};

/// A checked `AutoencoderKL` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Channels of each level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (the decoder has one more).
    pub layers_per_block: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Latents are multiplied by this for the UNet.
    pub scaling_factor: f64,
    /// Latents are shifted by this before scaling (absent in SD1.x/SD2.x).
    pub shift_factor: f64,
    /// 1×1 convolutions around the latent space.
    pub use_quant_conv: bool,
    /// 1×1 convolution before the decoder.
    pub use_post_quant_conv: bool,
    /// Attention in the mid blocks.
    pub mid_block_add_attention: bool,
    /// Image size the model was trained at, if given.
    pub sample_size: Option<usize>,
}

impl VaeConfig {
    /// Reads a diffusers `vae/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_diffusers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed config, with diffusers' defaults for absent keys.
    pub fn from_diffusers(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("config", value, "expected a JSON object"))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let usize_of = |k: &str, default: usize| -> Result<usize> {
            get(k).map_or(Ok(default), |v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| Error::invalid(k, v, "expected a non-negative integer"))
            })
        };
        let f64_of = |k: &str, default: f64| -> Result<f64> {
            get(k).map_or(Ok(default), |v| {
                v.as_f64()
                    .ok_or_else(|| Error::invalid(k, v, "expected a number"))
            })
        };
        let bool_of = |k: &str, default: bool| -> Result<bool> {
            get(k).map_or(Ok(default), |v| {
                v.as_bool()
                    .ok_or_else(|| Error::invalid(k, v, "expected true or false"))
            })
        };
        for (key, expected) in [
            ("act_fn", "silu"),
            ("norm_type", "group"),
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            let ok = match get(key) {
                None => true,
                Some(Value::String(s)) => s == expected,
                Some(Value::Array(items)) => items.iter().all(|v| v.as_str() == Some(expected)),
                Some(_) => false,
            };
            if !ok {
                return Err(Error::Unsupported {
                    field: key.into(),
                    value: get(key).map(Value::to_string).unwrap_or_default(),
                    hint: format!("only {expected} is implemented (the SD1.x/SD2.x VAE)"),
                });
            }
        }
        if get("mid_block_add_attention").is_some_and(|v| v.as_bool() != Some(true)) {
            return Err(Error::Unsupported {
                field: "mid_block_add_attention".into(),
                value: get("mid_block_add_attention")
                    .map(Value::to_string)
                    .unwrap_or_default(),
                hint: "only the mid block with attention is implemented (SD, SDXL and FLUX.1 \
                       VAEs)"
                    .into(),
            });
        }
        let block_out_channels = match get("block_out_channels") {
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|c| c.as_u64().map(|n| n as usize)).collect())
                .ok_or_else(|| {
                    Error::invalid("block_out_channels", v, "expected a list of integers")
                })?,
            None => vec![64],
        };
        let sample_size = match get("sample_size") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|n| n as usize),
            Some(v) => v.as_u64().map(|n| n as usize),
            None => None,
        };
        let config = Self {
            in_channels: usize_of("in_channels", 3)?,
            out_channels: usize_of("out_channels", 3)?,
            block_out_channels,
            layers_per_block: usize_of("layers_per_block", 1)?,
            latent_channels: usize_of("latent_channels", 4)?,
            norm_num_groups: usize_of("norm_num_groups", 32)?,
            scaling_factor: f64_of("scaling_factor", 0.18215)?,
            shift_factor: f64_of("shift_factor", 0.0)?,
            use_quant_conv: bool_of("use_quant_conv", true)?,
            use_post_quant_conv: bool_of("use_post_quant_conv", true)?,
            mid_block_add_attention: bool_of("mid_block_add_attention", true)?,
            sample_size,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the divisibility rules the layers rely on.
    pub fn validate(&self) -> Result<()> {
        if self.block_out_channels.is_empty() || self.block_out_channels.contains(&0) {
            return Err(Error::invalid(
                "block_out_channels",
                format!("{:?}", self.block_out_channels),
                "expected at least one level, each with at least one channel",
            ));
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| c % self.norm_num_groups != 0)
        {
            return Err(Error::invalid(
                "norm_num_groups",
                self.norm_num_groups,
                "every block_out_channels entry must be a multiple of it",
            ));
        }
        if self.layers_per_block == 0 {
            return Err(Error::invalid("layers_per_block", 0, "must be at least 1"));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(Error::invalid(
                "scaling_factor",
                self.scaling_factor,
                "must be a positive number",
            ));
        }
        Ok(())
    }

    /// How many times smaller latents are than images (`2^(levels − 1)`, 8 for SD).
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The Stable Diffusion VAE (`vae/config.json` of SD1.5).
    pub fn sd() -> Self {
        Self::from_diffusers(&serde_json::json!({
            "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 512
        }))
        .expect("the SD VAE config is valid")
    }

    /// Builds the model with PyTorch's default initialisation.
    pub fn init(&self, device: &Device) -> AutoencoderKL {
        let boc = &self.block_out_channels;
        let n = boc.len();
        let g = self.norm_num_groups;
        let conv3 = |a, b| LoraConv2dConfig::new(a, b, 3).with_padding(1).init(device);
        let norm = |c| {
            burn::nn::GroupNormConfig::new(g, c)
                .with_epsilon(VAE_EPS)
                .init(device)
        };
        let latent2 = 2 * self.latent_channels;
        let encoder = Encoder {
            conv_in: conv3(self.in_channels, boc[0]),
            down_blocks: (0..n)
                .map(|i| {
                    let c_in = if i == 0 { boc[0] } else { boc[i - 1] };
                    EncoderBlock::new(c_in, boc[i], self.layers_per_block, g, i + 1 < n, device)
                })
                .collect(),
            mid_block: VaeMidBlock::new(boc[n - 1], g, self.mid_block_add_attention, device),
            conv_norm_out: norm(boc[n - 1]),
            conv_out: conv3(boc[n - 1], latent2),
        };
        let reversed: Vec<usize> = boc.iter().rev().copied().collect();
        let decoder = Decoder {
            conv_in: conv3(self.latent_channels, boc[n - 1]),
            mid_block: VaeMidBlock::new(boc[n - 1], g, self.mid_block_add_attention, device),
            up_blocks: (0..n)
                .map(|i| {
                    let c_in = if i == 0 { reversed[0] } else { reversed[i - 1] };
                    DecoderBlock::new(
                        c_in,
                        reversed[i],
                        self.layers_per_block + 1,
                        g,
                        i + 1 < n,
                        device,
                    )
                })
                .collect(),
            conv_norm_out: norm(boc[0]),
            conv_out: conv3(boc[0], self.out_channels),
        };
        let conv1 = |c| LoraConv2dConfig::new(c, c, 1).init(device);
        AutoencoderKL {
            encoder,
            decoder,
            quant_conv: self.use_quant_conv.then(|| conv1(latent2)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| conv1(self.latent_channels)),
            scaling_factor: self.scaling_factor,
            shift_factor: self.shift_factor,
        }
    }
}

/// Image to latent moments.
#[derive(Module, Debug)]
pub struct Encoder {
    /// Image to the first level's channels.
    pub conv_in: LoraConv2d,
    /// Levels, full resolution first.
    pub down_blocks: Vec<EncoderBlock>,
    /// Bottleneck.
    pub mid_block: VaeMidBlock,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// To `2 × latent_channels` (mean and log-variance).
    pub conv_out: LoraConv2d,
}

/// Latents to image.
#[derive(Module, Debug)]
pub struct Decoder {
    /// Latents to the deepest level's channels.
    pub conv_in: LoraConv2d,
    /// Bottleneck.
    pub mid_block: VaeMidBlock,
    /// Levels, deepest first.
    pub up_blocks: Vec<DecoderBlock>,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// To image channels.
    pub conv_out: LoraConv2d,
}

/// The KL-regularised autoencoder of Stable Diffusion.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    /// Image → moments.
    pub encoder: Encoder,
    /// Latents → image.
    pub decoder: Decoder,
    /// 1×1 convolution on the moments.
    pub quant_conv: Option<LoraConv2d>,
    /// 1×1 convolution on the latents before decoding.
    pub post_quant_conv: Option<LoraConv2d>,
    /// Latents are multiplied by this for the UNet.
    pub scaling_factor: f64,
    /// Latents are shifted by this before scaling.
    pub shift_factor: f64,
}

impl AutoencoderKL {
    /// Loads diffusers weights (`vae/diffusion_pytorch_model.safetensors`).
    pub fn load_weights(self, weights: &dyn Weights) -> Result<Self> {
        load_module(self, weights, "")
    }

    /// The latent distribution's mean and log-variance (clamped to [-30, 20] as diffusers does).
    ///
    /// # Shapes
    ///
    /// - image: `[batch, in_channels, height, width]`, values in [-1, 1]
    /// - output: two `[batch, latent_channels, height / f, width / f]`
    pub fn encode(&self, image: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(image);
        for block in &e.down_blocks {
            h = block.forward(h);
        }
        h = e.mid_block.forward(h);
        let mut moments = e.conv_out.forward(silu(e.conv_norm_out.forward(h)));
        if let Some(q) = &self.quant_conv {
            moments = q.forward(moments);
        }
        let [mean, logvar]: [Tensor<4>; 2] = moments
            .chunk(2, 1)
            .try_into()
            .expect("moments split in two");
        (mean, logvar.clamp(-30.0, 20.0))
    }

    /// Decodes raw (unscaled) latents to an image in about [-1, 1].
    ///
    /// # Shapes
    ///
    /// - latents: `[batch, latent_channels, h, w]`
    /// - output: `[batch, out_channels, h · f, w · f]`
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(latents),
            None => latents,
        };
        let mut h = d.mid_block.forward(d.conv_in.forward(z));
        for block in &d.up_blocks {
            h = block.forward(h);
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(h)))
    }

    /// The UNet's latents for an image: the distribution's mean, shifted and scaled.
    ///
    /// The mean is used rather than a sample: latents are cached once per run, and the SD
    /// VAE's posterior standard deviation is small next to the training noise.
    pub fn encode_latents(&self, image: Tensor<4>) -> Tensor<4> {
        let (mean, _) = self.encode(image);
        mean.sub_scalar(self.shift_factor)
            .mul_scalar(self.scaling_factor)
    }

    /// Decodes UNet latents (scaled) to an image in about [-1, 1].
    pub fn decode_latents(&self, latents: Tensor<4>) -> Tensor<4> {
        self.decode(
            latents
                .div_scalar(self.scaling_factor)
                .add_scalar(self.shift_factor),
        )
    }
}
