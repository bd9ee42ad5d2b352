//! T5's encoder block: pre-norm self-attention and feed-forward, each with a residual, RMS
//! norms without mean subtraction or bias.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, relu, silu};

use super::attention::T5Attention;
use super::config::T5Activation;
use crate::flux::norms::RmsNorm;
use crate::lora::{LayerMut, LoraLayers, LoraLinear, join};

/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`, transformers' `gelu_new`.
pub fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044_715))
        .mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// transformers' `T5DenseActDense` (`wi`) or `T5DenseGatedActDense` (`wi_0`, `wi_1`).
#[derive(Module, Debug)]
pub struct T5DenseActDense {
    /// The expansion of the ungated form.
    pub wi: Option<LoraLinear>,
    /// The activated half of the gated form.
    pub wi_0: Option<LoraLinear>,
    /// The linear half of the gated form.
    pub wi_1: Option<LoraLinear>,
    /// Projection back to `d_model`.
    pub wo: LoraLinear,
    /// The activation.
    #[module(skip)]
    pub activation: T5Activation,
}

impl T5DenseActDense {
    fn act(&self, x: Tensor<3>) -> Tensor<3> {
        match self.activation {
            T5Activation::Relu => relu(x),
            T5Activation::Gelu => gelu(x),
            T5Activation::GeluNew => gelu_new(x),
            T5Activation::Silu => silu(x),
        }
    }

    /// # Shapes
    ///
    /// - x: `[batch, tokens, d_model]`
    /// - output: `[batch, tokens, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (_, Some(wi_0), Some(wi_1)) => self.act(wi_0.forward(x.clone())) * wi_1.forward(x),
            (Some(wi), _, _) => self.act(wi.forward(x)),
            _ => unreachable!("a T5 feed-forward has `wi` or `wi_0` and `wi_1`"),
        };
        self.wo.forward(h)
    }
}

/// `x + SelfAttention(layer_norm(x))` (`layer.0`).
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention {
    /// The attention (`SelfAttention`).
    pub self_attention: T5Attention,
    /// The norm before it.
    pub layer_norm: RmsNorm,
}

/// `x + DenseReluDense(layer_norm(x))` (`layer.1`).
#[derive(Module, Debug)]
pub struct T5LayerFf {
    /// The feed-forward (`DenseReluDense`).
    pub dense_relu_dense: T5DenseActDense,
    /// The norm before it.
    pub layer_norm: RmsNorm,
}

/// One encoder block (`encoder.block.N`).
#[derive(Module, Debug)]
pub struct T5Block {
    /// `layer.0`.
    pub attention: T5LayerSelfAttention,
    /// `layer.1`.
    pub ff: T5LayerFf,
}

impl T5Block {
    /// # Shapes
    ///
    /// - x: `[batch, tokens, d_model]`
    /// - bias: `[1 or batch, heads, tokens, tokens]`
    /// - output: `[batch, tokens, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let a = &self.attention;
        let x = a
            .self_attention
            .forward(a.layer_norm.forward(x.clone()), bias)
            + x;
        let f = &self.ff;
        f.dense_relu_dense.forward(f.layer_norm.forward(x.clone())) + x
    }
}

impl LoraLayers for T5Block {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.attention
            .self_attention
            .collect_layers(&join(prefix, "layer.0.SelfAttention"), out);
        let ff = &mut self.ff.dense_relu_dense;
        let ff_prefix = join(prefix, "layer.1.DenseReluDense");
        ff.wi.collect_layers(&join(&ff_prefix, "wi"), out);
        ff.wi_0.collect_layers(&join(&ff_prefix, "wi_0"), out);
        ff.wi_1.collect_layers(&join(&ff_prefix, "wi_1"), out);
        ff.wo.collect_layers(&join(&ff_prefix, "wo"), out);
    }
}
