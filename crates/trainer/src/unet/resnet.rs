//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::lora::{
    LayerMut, LoraConv2d, LoraConv2dConfig, LoraLayers, LoraLinear, LoraLinearConfig, join,
};

/// Configuration of a [`ResnetBlock2D`].
#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    #[config(default = 1e-5)]
    pub eps: f64,
    /// The output is divided by this.
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    /// Builds the block.
    pub fn init(&self, device: &Device) -> ResnetBlock2D {
        let norm = |c: usize| {
            GroupNormConfig::new(self.groups, c)
                .with_epsilon(self.eps)
                .init(device)
        };
        ResnetBlock2D {
            norm1: norm(self.channels_in),
            conv1: LoraConv2dConfig::new(self.channels_in, self.channels_out, 3)
                .with_padding(1)
                .init(device),
            time_emb_proj: LoraLinearConfig::new(self.temb_channels, self.channels_out)
                .init(device),
            norm2: norm(self.channels_out),
            conv2: LoraConv2dConfig::new(self.channels_out, self.channels_out, 3)
                .with_padding(1)
                .init(device),
            conv_shortcut: (self.channels_in != self.channels_out).then(|| {
                LoraConv2dConfig::new(self.channels_in, self.channels_out, 1).init(device)
            }),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

/// Two GroupNorm–SiLU–conv stages with the time embedding added in between, and a residual.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// First norm.
    pub norm1: GroupNorm,
    /// First 3×3 convolution.
    pub conv1: LoraConv2d,
    /// Projection of the time embedding to `channels_out`.
    pub time_emb_proj: LoraLinear,
    /// Second norm.
    pub norm2: GroupNorm,
    /// Second 3×3 convolution.
    pub conv2: LoraConv2d,
    /// 1×1 convolution on the residual when the channel count changes.
    pub conv_shortcut: Option<LoraConv2d>,
    /// The output is divided by this.
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Applies the block.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, channels_in, height, width]`
    /// - temb: `[batch, temb_channels]`
    /// - output: `[batch, channels_out, height, width]`
    pub fn forward(&self, x: Tensor<4>, temb: Tensor<2>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let t = self.time_emb_proj.forward(silu(temb));
        let h = h + t.unsqueeze_dims::<4>(&[2, 3]);
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let residual = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = residual + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out.div_scalar(self.output_scale_factor)
        }
    }
}

impl LoraLayers for ResnetBlock2D {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.conv1.collect_layers(&join(prefix, "conv1"), out);
        self.time_emb_proj
            .collect_layers(&join(prefix, "time_emb_proj"), out);
        self.conv2.collect_layers(&join(prefix, "conv2"), out);
        self.conv_shortcut
            .collect_layers(&join(prefix, "conv_shortcut"), out);
    }
}

/// Halves the resolution with a strided 3×3 convolution.
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The strided convolution.
    pub conv: LoraConv2d,
}

/// Configuration of a [`Downsample2D`].
#[derive(Config, Debug)]
pub struct Downsample2DConfig {
    /// Channels in and out.
    pub channels: usize,
    /// Zero padding of the convolution.
    #[config(default = 1)]
    pub padding: usize,
}

impl Downsample2DConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Downsample2D {
        Downsample2D {
            conv: LoraConv2dConfig::new(self.channels, self.channels, 3)
                .with_stride(2)
                .with_padding(self.padding)
                .init(device),
        }
    }
}

impl Downsample2D {
    /// # Shapes
    ///
    /// - input: `[batch, channels, height, width]`
    /// - output: `[batch, channels, ceil(height / 2), ceil(width / 2)]` (with padding 1)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

impl LoraLayers for Downsample2D {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.conv.collect_layers(&join(prefix, "conv"), out);
    }
}

/// Nearest-neighbour upsampling followed by a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The convolution after upsampling.
    pub conv: LoraConv2d,
}

/// Configuration of an [`Upsample2D`].
#[derive(Config, Debug)]
pub struct Upsample2DConfig {
    /// Channels in and out.
    pub channels: usize,
}

impl Upsample2DConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Upsample2D {
        Upsample2D {
            conv: LoraConv2dConfig::new(self.channels, self.channels, 3)
                .with_padding(1)
                .init(device),
        }
    }
}

impl Upsample2D {
    /// Upsamples to `size` (the resolution of the matching skip connection, which is twice
    /// the input unless the input had an odd size on the way down).
    ///
    /// # Shapes
    ///
    /// - input: `[batch, channels, height, width]`
    /// - output: `[batch, channels, size[0], size[1]]`
    pub fn forward(&self, x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
        let up = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
        self.conv.forward(up)
    }
}

impl LoraLayers for Upsample2D {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.conv.collect_layers(&join(prefix, "conv"), out);
    }
}
