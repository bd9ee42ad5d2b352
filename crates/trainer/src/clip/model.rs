//! transformers' `CLIPTextModel`: token and position embeddings, pre-norm encoder layers with
//! causal self-attention, and a final LayerNorm.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::{ClipActivation, ClipTextConfig};
use crate::error::{Error, Result};
use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig, join};
use crate::weights::{OptionalPrefix, Weights, load_module};

impl ClipTextConfig {
    /// Builds the model with PyTorch's default initialisation (weights are usually loaded
    /// afterwards with [`ClipTextModel::load_weights`]).
    pub fn init(&self, device: &Device) -> ClipTextModel {
        let d = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: LoraLinearConfig::new(d, d).init(device),
                    k_proj: LoraLinearConfig::new(d, d).init(device),
                    v_proj: LoraLinearConfig::new(d, d).init(device),
                    out_proj: LoraLinearConfig::new(d, d).init(device),
                    heads: self.num_attention_heads,
                },
                layer_norm1: norm(),
                mlp: ClipMlp {
                    fc1: LoraLinearConfig::new(d, self.intermediate_size).init(device),
                    fc2: LoraLinearConfig::new(self.intermediate_size, d).init(device),
                    quick_gelu: self.hidden_act == ClipActivation::QuickGelu,
                },
                layer_norm2: norm(),
            })
            .collect();
        ClipTextModel {
            text_model: ClipTextTransformer {
                embeddings: ClipEmbeddings {
                    token_embedding: EmbeddingConfig::new(self.vocab_size, d).init(device),
                    position_embedding: EmbeddingConfig::new(self.max_position_embeddings, d)
                        .init(device),
                },
                encoder: ClipEncoder { layers },
                final_layer_norm: norm(),
            },
        }
    }
}

/// The text encoder of Stable Diffusion 1.x/2.x.
#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// transformers nests everything under `text_model`.
    pub text_model: ClipTextTransformer,
}

/// Embeddings, encoder and final norm.
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    /// Token and position embeddings.
    pub embeddings: ClipEmbeddings,
    /// The encoder layers.
    pub encoder: ClipEncoder,
    /// Applied to whichever layer's output is used.
    pub final_layer_norm: LayerNorm,
}

/// Token and learned position embeddings.
#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    /// `[vocab, hidden]`.
    pub token_embedding: Embedding,
    /// `[positions, hidden]`.
    pub position_embedding: Embedding,
}

/// The stack of encoder layers.
#[derive(Module, Debug)]
pub struct ClipEncoder {
    /// Encoder layers, input side first.
    pub layers: Vec<ClipEncoderLayer>,
}

/// Pre-norm causal self-attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// Causal multi-head self-attention.
    pub self_attn: ClipAttention,
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Two-layer MLP.
    pub mlp: ClipMlp,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
}

/// Multi-head self-attention with biased projections.
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// Query projection.
    pub q_proj: LoraLinear,
    /// Key projection.
    pub k_proj: LoraLinear,
    /// Value projection.
    pub v_proj: LoraLinear,
    /// Output projection.
    pub out_proj: LoraLinear,
    /// Heads.
    pub heads: usize,
}

/// `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// Expansion.
    pub fc1: LoraLinear,
    /// Projection back.
    pub fc2: LoraLinear,
    /// quick_gelu (SD1.x) rather than GELU (SD2.x).
    pub quick_gelu: bool,
}

impl ClipAttention {
    /// # Shapes
    ///
    /// - x: `[batch, tokens, hidden]`
    /// - output: `[batch, tokens, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, tokens, hidden] = x.dims();
        let head_dim = hidden / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, tokens, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let options = AttentionModuleOptions {
            is_causal: true,
            ..AttentionModuleOptions::default()
        };
        let out = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([batch, tokens, hidden]);
        self.out_proj.forward(out)
    }
}

impl ClipMlp {
    /// # Shapes
    ///
    /// - x: `[batch, tokens, hidden]`
    /// - output: `[batch, tokens, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.fc1.forward(x);
        let h = if self.quick_gelu {
            h.clone() * sigmoid(h.mul_scalar(1.702))
        } else {
            gelu(h)
        };
        self.fc2.forward(h)
    }
}

impl ClipEncoderLayer {
    /// # Shapes
    ///
    /// - x: `[batch, tokens, hidden]`
    /// - output: `[batch, tokens, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.self_attn.forward(self.layer_norm1.forward(x.clone())) + x;
        self.mlp.forward(self.layer_norm2.forward(x.clone())) + x
    }
}

/// Token ids `[batch, tokens]` as an integer tensor.
pub fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let batch = ids.len();
    let tokens = ids.first().map_or(0, Vec::len);
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(flat, [batch, tokens]), device)
}

impl ClipTextModel {
    /// Loads transformers weights (`text_encoder/model.safetensors`), keys as transformers names
    /// them (`text_model.encoder.layers.0.self_attn.q_proj.weight`, ...; transformers 5 drops
    /// the `text_model.` level, which is accepted too).
    pub fn load_weights(self, weights: &dyn Weights) -> Result<Self> {
        load_module(self, &OptionalPrefix::new(weights, "text_model."), "")
    }

    /// Encoder layers.
    pub fn num_layers(&self) -> usize {
        self.text_model.encoder.layers.len()
    }

    /// Token plus position embeddings: the encoder's input.
    pub(crate) fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, tokens] = input_ids.dims();
        let emb = &self.text_model.embeddings;
        let positions = emb
            .position_embedding
            .weight
            .val()
            .narrow(0, 0, tokens)
            .unsqueeze_dim::<3>(0);
        emb.token_embedding.forward(input_ids) + positions
    }

    /// The states Stable Diffusion conditions on: the output of the `clip_skip`-th layer from
    /// the end (1 = the last layer), through the final LayerNorm, as kohya's `clip_skip` and
    /// A1111's "CLIP skip" count. (diffusers' pipeline argument `clip_skip` counts skipped
    /// layers, i.e. ours minus one.)
    ///
    /// # Shapes
    ///
    /// - input_ids: `[batch, tokens]`
    /// - output: `[batch, tokens, hidden]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, clip_skip: usize) -> Result<Tensor<3>> {
        let layers = self.num_layers();
        if clip_skip == 0 || clip_skip > layers {
            return Err(Error::invalid(
                "clip_skip",
                clip_skip,
                format!("expected 1 (the last layer) to {layers} for this text encoder"),
            ));
        }
        let mut x = self.embed(input_ids);
        for layer in &self.text_model.encoder.layers[..layers + 1 - clip_skip] {
            x = layer.forward(x);
        }
        Ok(self.text_model.final_layer_norm.forward(x))
    }

    /// transformers' `pooler_output`: the last layer through the final norm, at each row's
    /// pooled position ([`pooled_positions`](super::projection::pooled_positions): the first
    /// `eos_token_id`, or the largest id for legacy configs). What FLUX.1 conditions on.
    ///
    /// # Shapes
    ///
    /// - input_ids: `[batch, tokens]`, the rows of `ids`
    /// - output: `[batch, hidden]`
    pub fn pooler_output(
        &self,
        input_ids: Tensor<2, Int>,
        ids: &[Vec<u32>],
        eos_token_id: usize,
    ) -> Result<Tensor<2>> {
        let [batch, tokens] = input_ids.dims();
        if ids.len() != batch || ids.iter().any(|r| r.len() != tokens) {
            return Err(Error::invalid(
                "ids",
                format!("{} rows", ids.len()),
                format!("expected the {batch} rows of {tokens} tokens of input_ids"),
            ));
        }
        let last = self.forward(input_ids, 1)?;
        let [_, _, hidden] = last.dims();
        let rows = super::projection::pooled_positions(ids, eos_token_id)
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                last.clone()
                    .slice([i..i + 1, p..p + 1, 0..hidden])
                    .reshape([1, hidden])
            })
            .collect();
        Ok(Tensor::cat(rows, 0))
    }

    /// transformers' `hidden_states` (the embeddings, then every layer's output, without the
    /// final norm) and `last_hidden_state`.
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>) -> (Vec<Tensor<3>>, Tensor<3>) {
        let mut x = self.embed(input_ids);
        let mut states = vec![x.clone()];
        for layer in &self.text_model.encoder.layers {
            x = layer.forward(x);
            states.push(x.clone());
        }
        let last = self.text_model.final_layer_norm.forward(x);
        (states, last)
    }
}

impl LoraLayers for ClipTextModel {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        let prefix = join(prefix, "text_model.encoder.layers");
        for (i, layer) in self.text_model.encoder.layers.iter_mut().enumerate() {
            let p = join(&prefix, &i.to_string());
            let attn = &mut layer.self_attn;
            let a = join(&p, "self_attn");
            attn.q_proj.collect_layers(&join(&a, "q_proj"), out);
            attn.k_proj.collect_layers(&join(&a, "k_proj"), out);
            attn.v_proj.collect_layers(&join(&a, "v_proj"), out);
            attn.out_proj.collect_layers(&join(&a, "out_proj"), out);
            let m = join(&p, "mlp");
            layer.mlp.fc1.collect_layers(&join(&m, "fc1"), out);
            layer.mlp.fc2.collect_layers(&join(&m, "fc2"), out);
        }
    }
}
