//! diffusers' `FluxAttention` (joint attention of the double-stream blocks, self-attention of
//! the single-stream blocks, RMS q/k norms, rotary positions) and the tanh-GELU feed-forward.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::gelu_approximate;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use super::norms::{NORM_EPS, RmsNorm, RmsNormConfig};
use super::rope::RotaryEmbedding;
use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig, join};

/// Configuration of a [`FluxAttention`].
#[derive(Config, Debug)]
pub struct FluxAttentionConfig {
    /// Token width in and out.
    pub dim: usize,
    /// Number of heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Whether the text stream has its own projections (`added_kv_proj_dim`, the
    /// double-stream blocks).
    #[config(default = false)]
    pub joint: bool,
    /// Whether the image output is projected (`to_out`); the single-stream blocks' attention
    /// is `pre_only` and has none.
    #[config(default = true)]
    pub project_out: bool,
}

impl FluxAttentionConfig {
    /// Builds the layer; every projection has a bias.
    pub fn init(&self, device: &Device) -> FluxAttention {
        let inner = self.heads * self.head_dim;
        let linear = |d_in: usize, d_out: usize| LoraLinearConfig::new(d_in, d_out).init(device);
        let norm = || {
            RmsNormConfig::new(self.head_dim)
                .with_eps(NORM_EPS)
                .init(device)
        };
        FluxAttention {
            norm_q: norm(),
            norm_k: norm(),
            to_q: linear(self.dim, inner),
            to_k: linear(self.dim, inner),
            to_v: linear(self.dim, inner),
            to_out: self.project_out.then(|| linear(inner, self.dim)),
            added: self.joint.then(|| AddedProjections {
                norm_added_q: norm(),
                norm_added_k: norm(),
                add_q_proj: linear(self.dim, inner),
                add_k_proj: linear(self.dim, inner),
                add_v_proj: linear(self.dim, inner),
                to_add_out: linear(inner, self.dim),
            }),
            heads: self.heads,
        }
    }
}

/// The text stream's projections of a joint attention.
#[derive(Module, Debug)]
pub struct AddedProjections {
    /// RMS norm of the text queries, per head.
    pub norm_added_q: RmsNorm,
    /// RMS norm of the text keys, per head.
    pub norm_added_k: RmsNorm,
    /// Text query projection.
    pub add_q_proj: LoraLinear,
    /// Text key projection.
    pub add_k_proj: LoraLinear,
    /// Text value projection.
    pub add_v_proj: LoraLinear,
    /// Text output projection.
    pub to_add_out: LoraLinear,
}

/// Multi-head attention over the text tokens followed by the image tokens, with per-head RMS
/// norms of queries and keys and rotary positions.
#[derive(Module, Debug)]
pub struct FluxAttention {
    /// RMS norm of the queries, per head.
    pub norm_q: RmsNorm,
    /// RMS norm of the keys, per head.
    pub norm_k: RmsNorm,
    /// Query projection.
    pub to_q: LoraLinear,
    /// Key projection.
    pub to_k: LoraLinear,
    /// Value projection.
    pub to_v: LoraLinear,
    /// Output projection (`to_out.0`); absent in the single-stream blocks.
    pub to_out: Option<LoraLinear>,
    /// The text stream's projections (double-stream blocks). Their parameters sit directly
    /// under the attention in diffusers' names (`attn.add_q_proj`, ...).
    pub added: Option<AddedProjections>,
    /// Number of heads.
    pub heads: usize,
}

impl FluxAttention {
    /// Projects, splits into heads and RMS-normalises.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - output: `[batch, heads, tokens, head_dim]` three times (queries, keys, values)
    fn qkv(
        &self,
        x: Tensor<3>,
        [to_q, to_k, to_v]: [&LoraLinear; 3],
        [norm_q, norm_k]: [&RmsNorm; 2],
    ) -> [Tensor<4>; 3] {
        let [batch, tokens, _] = x.dims();
        let heads = |t: Tensor<3>| {
            let inner = t.dims()[2];
            t.reshape([batch, tokens, self.heads, inner / self.heads])
                .swap_dims(1, 2)
        };
        let q = norm_q.forward(heads(to_q.forward(x.clone())));
        let k = norm_k.forward(heads(to_k.forward(x.clone())));
        [q, k, heads(to_v.forward(x))]
    }

    /// Scaled dot-product attention of rotated queries and keys, heads merged again.
    ///
    /// # Shapes
    ///
    /// - q, k, v: `[batch, heads, tokens, head_dim]`
    /// - output: `[batch, tokens, heads · head_dim]`
    fn attend(&self, [q, k, v]: [Tensor<4>; 3], rope: &RotaryEmbedding) -> Tensor<3> {
        let [batch, heads, tokens, head_dim] = q.dims();
        let out = attention(
            rope.apply(q),
            rope.apply(k),
            v,
            None,
            None,
            AttentionModuleOptions::default(),
        );
        out.swap_dims(1, 2)
            .reshape([batch, tokens, heads * head_dim])
    }

    /// Joint attention of a double-stream block: the text and image tokens attend to each
    /// other as one sequence (text first), each stream with its own projections. Returns the
    /// image and the text outputs.
    ///
    /// # Shapes
    ///
    /// - image: `[batch, image_tokens, dim]`
    /// - text: `[batch, text_tokens, dim]`
    /// - rope: over `text_tokens + image_tokens`
    /// - output: `[batch, image_tokens, dim]`, `[batch, text_tokens, dim]`
    ///
    /// # Panics
    ///
    /// On an attention built without `joint` or without `project_out` (a model-construction
    /// error, not an input one).
    pub fn forward_joint(
        &self,
        image: Tensor<3>,
        text: Tensor<3>,
        rope: &RotaryEmbedding,
    ) -> (Tensor<3>, Tensor<3>) {
        let added = self
            .added
            .as_ref()
            .expect("a joint attention has text projections");
        let to_out = self
            .to_out
            .as_ref()
            .expect("a joint attention has an output projection");
        let text_tokens = text.dims()[1];
        let image_tokens = image.dims()[1];
        let [iq, ik, iv] = self.qkv(
            image,
            [&self.to_q, &self.to_k, &self.to_v],
            [&self.norm_q, &self.norm_k],
        );
        let [tq, tk, tv] = self.qkv(
            text,
            [&added.add_q_proj, &added.add_k_proj, &added.add_v_proj],
            [&added.norm_added_q, &added.norm_added_k],
        );
        let joint = |t: Tensor<4>, i: Tensor<4>| Tensor::cat(vec![t, i], 2);
        let out = self.attend([joint(tq, iq), joint(tk, ik), joint(tv, iv)], rope);
        let text_out = out.clone().narrow(1, 0, text_tokens);
        let image_out = out.narrow(1, text_tokens, image_tokens);
        (
            to_out.forward(image_out),
            added.to_add_out.forward(text_out),
        )
    }

    /// Self-attention of a single-stream block over the whole (text + image) sequence,
    /// without an output projection when the layer has none.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - rope: over `tokens`
    /// - output: `[batch, tokens, heads · head_dim]`
    pub fn forward_single(&self, x: Tensor<3>, rope: &RotaryEmbedding) -> Tensor<3> {
        let qkv = self.qkv(
            x,
            [&self.to_q, &self.to_k, &self.to_v],
            [&self.norm_q, &self.norm_k],
        );
        let out = self.attend(qkv, rope);
        match &self.to_out {
            Some(to_out) => to_out.forward(out),
            None => out,
        }
    }
}

impl LoraLayers for FluxAttention {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.to_q.collect_layers(&join(prefix, "to_q"), out);
        self.to_k.collect_layers(&join(prefix, "to_k"), out);
        self.to_v.collect_layers(&join(prefix, "to_v"), out);
        self.to_out.collect_layers(&join(prefix, "to_out.0"), out);
        if let Some(added) = &mut self.added {
            added
                .add_q_proj
                .collect_layers(&join(prefix, "add_q_proj"), out);
            added
                .add_k_proj
                .collect_layers(&join(prefix, "add_k_proj"), out);
            added
                .add_v_proj
                .collect_layers(&join(prefix, "add_v_proj"), out);
            added
                .to_add_out
                .collect_layers(&join(prefix, "to_add_out"), out);
        }
    }
}

/// Configuration of a [`FluxFeedForward`].
#[derive(Config, Debug)]
pub struct FluxFeedForwardConfig {
    /// Width in and out.
    pub dim: usize,
    /// Hidden width multiplier.
    #[config(default = 4)]
    pub mult: usize,
}

impl FluxFeedForwardConfig {
    /// Builds the block.
    pub fn init(&self, device: &Device) -> FluxFeedForward {
        let inner = self.dim * self.mult;
        FluxFeedForward {
            proj: LoraLinearConfig::new(self.dim, inner).init(device),
            out: LoraLinearConfig::new(inner, self.dim).init(device),
        }
    }
}

/// `out(gelu_tanh(proj(x)))`: diffusers' `FeedForward` with `activation_fn="gelu-approximate"`.
#[derive(Module, Debug)]
pub struct FluxFeedForward {
    /// Input projection (`net.0.proj`).
    pub proj: LoraLinear,
    /// Output projection (`net.2`).
    pub out: LoraLinear,
}

impl FluxFeedForward {
    /// # Shapes
    ///
    /// - x: `[batch, tokens, dim]`
    /// - output: `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.out.forward(gelu_approximate(self.proj.forward(x)))
    }
}

impl LoraLayers for FluxFeedForward {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.proj.collect_layers(&join(prefix, "net.0.proj"), out);
        self.out.collect_layers(&join(prefix, "net.2"), out);
    }
}
