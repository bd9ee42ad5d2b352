//! transformers' `T5EncoderModel`: token embeddings, the encoder blocks with one relative
//! position bias shared by all, and a final RMS norm; its `last_hidden_state` is what FLUX
//! attends to.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, Int, Tensor};

use super::attention::{T5Attention, position_bias};
use super::config::T5Config;
use super::layer::{T5Block, T5DenseActDense, T5LayerFf, T5LayerSelfAttention};
use crate::error::{Error, Result};
use crate::flux::norms::RmsNorm;
use crate::flux::norms::RmsNormConfig;
use crate::lora::{LayerMut, LoraLayers, LoraLinearConfig, join};
use crate::tensor_file::{HostTensor, TensorFile};
use crate::weights::{Weights, load_module, open_weights};

impl T5Config {
    /// Builds the encoder with PyTorch's default initialisation (weights are usually loaded
    /// afterwards with [`T5EncoderModel::load_weights`]).
    pub fn init(&self, device: &Device) -> T5EncoderModel {
        let d = self.d_model;
        let inner = self.num_heads * self.d_kv;
        let linear = |i: usize, o: usize| LoraLinearConfig::new(i, o).with_bias(false).init(device);
        let norm = || {
            RmsNormConfig::new(d)
                .with_eps(self.layer_norm_epsilon)
                .init(device)
        };
        let block = (0..self.num_layers)
            .map(|_| T5Block {
                attention: T5LayerSelfAttention {
                    self_attention: T5Attention {
                        q: linear(d, inner),
                        k: linear(d, inner),
                        v: linear(d, inner),
                        o: linear(inner, d),
                        heads: self.num_heads,
                    },
                    layer_norm: norm(),
                },
                ff: T5LayerFf {
                    dense_relu_dense: T5DenseActDense {
                        wi: (!self.gated).then(|| linear(d, self.d_ff)),
                        wi_0: self.gated.then(|| linear(d, self.d_ff)),
                        wi_1: self.gated.then(|| linear(d, self.d_ff)),
                        wo: linear(self.d_ff, d),
                        activation: self.activation,
                    },
                    layer_norm: norm(),
                },
            })
            .collect();
        T5EncoderModel {
            shared: EmbeddingConfig::new(self.vocab_size, d).init(device),
            encoder: T5Stack {
                relative_attention_bias: EmbeddingConfig::new(
                    self.relative_attention_num_buckets,
                    self.num_heads,
                )
                .init(device),
                block,
                final_layer_norm: norm(),
                max_distance: self.relative_attention_max_distance,
            },
        }
    }
}

/// The T5 encoder (FLUX.1's `text_encoder_2`).
#[derive(Module, Debug)]
pub struct T5EncoderModel {
    /// Token embeddings, `[vocab, d_model]` (`shared`, tied to `encoder.embed_tokens`).
    pub shared: Embedding,
    /// The blocks and final norm.
    pub encoder: T5Stack,
}

/// transformers' `T5Stack` as an encoder.
#[derive(Module, Debug)]
pub struct T5Stack {
    /// The relative position bias `[num_buckets, heads]`, stored under the first block's
    /// attention (`block.0.layer.0.SelfAttention.relative_attention_bias`).
    pub relative_attention_bias: Embedding,
    /// The blocks, input side first.
    pub block: Vec<T5Block>,
    /// The norm of the last block's output.
    pub final_layer_norm: RmsNorm,
    /// Distance beyond which relative positions share a bucket.
    pub max_distance: usize,
}

/// The weights of a `T5EncoderModel` file, answering `shared.weight` with
/// `encoder.embed_tokens.weight` where only that is stored.
struct TiedEmbeddings<'a>(&'a dyn Weights);

impl Weights for TiedEmbeddings<'_> {
    fn read(&self, key: &str) -> Result<HostTensor> {
        match self.0.read(key) {
            Err(Error::MissingTensor { .. }) if key == "shared.weight" => {
                self.0.read("encoder.embed_tokens.weight")
            }
            other => other,
        }
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl T5EncoderModel {
    /// Loads transformers weights (`text_encoder_2/model.safetensors`: `shared.weight`,
    /// `encoder.block.N.layer.0.SelfAttention.q.weight`, ...).
    pub fn load_weights(self, weights: &dyn Weights) -> Result<Self> {
        load_module(self, &TiedEmbeddings(weights), "")
    }

    /// Loads a transformers folder's weights (`text_encoder_2/`): `model.safetensors`, or the
    /// shards of `model.safetensors.index.json` (FLUX.1's T5-XXL is saved in two).
    pub fn load_dir(self, dir: impl AsRef<Path>) -> Result<Self> {
        let weights = open_weights(dir.as_ref(), "model")?;
        self.load_weights(weights.as_ref())
    }

    /// Loads a transformers `model.safetensors` file.
    pub fn load_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        self.load_weights(&file)
    }

    /// The encoder's `last_hidden_state` for token ids `[batch, tokens]`, with an optional
    /// attention mask `[batch, tokens]` (1 for tokens to attend to, 0 for padding; FLUX calls
    /// the encoder without one, so padding is attended to).
    ///
    /// # Shapes
    ///
    /// - output: `[batch, tokens, d_model]`
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Option<Tensor<2>>) -> Tensor<3> {
        let [batch, tokens] = ids.dims();
        let device = ids.device();
        let mut bias = position_bias(
            &self.encoder.relative_attention_bias,
            tokens,
            self.encoder.max_distance,
            &device,
        );
        if let Some(mask) = mask {
            // transformers adds the dtype's lowest value where keys are masked.
            let heads = bias.dims()[1];
            let blocked = mask.neg().add_scalar(1.0).mul_scalar(f32::MIN);
            let blocked: Tensor<4> = blocked.reshape([batch, 1, 1, tokens]);
            bias = bias.expand([batch, heads, tokens, tokens])
                + blocked.expand([batch, heads, tokens, tokens]);
        }
        let mut x = self.shared.forward(ids);
        for block in &self.encoder.block {
            x = block.forward(x, bias.clone());
        }
        self.encoder.final_layer_norm.forward(x)
    }
}

/// The longest sequence [`T5EncoderModel::encode`] accepts (FLUX.1-dev uses 512).
pub const MAX_TOKENS: usize = 4096;

impl T5EncoderModel {
    /// The vocabulary size (rows of `shared`).
    pub fn vocab_size(&self) -> usize {
        self.shared.weight.dims()[0]
    }

    /// [`forward`](Self::forward) on token ids given as rows (as
    /// [`super::T5Tokenizer::encode_padded`] gives them), without a mask, after checking them.
    ///
    /// # Errors
    ///
    /// When there are no rows, the rows differ in length or are empty or longer than
    /// [`MAX_TOKENS`], or an id is outside the vocabulary; the error names `ids`.
    pub fn encode(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor<3>> {
        let Some(first) = ids.first() else {
            return Err(Error::invalid(
                "ids",
                "no rows",
                "expected at least one sequence",
            ));
        };
        let tokens = first.len();
        if tokens == 0 || tokens > MAX_TOKENS {
            return Err(Error::invalid(
                "ids",
                format!("{tokens} tokens"),
                format!("expected 1..={MAX_TOKENS} tokens"),
            ));
        }
        if let Some((row, r)) = ids.iter().enumerate().find(|(_, r)| r.len() != tokens) {
            return Err(Error::invalid(
                format!("ids[{row}]"),
                format!("{} tokens", r.len()),
                format!("expected {tokens} tokens, as the first row"),
            ));
        }
        let vocab = self.vocab_size();
        if let Some(&id) = ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(Error::invalid(
                "ids",
                id,
                format!("expected token ids below the vocabulary size {vocab}"),
            ));
        }
        Ok(self.forward(crate::clip::ids_tensor(ids, device), None))
    }
}

impl LoraLayers for T5EncoderModel {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        for (i, block) in self.encoder.block.iter_mut().enumerate() {
            block.collect_layers(&join(prefix, &format!("encoder.block.{i}")), out);
        }
    }
}
