//! FLUX.1: diffusers' `FluxTransformer2DModel`, the rectified-flow transformer of FLUX.1-dev
//! and FLUX.1-schnell.
//!
//! - [`config`]: the diffusers configuration and its checks.
//! - [`rope`]: rotary positions over three axes, and the text and image position ids.
//! - [`embeddings`]: the timestep, guidance and pooled-text conditioning vector.
//! - [`norms`]: RMS q/k norms and the adaptive (modulated) layer norms.
//! - [`attention`]: joint and single-stream attention, the tanh-GELU feed-forward.
//! - [`blocks`]: the double-stream and single-stream blocks.
//! - [`packing`]: latents to 2×2-patch tokens and back.
//! - [`lora`]: kohya (BFL names) and PEFT LoRA files.
//! - [`model`]: a whole FLUX.1 model from a diffusers folder, its prompt encoding and LoRAs.
//! - [`scheduler`]: the flow-matching Euler schedule (`FlowMatchEulerDiscreteScheduler`).
//! - [`sample`]: text to image as `FluxPipeline` renders it.
//! - [`single_file`]: BFL's transformer file, `ae.safetensors` and separate text encoders.
//!
//! Module paths follow diffusers (`transformer_blocks.0.attn.add_q_proj`,
//! `single_transformer_blocks.3.proj_mlp`), the names of diffusers' Flux weights files and of
//! PEFT LoRA keys. Every linear layer is a [`LoraLinear`], so adapters attach as on the UNet.
//!
//! The transformer takes latents already packed into tokens (2×2 patches of the 16-channel
//! VAE latent: 64 features per token for FLUX.1, [`pack_latents`]). [`FluxModel`] adds the VAE
//! (the crate's [`crate::vae`] with FLUX.1's config), the CLIP and T5 text encoders
//! ([`crate::clip`], [`crate::t5`]) and the scheduler; the flow-matching objective is in
//! `train::flow`.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod lora;
pub mod model;
pub mod norms;
pub mod packing;
pub mod rope;
pub mod sample;
pub mod scheduler;
pub mod single_file;

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

pub use blocks::{FluxSingleTransformerBlock, FluxTransformerBlock};
pub use config::FluxTransformerConfig;
pub use model::{FluxModel, FluxModelConfig, MAX_SEQUENCE_LENGTH, is_flux_dir};
pub use packing::{pack_latents, unpack_latents};
pub use rope::{ROPE_THETA, RotaryEmbedding, image_ids, text_ids};
pub use sample::{FluxOutput, FluxPipeline};
pub use scheduler::{FlowMatchConfig, TimeShift};
pub use single_file::FluxParts;

use crate::error::{Error, Result};
use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig, join};
use crate::tensor_file::{HostTensor, TensorFile};
use crate::weights::{Weights, load_module, torch_keys};
use blocks::FluxBlockConfig;
use embeddings::{TimeTextEmbedding, TimeTextEmbeddingConfig};
use norms::{AdaLayerNormContinuous, AdaLayerNormContinuousConfig};

/// The largest batch, and the largest number of image or text tokens, a forward accepts
/// (FLUX.1 at 2048×2048 px has 16 384 image tokens; T5 gives at most 512 text tokens).
pub const MAX_TOKENS: usize = 65_536;

impl FluxTransformerConfig {
    /// Builds the model with PyTorch's default initialisation (weights are usually loaded
    /// afterwards with [`FluxTransformer2DModel::load_diffusers`]).
    ///
    /// # Panics
    ///
    /// On a configuration that [`validate`](Self::validate) refuses (`from_file` checks it).
    pub fn init(&self, device: &Device) -> FluxTransformer2DModel {
        if let Err(e) = self.validate() {
            panic!("invalid Flux transformer configuration: {e}");
        }
        let dim = self.inner_dim();
        let block = FluxBlockConfig::new(dim, self.num_attention_heads, self.attention_head_dim);
        FluxTransformer2DModel {
            x_embedder: LoraLinearConfig::new(self.in_channels, dim).init(device),
            context_embedder: LoraLinearConfig::new(self.joint_attention_dim, dim).init(device),
            time_text_embed: TimeTextEmbeddingConfig::new(dim, self.pooled_projection_dim)
                .with_guidance(self.guidance_embeds)
                .init(device),
            transformer_blocks: (0..self.num_layers)
                .map(|_| block.init_double(device))
                .collect(),
            single_transformer_blocks: (0..self.num_single_layers)
                .map(|_| block.init_single(device))
                .collect(),
            norm_out: AdaLayerNormContinuousConfig::new(dim, dim).init(device),
            proj_out: LoraLinearConfig::new(dim, self.output_dim()).init(device),
            axes_dims_rope: self.axes_dims_rope.clone(),
            joint_attention_dim: self.joint_attention_dim,
            pooled_projection_dim: self.pooled_projection_dim,
        }
    }
}

/// The inputs of one [`FluxTransformer2DModel::forward`], under diffusers' argument names.
#[derive(Debug, Clone)]
pub struct FluxInputs {
    /// Packed latent tokens, `[batch, image_tokens, in_channels]`.
    pub hidden_states: Tensor<3>,
    /// Text-encoder (T5) states, `[batch, text_tokens, joint_attention_dim]`.
    pub encoder_hidden_states: Tensor<3>,
    /// Pooled text embedding (CLIP), `[batch, pooled_projection_dim]`.
    pub pooled_projections: Tensor<2>,
    /// Flow-matching time in `[0, 1]` (σ), `[batch]`; the model scales it by 1000.
    pub timestep: Tensor<1>,
    /// Positions of the image tokens, `[image_tokens, axes]` ([`image_ids`]).
    pub img_ids: HostTensor,
    /// Positions of the text tokens, `[text_tokens, axes]` ([`text_ids`]).
    pub txt_ids: HostTensor,
    /// Distilled guidance value, `[batch]`: required by a model with guidance embeddings
    /// (dev), refused by one without (schnell). The model scales it by 1000.
    pub guidance: Option<Tensor<1>>,
}

/// diffusers' `FluxTransformer2DModel`.
#[derive(Module, Debug)]
pub struct FluxTransformer2DModel {
    /// Image-token input projection.
    pub x_embedder: LoraLinear,
    /// Text-token input projection.
    pub context_embedder: LoraLinear,
    /// The conditioning vector from timestep, guidance and pooled text.
    pub time_text_embed: TimeTextEmbedding,
    /// Double-stream blocks.
    pub transformer_blocks: Vec<FluxTransformerBlock>,
    /// Single-stream blocks.
    pub single_transformer_blocks: Vec<FluxSingleTransformerBlock>,
    /// Output norm, modulated by the conditioning vector.
    pub norm_out: AdaLayerNormContinuous,
    /// Output projection to `patch_size² · out_channels` per token.
    pub proj_out: LoraLinear,
    /// Head width per rotary axis.
    pub axes_dims_rope: Vec<usize>,
    /// Width of the text states.
    pub joint_attention_dim: usize,
    /// Width of the pooled text embedding.
    pub pooled_projection_dim: usize,
}

impl FluxTransformer2DModel {
    /// Whether the model embeds a guidance value (FLUX.1-dev).
    pub fn has_guidance_embeds(&self) -> bool {
        self.time_text_embed.guidance_embedder.is_some()
    }

    /// Features of each input image token.
    pub fn in_channels(&self) -> usize {
        self.x_embedder.d_input()
    }

    /// The rotary embedding of the text tokens followed by the image tokens, to reuse across
    /// calls of [`forward_with_rope`](Self::forward_with_rope) with the same token layout.
    ///
    /// # Shapes
    ///
    /// - txt_ids: `[text_tokens, axes]`
    /// - img_ids: `[image_tokens, axes]`
    /// - output: over `text_tokens + image_tokens`
    pub fn rotary_embedding(
        &self,
        txt_ids: &HostTensor,
        img_ids: &HostTensor,
        device: &Device,
    ) -> Result<RotaryEmbedding> {
        let axes = self.axes_dims_rope.len();
        for (name, ids) in [("txt_ids", txt_ids), ("img_ids", img_ids)] {
            if ids.shape.len() != 2 || ids.shape[1] != axes {
                return Err(Error::invalid(
                    name,
                    format!("shape {:?}", ids.shape),
                    format!("expected [tokens, {axes}] (one position per rotary axis)"),
                ));
            }
        }
        let tokens = txt_ids.shape[0] + img_ids.shape[0];
        let mut data = txt_ids.data.clone();
        data.extend_from_slice(&img_ids.data);
        let ids = HostTensor::new(vec![tokens, axes], data);
        RotaryEmbedding::new(&ids, &self.axes_dims_rope, ROPE_THETA, device)
    }

    /// Predicts the flow (`noise − latents` for FLUX.1) of every image token.
    ///
    /// # Shapes
    ///
    /// - see [`FluxInputs`]
    /// - output: `[batch, image_tokens, patch_size² · out_channels]`
    pub fn forward(&self, inputs: FluxInputs) -> Result<Tensor<3>> {
        let rope = self.rotary_embedding(
            &inputs.txt_ids,
            &inputs.img_ids,
            &inputs.hidden_states.device(),
        )?;
        self.check_ids(&inputs)?;
        self.forward_with_rope(inputs, &rope)
    }

    fn check_ids(&self, inputs: &FluxInputs) -> Result<()> {
        let image_tokens = inputs.hidden_states.dims()[1];
        let text_tokens = inputs.encoder_hidden_states.dims()[1];
        for (name, ids, tokens, of) in [
            ("img_ids", &inputs.img_ids, image_tokens, "hidden_states"),
            (
                "txt_ids",
                &inputs.txt_ids,
                text_tokens,
                "encoder_hidden_states",
            ),
        ] {
            if ids.shape[0] != tokens {
                return Err(Error::invalid(
                    name,
                    format!("{} positions", ids.shape[0]),
                    format!("expected one per token of {of} ({tokens})"),
                ));
            }
        }
        Ok(())
    }

    /// [`forward`](Self::forward) with a rotary embedding computed beforehand
    /// ([`rotary_embedding`](Self::rotary_embedding)); `inputs.img_ids` and `inputs.txt_ids`
    /// are not read.
    ///
    /// # Shapes
    ///
    /// - see [`FluxInputs`]; rope: over `text_tokens + image_tokens`
    /// - output: `[batch, image_tokens, patch_size² · out_channels]`
    pub fn forward_with_rope(
        &self,
        inputs: FluxInputs,
        rope: &RotaryEmbedding,
    ) -> Result<Tensor<3>> {
        self.check_inputs(&inputs, rope)?;
        let FluxInputs {
            hidden_states,
            encoder_hidden_states,
            pooled_projections,
            timestep,
            guidance,
            ..
        } = inputs;
        let image_tokens = hidden_states.dims()[1];
        let text_tokens = encoder_hidden_states.dims()[1];

        let mut image = self.x_embedder.forward(hidden_states);
        let temb = self.time_text_embed.forward(
            timestep.mul_scalar(1000.0),
            guidance.map(|g| g.mul_scalar(1000.0)),
            pooled_projections,
        );
        let mut text = self.context_embedder.forward(encoder_hidden_states);
        for block in &self.transformer_blocks {
            (image, text) = block.forward(image, text, temb.clone(), rope);
        }
        let mut joint = Tensor::cat(vec![text, image], 1);
        for block in &self.single_transformer_blocks {
            joint = block.forward(joint, temb.clone(), rope);
        }
        let image = joint.narrow(1, text_tokens, image_tokens);
        Ok(self.proj_out.forward(self.norm_out.forward(image, temb)))
    }

    fn check_inputs(&self, inputs: &FluxInputs, rope: &RotaryEmbedding) -> Result<()> {
        let [batch, image_tokens, width] = inputs.hidden_states.dims();
        let [text_batch, text_tokens, text_width] = inputs.encoder_hidden_states.dims();
        let [pooled_batch, pooled_width] = inputs.pooled_projections.dims();
        let [time_batch] = inputs.timestep.dims();
        if batch == 0 || batch > MAX_TOKENS {
            return Err(Error::invalid(
                "hidden_states",
                format!("batch {batch}"),
                format!("the batch must be in 1..={MAX_TOKENS}"),
            ));
        }
        for (name, tokens) in [
            ("hidden_states", image_tokens),
            ("encoder_hidden_states", text_tokens),
        ] {
            if tokens == 0 || tokens > MAX_TOKENS {
                return Err(Error::invalid(
                    name,
                    format!("{tokens} tokens"),
                    format!("expected 1..={MAX_TOKENS} tokens"),
                ));
            }
        }
        let widths = [
            ("hidden_states", width, self.in_channels(), "in_channels"),
            (
                "encoder_hidden_states",
                text_width,
                self.joint_attention_dim,
                "joint_attention_dim",
            ),
            (
                "pooled_projections",
                pooled_width,
                self.pooled_projection_dim,
                "pooled_projection_dim",
            ),
        ];
        for (name, given, expected, key) in widths {
            if given != expected {
                return Err(Error::invalid(
                    name,
                    format!("width {given}"),
                    format!("expected the model's {key} ({expected})"),
                ));
            }
        }
        let mut batches = vec![
            ("encoder_hidden_states", text_batch),
            ("pooled_projections", pooled_batch),
            ("timestep", time_batch),
        ];
        match (&inputs.guidance, self.has_guidance_embeds()) {
            (Some(g), true) => batches.push(("guidance", g.dims()[0])),
            (None, false) => {}
            (None, true) => {
                return Err(Error::invalid(
                    "guidance",
                    "none",
                    "this model has guidance embeddings (FLUX.1-dev): give one value per sample",
                ));
            }
            (Some(_), false) => {
                return Err(Error::invalid(
                    "guidance",
                    "a value",
                    "this model has no guidance embeddings (FLUX.1-schnell): give none",
                ));
            }
        }
        for (name, b) in batches {
            if b != batch {
                return Err(Error::invalid(
                    name,
                    format!("batch {b}"),
                    format!("expected the batch of hidden_states ({batch})"),
                ));
            }
        }
        if rope.tokens() != text_tokens + image_tokens {
            return Err(Error::invalid(
                "rope",
                format!("{} positions", rope.tokens()),
                format!("expected one per text and image token ({text_tokens} + {image_tokens})"),
            ));
        }
        Ok(())
    }

    /// Loads a diffusers `transformer/diffusion_pytorch_model.safetensors` (fp32, fp16 or
    /// bf16).
    ///
    /// Every parameter must be present with the right shape; the first missing or mis-shaped
    /// tensor is reported by name. Keys the model does not use are ignored. Loaded weights are
    /// frozen (they do not require gradients).
    pub fn load_diffusers(self, path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        self.load_weights(&file)
    }

    /// Loads from any weight source under diffusers' names.
    pub fn load_weights(self, weights: &dyn Weights) -> Result<Self> {
        load_module(self, weights, "")
    }

    /// The diffusers key of every base parameter, in model order.
    pub fn diffusers_keys(&self) -> Vec<String> {
        torch_keys(self, "")
    }
}

impl LoraLayers for FluxTransformer2DModel {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.x_embedder
            .collect_layers(&join(prefix, "x_embedder"), out);
        self.context_embedder
            .collect_layers(&join(prefix, "context_embedder"), out);
        self.time_text_embed
            .collect_layers(&join(prefix, "time_text_embed"), out);
        self.transformer_blocks
            .collect_layers(&join(prefix, "transformer_blocks"), out);
        self.single_transformer_blocks
            .collect_layers(&join(prefix, "single_transformer_blocks"), out);
        self.norm_out.collect_layers(&join(prefix, "norm_out"), out);
        self.proj_out.collect_layers(&join(prefix, "proj_out"), out);
    }
}
