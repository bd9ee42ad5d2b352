//! diffusers' `UNet2DConditionModel` (the SD1.x/SD2.x family and SDXL), built from its
//! `config.json`.
//!
//! - [`config`]: the diffusers configuration and its checks.
//! - [`embeddings`]: sinusoidal timestep features and the time MLP.
//! - [`text_time`]: SDXL's added conditioning (pooled text and micro-conditioning).
//! - [`resnet`]: resnet blocks, down- and upsamplers.
//! - [`attention`]: attention and the GEGLU feed-forward.
//! - [`transformer`]: the transformer block and `Transformer2DModel`.
//! - [`blocks`]: down, mid and up blocks.
//! - [`load`]: loading `diffusion_pytorch_model.safetensors`.
//!
//! Module paths follow diffusers (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`),
//! which is also what LoRA target patterns and kohya key names are derived from.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod load;
pub mod resnet;
pub mod text_time;
pub mod transformer;

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

pub use config::{DownBlockKind, UNetConfig, UpBlockKind};
pub use text_time::{AddedConditions, TextTimeConfig};

use crate::error::{Error, Result};
use crate::lora::{LayerMut, LoraConv2d, LoraConv2dConfig, LoraLayers, join};
use blocks::{BlockSettings, CrossAttention, DownBlock, MidBlock, UpBlock};
use embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_embedding};

impl UNetConfig {
    /// Builds the model with PyTorch's default initialisation (weights are usually loaded
    /// afterwards with [`UNet2DConditionModel::load_diffusers`]).
    pub fn init(&self, device: &Device) -> UNet2DConditionModel {
        let boc = &self.block_out_channels;
        let n = boc.len();
        let settings = BlockSettings {
            temb_channels: self.time_embedding_dim,
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            use_linear_projection: self.use_linear_projection,
        };
        let cross = |i: usize| CrossAttention {
            heads: self.num_attention_heads[i],
            layers: self.transformer_layers_per_block[i],
            cross_attention_dim: self.cross_attention_dim[i],
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_c = boc[0];
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = boc[i];
            let is_final = i == n - 1;
            down_blocks.push(DownBlock::new(
                in_c,
                out_c,
                self.layers_per_block[i],
                (*kind == DownBlockKind::CrossAttnDownBlock2D).then(|| cross(i)),
                (!is_final).then_some(self.downsample_padding),
                &settings,
                device,
            ));
        }

        let mid_block = MidBlock::new(
            boc[n - 1],
            cross(n - 1),
            self.mid_block_scale_factor,
            &settings,
            device,
        );

        let reversed: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_c = reversed[0];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let level = n - 1 - i;
            let prev_out = out_c;
            out_c = reversed[i];
            let in_c = reversed[(i + 1).min(n - 1)];
            let layers = self.layers_per_block[level] + 1;
            // diffusers: the last resnet of a level takes the skip from the level above.
            let skips: Vec<usize> = (0..layers)
                .map(|j| if j == layers - 1 { in_c } else { out_c })
                .collect();
            up_blocks.push(UpBlock::new(
                &skips,
                prev_out,
                out_c,
                (*kind == UpBlockKind::CrossAttnUpBlock2D).then(|| cross(level)),
                i != n - 1,
                &settings,
                device,
            ));
        }

        UNet2DConditionModel {
            conv_in: LoraConv2dConfig::new(self.in_channels, boc[0], self.conv_in_kernel)
                .with_padding((self.conv_in_kernel - 1) / 2)
                .init(device),
            time_embedding: TimestepEmbeddingConfig::new(boc[0], self.time_embedding_dim)
                .init(device),
            add_embedding: self.addition.map(|a| {
                TimestepEmbeddingConfig::new(
                    a.projection_class_embeddings_input_dim,
                    self.time_embedding_dim,
                )
                .init(device)
            }),
            addition: self.addition,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(self.norm_num_groups, boc[0])
                .with_epsilon(self.norm_eps)
                .init(device),
            conv_out: LoraConv2dConfig::new(boc[0], self.out_channels, self.conv_out_kernel)
                .with_padding((self.conv_out_kernel - 1) / 2)
                .init(device),
            time_proj_dim: boc[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            center_input_sample: self.center_input_sample,
        }
    }
}

/// The conditional UNet of Stable Diffusion 1.x/2.x and SDXL.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    /// Latents to the first level's channels.
    pub conv_in: LoraConv2d,
    /// Time MLP.
    pub time_embedding: TimestepEmbedding,
    /// SDXL: the MLP of the added conditioning (pooled text and time ids).
    pub add_embedding: Option<TimestepEmbedding>,
    /// SDXL: the widths of the added conditioning.
    #[module(skip)]
    pub addition: Option<TextTimeConfig>,
    /// Encoder levels.
    pub down_blocks: Vec<DownBlock>,
    /// Bottleneck.
    pub mid_block: MidBlock,
    /// Decoder levels, deepest first.
    pub up_blocks: Vec<UpBlock>,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// To the prediction's channels.
    pub conv_out: LoraConv2d,
    /// Width of the sinusoidal timestep features.
    pub time_proj_dim: usize,
    /// Timestep feature order.
    pub flip_sin_to_cos: bool,
    /// Timestep frequency shift.
    pub freq_shift: f64,
    /// Map inputs from [0, 1] to [-1, 1].
    pub center_input_sample: bool,
}

impl UNet2DConditionModel {
    /// Predicts noise (or `v`) for noisy latents at the given timesteps (SD1.x/SD2.x).
    ///
    /// # Shapes
    ///
    /// - sample: `[batch, in_channels, height, width]`
    /// - timesteps: `[batch]` (may be fractional)
    /// - context: `[batch, tokens, cross_attention_dim]` (text-encoder hidden states)
    /// - output: `[batch, out_channels, height, width]`
    ///
    /// # Panics
    ///
    /// For a UNet with added conditioning (SDXL), which needs
    /// [`forward_added`](Self::forward_added).
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        context: Tensor<3>,
    ) -> Tensor<4> {
        assert!(
            self.addition.is_none(),
            "this UNet has added conditioning (SDXL): call forward_added"
        );
        self.forward_inner(sample, timesteps, context, None)
    }

    /// Whether the model needs [`AddedConditions`] (SDXL).
    pub fn has_added_conditioning(&self) -> bool {
        self.addition.is_some()
    }

    /// [`forward`](Self::forward) with SDXL's added conditioning: `added` must be given exactly
    /// when the model has an `add_embedding`, with the widths its config implies; otherwise a
    /// clear error and no computation.
    ///
    /// # Shapes
    ///
    /// As [`forward`](Self::forward), plus `added.text_embeds: [batch, pooled]` and
    /// `added.time_ids: [batch, n_time_ids]`.
    pub fn forward_added(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        context: Tensor<3>,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor<4>> {
        match (&self.addition, added) {
            (Some(config), Some(added)) => added.check(config)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::invalid(
                    "added_conditions",
                    "none",
                    "this UNet (addition_embed_type \"text_time\") needs text_embeds and time_ids",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "added_conditions",
                    "text_embeds and time_ids",
                    "this UNet has no addition_embed_type; give none",
                ));
            }
        }
        Ok(self.forward_inner(sample, timesteps, context, added))
    }

    fn forward_inner(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        context: Tensor<3>,
        added: Option<&AddedConditions>,
    ) -> Tensor<4> {
        let sample = if self.center_input_sample {
            sample.mul_scalar(2.0).sub_scalar(1.0)
        } else {
            sample
        };
        let t = timestep_embedding(
            timesteps,
            self.time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
        );
        let mut temb = self.time_embedding.forward(t);
        if let (Some(mlp), Some(config), Some(added)) = (&self.add_embedding, &self.addition, added)
        {
            let features = added.features(
                config.addition_time_embed_dim,
                self.flip_sin_to_cos,
                self.freq_shift,
            );
            temb = temb + mlp.forward(features);
        }

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb, &context, &mut skips);
        }
        x = self.mid_block.forward(x, &temb, &context);
        for block in &self.up_blocks {
            x = block.forward(x, &temb, &context, &mut skips);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

impl LoraLayers for UNet2DConditionModel {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.conv_in.collect_layers(&join(prefix, "conv_in"), out);
        self.time_embedding
            .collect_layers(&join(prefix, "time_embedding"), out);
        if let Some(add) = &mut self.add_embedding {
            add.collect_layers(&join(prefix, "add_embedding"), out);
        }
        self.down_blocks
            .collect_layers(&join(prefix, "down_blocks"), out);
        self.mid_block
            .collect_layers(&join(prefix, "mid_block"), out);
        self.up_blocks
            .collect_layers(&join(prefix, "up_blocks"), out);
        self.conv_out.collect_layers(&join(prefix, "conv_out"), out);
    }
}
