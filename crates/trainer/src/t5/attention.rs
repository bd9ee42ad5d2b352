//! T5's self-attention: bias-free projections, no `1/√d` scaling, and a learned bias per head
//! for each bucket of relative positions (shared by every block, held by the first).

use burn::module::Module;
use burn::nn::Embedding;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::lora::{LayerMut, LoraLayers, LoraLinear, join};

/// transformers' `T5Attention._relative_position_bucket` for a bidirectional (encoder)
/// attention: the bucket of `relative = key_position - query_position`. Half the buckets are
/// for keys after the query; in each half, the first quarter of the buckets are exact
/// distances and the rest grow logarithmically up to `max_distance`, computed in `f32` as
/// PyTorch does so that the boundaries fall where they do there.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if distance < max_exact {
        return base + distance;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln();
    let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (log_ratio / log_range * (half - max_exact) as f32) as usize;
    base + large.min(half - 1)
}

/// The position bias `[1, heads, tokens, tokens]` of a sequence of `tokens`, from the bias
/// embedding (`[num_buckets, heads]`).
pub fn position_bias(
    embedding: &Embedding,
    tokens: usize,
    max_distance: usize,
    device: &Device,
) -> Tensor<4> {
    let num_buckets = embedding.weight.dims()[0];
    let buckets: Vec<i64> = (0..tokens)
        .flat_map(|q| {
            (0..tokens).map(move |k| {
                relative_position_bucket(k as i64 - q as i64, num_buckets, max_distance) as i64
            })
        })
        .collect();
    let buckets: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(buckets, [tokens, tokens]), device);
    // [tokens, tokens, heads] → [1, heads, tokens, tokens].
    embedding.forward(buckets).permute([2, 0, 1]).unsqueeze()
}

/// Multi-head self-attention with bias-free projections (transformers' `T5Attention`).
#[derive(Module, Debug)]
pub struct T5Attention {
    /// Query projection, `d_model → heads · d_kv`.
    pub q: LoraLinear,
    /// Key projection.
    pub k: LoraLinear,
    /// Value projection.
    pub v: LoraLinear,
    /// Output projection, `heads · d_kv → d_model`.
    pub o: LoraLinear,
    /// Heads.
    pub heads: usize,
}

impl T5Attention {
    /// # Shapes
    ///
    /// - x: `[batch, tokens, d_model]`
    /// - bias: `[1 or batch, heads, tokens, tokens]` (position bias plus any mask)
    /// - output: `[batch, tokens, d_model]`
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [batch, tokens, _] = x.dims();
        let inner = self.q.weight.dims()[1];
        let head_dim = inner / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, tokens, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split(self.q.forward(x.clone()));
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)) + bias.expand([batch, self.heads, tokens, tokens]);
        let out = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, tokens, inner]);
        self.o.forward(out)
    }
}

impl LoraLayers for T5Attention {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.q.collect_layers(&join(prefix, "q"), out);
        self.k.collect_layers(&join(prefix, "k"), out);
        self.v.collect_layers(&join(prefix, "v"), out);
        self.o.collect_layers(&join(prefix, "o"), out);
    }
}
