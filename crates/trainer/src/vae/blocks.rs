//! The VAE's building blocks: resnets without time conditioning, the single-head mid-block
//! attention, and the encoder's and decoder's resolution levels (diffusers'
//! `DownEncoderBlock2D`, `UNetMidBlock2D` and `UpDecoderBlock2D`).

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, PadMode};
use burn::tensor::{Device, Tensor};

use crate::lora::{LoraConv2d, LoraConv2dConfig, LoraLinear, LoraLinearConfig};
use crate::unet::resnet::{Upsample2D, Upsample2DConfig};

/// The VAE's GroupNorm epsilon (diffusers hard-codes 1e-6 there).
pub const VAE_EPS: f64 = 1e-6;

fn group_norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(VAE_EPS)
        .init(device)
}

/// `ResnetBlock2D` with `temb_channels = None`.
#[derive(Module, Debug)]
pub struct VaeResnet {
    /// First norm.
    pub norm1: GroupNorm,
    /// First 3×3 convolution.
    pub conv1: LoraConv2d,
    /// Second norm.
    pub norm2: GroupNorm,
    /// Second 3×3 convolution.
    pub conv2: LoraConv2d,
    /// 1×1 convolution on the residual when the channel count changes.
    pub conv_shortcut: Option<LoraConv2d>,
}

impl VaeResnet {
    /// A block from `c_in` to `c_out` channels.
    pub fn new(c_in: usize, c_out: usize, groups: usize, device: &Device) -> Self {
        let conv3 = |a, b| LoraConv2dConfig::new(a, b, 3).with_padding(1).init(device);
        Self {
            norm1: group_norm(groups, c_in, device),
            conv1: conv3(c_in, c_out),
            norm2: group_norm(groups, c_out, device),
            conv2: conv3(c_out, c_out),
            conv_shortcut: (c_in != c_out)
                .then(|| LoraConv2dConfig::new(c_in, c_out, 1).init(device)),
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, c_in, height, width]`
    /// - output: `[batch, c_out, height, width]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let residual = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        residual + h
    }
}

/// Single-head spatial self-attention with a GroupNorm and a residual (diffusers' `Attention`
/// as the VAE's mid block builds it).
#[derive(Module, Debug)]
pub struct VaeAttention {
    /// Input norm.
    pub group_norm: GroupNorm,
    /// Query projection (with bias).
    pub to_q: LoraLinear,
    /// Key projection (with bias).
    pub to_k: LoraLinear,
    /// Value projection (with bias).
    pub to_v: LoraLinear,
    /// Output projection (`to_out.0`).
    pub to_out: LoraLinear,
}

impl VaeAttention {
    /// An attention layer over `channels`.
    pub fn new(channels: usize, groups: usize, device: &Device) -> Self {
        let proj = || LoraLinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: group_norm(groups, channels, device),
            to_q: proj(),
            to_k: proj(),
            to_v: proj(),
            to_out: proj(),
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, channels, height, width]`
    /// - output: `[batch, channels, height, width]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let heads = |t: Tensor<3>| t.unsqueeze_dim::<4>(1);
        let out = attention(
            heads(self.to_q.forward(tokens.clone())),
            heads(self.to_k.forward(tokens.clone())),
            heads(self.to_v.forward(tokens)),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .squeeze_dim::<3>(1);
        let out = self
            .to_out
            .forward(out)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        out + x
    }
}

/// Resnet, attention, resnet.
#[derive(Module, Debug)]
pub struct VaeMidBlock {
    /// Two resnets.
    pub resnets: Vec<VaeResnet>,
    /// Zero or one attention.
    pub attentions: Vec<VaeAttention>,
}

impl VaeMidBlock {
    /// The mid block over `channels`.
    pub fn new(channels: usize, groups: usize, attention: bool, device: &Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| VaeResnet::new(channels, channels, groups, device))
                .collect(),
            attentions: if attention {
                vec![VaeAttention::new(channels, groups, device)]
            } else {
                Vec::new()
            },
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, channels, height, width]`
    /// - output: `[batch, channels, height, width]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x);
        if let Some(attn) = self.attentions.first() {
            x = attn.forward(x);
        }
        self.resnets[1].forward(x)
    }
}

/// A strided 3×3 convolution after padding one row and column at the bottom and right (the
/// VAE's `Downsample2D` with `padding = 0`).
#[derive(Module, Debug)]
pub struct VaeDownsample {
    /// The strided convolution.
    pub conv: LoraConv2d,
}

impl VaeDownsample {
    /// # Shapes
    ///
    /// - x: `[batch, channels, height, width]`
    /// - output: `[batch, channels, height / 2, width / 2]` (rounded down)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv
            .forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
    }
}

/// `DownEncoderBlock2D`: resnets and an optional downsampler.
#[derive(Module, Debug)]
pub struct EncoderBlock {
    /// Resnets.
    pub resnets: Vec<VaeResnet>,
    /// Zero or one downsampler.
    pub downsamplers: Vec<VaeDownsample>,
}

impl EncoderBlock {
    /// `layers` resnets from `c_in` to `c_out`, then a downsampler if `downsample`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
        device: &Device,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|i| VaeResnet::new(if i == 0 { c_in } else { c_out }, c_out, groups, device))
                .collect(),
            downsamplers: if downsample {
                vec![VaeDownsample {
                    conv: LoraConv2dConfig::new(c_out, c_out, 3)
                        .with_stride(2)
                        .init(device),
                }]
            } else {
                Vec::new()
            },
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, c_in, height, width]`
    /// - output: `[batch, c_out, height', width']` (halved when downsampling)
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for resnet in &self.resnets {
            x = resnet.forward(x);
        }
        for down in &self.downsamplers {
            x = down.forward(x);
        }
        x
    }
}

/// `UpDecoderBlock2D`: resnets and an optional 2× upsampler.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    /// Resnets.
    pub resnets: Vec<VaeResnet>,
    /// Zero or one upsampler.
    pub upsamplers: Vec<Upsample2D>,
}

impl DecoderBlock {
    /// `layers` resnets from `c_in` to `c_out`, then an upsampler if `upsample`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
        device: &Device,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|i| VaeResnet::new(if i == 0 { c_in } else { c_out }, c_out, groups, device))
                .collect(),
            upsamplers: if upsample {
                vec![Upsample2DConfig::new(c_out).init(device)]
            } else {
                Vec::new()
            },
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, c_in, height, width]`
    /// - output: `[batch, c_out, height', width']` (doubled when upsampling)
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for resnet in &self.resnets {
            x = resnet.forward(x);
        }
        for up in &self.upsamplers {
            let [_, _, h, w] = x.dims();
            x = up.forward(x, [2 * h, 2 * w]);
        }
        x
    }
}
