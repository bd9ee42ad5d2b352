//! diffusers' `BasicTransformerBlock` and the spatial `Transformer2DModel` around it.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, AttentionConfig, FeedForward, FeedForwardConfig};
use crate::lora::{
    LayerMut, LoraConv2d, LoraConv2dConfig, LoraLayers, LoraLinear, LoraLinearConfig, join,
};

/// Configuration of a [`BasicTransformerBlock`].
#[derive(Config, Debug)]
pub struct BasicTransformerBlockConfig {
    /// Token width.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Width of the text-encoder states.
    pub cross_attention_dim: usize,
}

impl BasicTransformerBlockConfig {
    /// Builds the block.
    pub fn init(&self, device: &Device) -> BasicTransformerBlock {
        let norm = || LayerNormConfig::new(self.dim).init(device);
        BasicTransformerBlock {
            norm1: norm(),
            attn1: AttentionConfig::new(self.dim, self.dim, self.heads, self.head_dim).init(device),
            norm2: norm(),
            attn2: AttentionConfig::new(
                self.dim,
                self.cross_attention_dim,
                self.heads,
                self.head_dim,
            )
            .init(device),
            norm3: norm(),
            ff: FeedForwardConfig::new(self.dim).init(device),
        }
    }
}

/// Pre-norm self-attention, cross-attention and feed-forward, each with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// Norm before self-attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// Norm before cross-attention.
    pub norm2: LayerNorm,
    /// Cross-attention to the text states.
    pub attn2: Attention,
    /// Norm before the feed-forward.
    pub norm3: LayerNorm,
    /// GEGLU feed-forward.
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - context: `[batch, context_tokens, cross_attention_dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

impl LoraLayers for BasicTransformerBlock {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.attn1.collect_layers(&join(prefix, "attn1"), out);
        self.attn2.collect_layers(&join(prefix, "attn2"), out);
        self.ff.collect_layers(&join(prefix, "ff"), out);
    }
}

/// `proj_in`/`proj_out` of a [`Transformer2DModel`]: 1×1 convolutions in SD1, linears in SD2.
///
/// Both are per-pixel projections, so the model applies either to the same token layout; the
/// distinction only matters for the weight and LoRA tensor shapes.
#[derive(Module, Debug)]
pub enum Projection {
    /// A 1×1 convolution (`use_linear_projection = false`).
    Conv(LoraConv2d),
    /// A linear layer (`use_linear_projection = true`).
    Linear(LoraLinear),
}

impl Projection {
    fn new(d_in: usize, d_out: usize, linear: bool, device: &Device) -> Self {
        if linear {
            Projection::Linear(LoraLinearConfig::new(d_in, d_out).init(device))
        } else {
            Projection::Conv(LoraConv2dConfig::new(d_in, d_out, 1).init(device))
        }
    }

    /// Projects each pixel of an image-shaped tensor.
    ///
    /// # Shapes
    ///
    /// - input: `[batch, d_in, height, width]`
    /// - output: `[batch, d_out, height, width]`
    fn forward_image(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Projection::Conv(conv) => conv.forward(x),
            Projection::Linear(linear) => linear
                .forward(x.permute([0, 2, 3, 1]))
                .permute([0, 3, 1, 2]),
        }
    }

    /// Projects each token.
    ///
    /// # Shapes
    ///
    /// - input: `[batch, tokens, d_in]`
    /// - output: `[batch, tokens, d_out]`
    fn forward_tokens(&self, x: Tensor<3>, height: usize, width: usize) -> Tensor<3> {
        match self {
            Projection::Linear(linear) => linear.forward(x),
            Projection::Conv(conv) => {
                let [batch, tokens, d_in] = x.dims();
                let image = x
                    .reshape([batch, height, width, d_in])
                    .permute([0, 3, 1, 2]);
                let out = conv.forward(image);
                let d_out = out.dims()[1];
                out.permute([0, 2, 3, 1]).reshape([batch, tokens, d_out])
            }
        }
    }
}

impl LoraLayers for Projection {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        match self {
            Projection::Conv(conv) => conv.collect_layers(prefix, out),
            Projection::Linear(linear) => linear.collect_layers(prefix, out),
        }
    }
}

/// Configuration of a [`Transformer2DModel`].
#[derive(Config, Debug)]
pub struct Transformer2DModelConfig {
    /// Channels in and out.
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks.
    #[config(default = 1)]
    pub layers: usize,
    /// Width of the text-encoder states.
    pub cross_attention_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Linear rather than 1×1-convolution projections.
    #[config(default = false)]
    pub use_linear_projection: bool,
}

impl Transformer2DModelConfig {
    /// Builds the model. The head width is `channels / heads`, as in diffusers' UNet blocks.
    pub fn init(&self, device: &Device) -> Transformer2DModel {
        let c = self.channels;
        let head_dim = c / self.heads;
        Transformer2DModel {
            norm: GroupNormConfig::new(self.groups, c)
                .with_epsilon(1e-6)
                .init(device),
            proj_in: Projection::new(c, c, self.use_linear_projection, device),
            transformer_blocks: (0..self.layers)
                .map(|_| {
                    BasicTransformerBlockConfig::new(
                        c,
                        self.heads,
                        head_dim,
                        self.cross_attention_dim,
                    )
                    .init(device)
                })
                .collect(),
            proj_out: Projection::new(c, c, self.use_linear_projection, device),
        }
    }
}

/// GroupNorm, projection to tokens, transformer blocks, projection back, residual.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    /// Input norm.
    pub norm: GroupNorm,
    /// Input projection.
    pub proj_in: Projection,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Output projection.
    pub proj_out: Projection,
}

impl Transformer2DModel {
    /// # Shapes
    ///
    /// - x: `[batch, channels, height, width]`
    /// - context: `[batch, context_tokens, cross_attention_dim]`
    /// - output: `[batch, channels, height, width]`
    pub fn forward(&self, x: Tensor<4>, context: Tensor<3>) -> Tensor<4> {
        let [batch, channels, height, width] = x.dims();
        let h = self.proj_in.forward_image(self.norm.forward(x.clone()));
        let mut tokens = h
            .permute([0, 2, 3, 1])
            .reshape([batch, height * width, channels]);
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone());
        }
        let h = self
            .proj_out
            .forward_tokens(tokens, height, width)
            .reshape([batch, height, width, channels])
            .permute([0, 3, 1, 2]);
        h + x
    }
}

impl LoraLayers for Transformer2DModel {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.proj_in.collect_layers(&join(prefix, "proj_in"), out);
        self.transformer_blocks
            .collect_layers(&join(prefix, "transformer_blocks"), out);
        self.proj_out.collect_layers(&join(prefix, "proj_out"), out);
    }
}
