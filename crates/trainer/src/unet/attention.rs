//! diffusers' `Attention` (self and cross) and the GEGLU `FeedForward`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig, join};

/// Configuration of an [`Attention`] layer.
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Width of the queries (and of the output).
    pub query_dim: usize,
    /// Width of the keys and values' source; `query_dim` for self-attention.
    pub context_dim: usize,
    /// Number of heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
}

impl AttentionConfig {
    /// Builds the layer: `to_q`/`to_k`/`to_v` without bias, `to_out.0` with bias.
    pub fn init(&self, device: &Device) -> Attention {
        let inner = self.heads * self.head_dim;
        let proj = |d_in: usize| {
            LoraLinearConfig::new(d_in, inner)
                .with_bias(false)
                .init(device)
        };
        Attention {
            to_q: proj(self.query_dim),
            to_k: proj(self.context_dim),
            to_v: proj(self.context_dim),
            to_out: LoraLinearConfig::new(inner, self.query_dim).init(device),
            heads: self.heads,
        }
    }
}

/// Multi-head scaled dot-product attention with learned projections.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection.
    pub to_q: LoraLinear,
    /// Key projection.
    pub to_k: LoraLinear,
    /// Value projection.
    pub to_v: LoraLinear,
    /// Output projection (`to_out.0` in diffusers; `to_out.1` is a dropout).
    pub to_out: LoraLinear,
    /// Number of heads.
    pub heads: usize,
}

impl Attention {
    /// Attends from `x` to `context` (to `x` itself when `None`).
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, query_dim]`
    /// - context: `[batch, context_tokens, context_dim]`
    /// - output: `[batch, tokens, query_dim]`
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let [batch, tokens, _] = x.dims();
        let context = context.unwrap_or_else(|| x.clone());
        let context_tokens = context.dims()[1];
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context.clone());
        let v = self.to_v.forward(context);
        let inner = q.dims()[2];
        let head_dim = inner / self.heads;
        let split =
            |t: Tensor<3>, n: usize| t.reshape([batch, n, self.heads, head_dim]).swap_dims(1, 2);
        let out = attention(
            split(q, tokens),
            split(k, context_tokens),
            split(v, context_tokens),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let out = out.swap_dims(1, 2).reshape([batch, tokens, inner]);
        self.to_out.forward(out)
    }
}

impl LoraLayers for Attention {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.to_q.collect_layers(&join(prefix, "to_q"), out);
        self.to_k.collect_layers(&join(prefix, "to_k"), out);
        self.to_v.collect_layers(&join(prefix, "to_v"), out);
        self.to_out.collect_layers(&join(prefix, "to_out.0"), out);
    }
}

/// Configuration of a [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Width in and out.
    pub dim: usize,
    /// Hidden width multiplier.
    #[config(default = 4)]
    pub mult: usize,
}

impl FeedForwardConfig {
    /// Builds the block.
    pub fn init(&self, device: &Device) -> FeedForward {
        let inner = self.dim * self.mult;
        FeedForward {
            geglu_proj: LoraLinearConfig::new(self.dim, inner * 2).init(device),
            out: LoraLinearConfig::new(inner, self.dim).init(device),
        }
    }
}

/// `out(h · gelu(g))` where `[h, g] = geglu_proj(x)` (diffusers' GEGLU feed-forward).
#[derive(Module, Debug)]
pub struct FeedForward {
    /// The doubled-width input projection (`net.0.proj` in diffusers).
    pub geglu_proj: LoraLinear,
    /// The output projection (`net.2` in diffusers).
    pub out: LoraLinear,
}

impl FeedForward {
    /// # Shapes
    ///
    /// - input: `[batch, tokens, dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let projected = self.geglu_proj.forward(x);
        let [hidden, gate]: [Tensor<3>; 2] = projected
            .chunk(2, 2)
            .try_into()
            .expect("an even projection width splits in two");
        self.out.forward(hidden * gelu(gate))
    }
}

impl LoraLayers for FeedForward {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.geglu_proj
            .collect_layers(&join(prefix, "net.0.proj"), out);
        self.out.collect_layers(&join(prefix, "net.2"), out);
    }
}
