//! Flux's transformer blocks: diffusers' `FluxTransformerBlock` (double-stream) and
//! `FluxSingleTransformerBlock` (single-stream).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::gelu_approximate;
use burn::tensor::{Device, Tensor};

use super::attention::{
    FluxAttention, FluxAttentionConfig, FluxFeedForward, FluxFeedForwardConfig,
};
use super::norms::{AdaLayerNormZero, AdaLayerNormZeroSingle, AdaNormConfig};
use super::rope::RotaryEmbedding;
use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig, join};

/// Configuration of a [`FluxTransformerBlock`] or a [`FluxSingleTransformerBlock`].
#[derive(Config, Debug)]
pub struct FluxBlockConfig {
    /// Token width.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Hidden width of the feed-forwards, as a multiple of `dim`.
    #[config(default = 4)]
    pub mlp_ratio: usize,
}

impl FluxBlockConfig {
    /// A double-stream block.
    pub fn init_double(&self, device: &Device) -> FluxTransformerBlock {
        let ada = AdaNormConfig::new(self.dim);
        let ff = FluxFeedForwardConfig::new(self.dim).with_mult(self.mlp_ratio);
        FluxTransformerBlock {
            norm1: ada.init_zero(device),
            norm1_context: ada.init_zero(device),
            attn: FluxAttentionConfig::new(self.dim, self.heads, self.head_dim)
                .with_joint(true)
                .init(device),
            ff: ff.init(device),
            ff_context: ff.init(device),
        }
    }

    /// A single-stream block.
    pub fn init_single(&self, device: &Device) -> FluxSingleTransformerBlock {
        let hidden = self.dim * self.mlp_ratio;
        FluxSingleTransformerBlock {
            norm: AdaNormConfig::new(self.dim).init_zero_single(device),
            proj_mlp: LoraLinearConfig::new(self.dim, hidden).init(device),
            proj_out: LoraLinearConfig::new(self.dim + hidden, self.dim).init(device),
            attn: FluxAttentionConfig::new(self.dim, self.heads, self.head_dim)
                .with_project_out(false)
                .init(device),
        }
    }
}

/// Separate image and text streams, each with its own adaptive norms, projections and
/// feed-forward, meeting in one joint attention.
#[derive(Module, Debug)]
pub struct FluxTransformerBlock {
    /// The image stream's modulation.
    pub norm1: AdaLayerNormZero,
    /// The text stream's modulation.
    pub norm1_context: AdaLayerNormZero,
    /// Joint attention.
    pub attn: FluxAttention,
    /// The image stream's feed-forward.
    pub ff: FluxFeedForward,
    /// The text stream's feed-forward.
    pub ff_context: FluxFeedForward,
}

impl FluxTransformerBlock {
    /// Returns the new image and text tokens.
    ///
    /// # Shapes
    ///
    /// - image: `[batch, image_tokens, dim]`
    /// - text: `[batch, text_tokens, dim]`
    /// - temb: `[batch, dim]`
    /// - rope: over `text_tokens + image_tokens`
    /// - output: `[batch, image_tokens, dim]`, `[batch, text_tokens, dim]`
    pub fn forward(
        &self,
        image: Tensor<3>,
        text: Tensor<3>,
        temb: Tensor<2>,
        rope: &RotaryEmbedding,
    ) -> (Tensor<3>, Tensor<3>) {
        let (image_in, image_mod) = self.norm1.forward(image.clone(), temb.clone());
        let (text_in, text_mod) = self.norm1_context.forward(text.clone(), temb);
        let (image_attn, text_attn) = self.attn.forward_joint(image_in, text_in, rope);

        let gate = |g: &Tensor<2>| g.clone().unsqueeze_dim::<3>(1);
        let image = image + image_attn * gate(&image_mod.gate_msa);
        let ff = self.ff.forward(image_mod.mlp_input(image.clone()));
        let image = image + ff * gate(&image_mod.gate_mlp);

        let text = text + text_attn * gate(&text_mod.gate_msa);
        let ff = self.ff_context.forward(text_mod.mlp_input(text.clone()));
        let text = text + ff * gate(&text_mod.gate_mlp);
        (image, text)
    }
}

impl LoraLayers for FluxTransformerBlock {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.norm1.collect_layers(&join(prefix, "norm1"), out);
        self.norm1_context
            .collect_layers(&join(prefix, "norm1_context"), out);
        self.attn.collect_layers(&join(prefix, "attn"), out);
        self.ff.collect_layers(&join(prefix, "ff"), out);
        self.ff_context
            .collect_layers(&join(prefix, "ff_context"), out);
    }
}

/// One stream of text and image tokens together: attention and an MLP in parallel from the
/// same modulated input, fused by one output projection.
#[derive(Module, Debug)]
pub struct FluxSingleTransformerBlock {
    /// The modulation.
    pub norm: AdaLayerNormZeroSingle,
    /// The MLP's input projection (tanh GELU follows).
    pub proj_mlp: LoraLinear,
    /// Projection of the concatenated attention and MLP outputs.
    pub proj_out: LoraLinear,
    /// Self-attention without an output projection.
    pub attn: FluxAttention,
}

impl FluxSingleTransformerBlock {
    /// `x + gate · proj_out([attn(n), gelu(proj_mlp(n))])` with `n` the modulated norm of
    /// `x`.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]` (text tokens first)
    /// - temb: `[batch, dim]`
    /// - rope: over `tokens`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>, temb: Tensor<2>, rope: &RotaryEmbedding) -> Tensor<3> {
        let (normed, gate) = self.norm.forward(x.clone(), temb);
        let mlp = gelu_approximate(self.proj_mlp.forward(normed.clone()));
        let attn = self.attn.forward_single(normed, rope);
        let fused = self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2));
        x + fused * gate.unsqueeze_dim::<3>(1)
    }
}

impl LoraLayers for FluxSingleTransformerBlock {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.norm.collect_layers(&join(prefix, "norm"), out);
        self.proj_mlp.collect_layers(&join(prefix, "proj_mlp"), out);
        self.proj_out.collect_layers(&join(prefix, "proj_out"), out);
        self.attn.collect_layers(&join(prefix, "attn"), out);
    }
}
