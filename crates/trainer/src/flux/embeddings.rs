//! Flux's conditioning vector: diffusers' `CombinedTimestepTextProjEmbeddings` (schnell) and
//! `CombinedTimestepGuidanceTextProjEmbeddings` (dev).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::lora::{LayerMut, LoraLayers, join};
use crate::unet::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_embedding};

/// Width of the sinusoidal features of the timestep and the guidance value.
pub const TIME_PROJ_DIM: usize = 256;

/// Configuration of a [`TimeTextEmbedding`].
#[derive(Config, Debug)]
pub struct TimeTextEmbeddingConfig {
    /// Width of the conditioning vector (the transformer's token width).
    pub dim: usize,
    /// Width of the pooled text embedding.
    pub pooled_projection_dim: usize,
    /// Whether a guidance value is embedded too (FLUX.1-dev).
    #[config(default = false)]
    pub guidance: bool,
}

impl TimeTextEmbeddingConfig {
    /// Builds the three MLPs.
    pub fn init(&self, device: &Device) -> TimeTextEmbedding {
        TimeTextEmbedding {
            timestep_embedder: TimestepEmbeddingConfig::new(TIME_PROJ_DIM, self.dim).init(device),
            guidance_embedder: self
                .guidance
                .then(|| TimestepEmbeddingConfig::new(TIME_PROJ_DIM, self.dim).init(device)),
            text_embedder: TimestepEmbeddingConfig::new(self.pooled_projection_dim, self.dim)
                .init(device),
        }
    }
}

/// `mlp_t(sin(t)) [+ mlp_g(sin(g))] + mlp_text(pooled)`.
///
/// The timestep and guidance features are diffusers' `Timesteps(256, flip_sin_to_cos=True,
/// downscale_freq_shift=0)`; each MLP is `linear_2(silu(linear_1(x)))` (the text one is
/// diffusers' `PixArtAlphaTextProjection` with `act_fn="silu"`, the same layers).
#[derive(Module, Debug)]
pub struct TimeTextEmbedding {
    /// The timestep MLP.
    pub timestep_embedder: TimestepEmbedding,
    /// The guidance MLP (dev only).
    pub guidance_embedder: Option<TimestepEmbedding>,
    /// The pooled-text MLP.
    pub text_embedder: TimestepEmbedding,
}

impl TimeTextEmbedding {
    /// The conditioning vector. `timestep` and `guidance` are already scaled by 1000 (the
    /// transformer does it).
    ///
    /// # Shapes
    ///
    /// - timestep: `[batch]`
    /// - guidance: `[batch]` (dev) or `None` (schnell; ignored when given to schnell)
    /// - pooled: `[batch, pooled_projection_dim]`
    /// - output: `[batch, dim]`
    pub fn forward(
        &self,
        timestep: Tensor<1>,
        guidance: Option<Tensor<1>>,
        pooled: Tensor<2>,
    ) -> Tensor<2> {
        let features = |t: Tensor<1>| timestep_embedding(t, TIME_PROJ_DIM, true, 0.0);
        let mut emb = self.timestep_embedder.forward(features(timestep));
        if let (Some(embedder), Some(g)) = (&self.guidance_embedder, guidance) {
            emb = emb + embedder.forward(features(g));
        }
        emb + self.text_embedder.forward(pooled)
    }
}

impl LoraLayers for TimeTextEmbedding {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.timestep_embedder
            .collect_layers(&join(prefix, "timestep_embedder"), out);
        self.guidance_embedder
            .collect_layers(&join(prefix, "guidance_embedder"), out);
        self.text_embedder
            .collect_layers(&join(prefix, "text_embedder"), out);
    }
}
