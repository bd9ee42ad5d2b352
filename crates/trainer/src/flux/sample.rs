//! FLUX.1 text to image, as diffusers' `FluxPipeline` renders it.
//!
//! The prompt is encoded once (T5 states and CLIP pooled, [`FluxModel::encode_prompt`]); the
//! seeded latent noise `[1, latent_channels, h/8, w/8]` is packed into 2×2-patch tokens, and
//! each step of the flow-matching Euler schedule ([`FlowMatchConfig::sigmas`], shifted for the
//! image's token count) moves it by `(σ_next − σ)·v`, with `v` the transformer's prediction at
//! timestep σ and the distilled guidance value for dev. The final tokens are unpacked, mapped
//! back with the VAE's `latents / scaling_factor + shift_factor` and decoded.
//!
//! [`SampleSettings`] is shared with the SD and SDXL samplers; for Flux its `guidance_scale` is
//! the distilled guidance embedded by dev (3.5 is FluxPipeline's default; a model without
//! guidance embeddings, schnell, ignores it), its `negative_prompt` is ignored (FLUX.1-dev is
//! guidance-distilled and FluxPipeline runs no unconditional branch unless `true_cfg_scale` is
//! raised), and its `sampler` too: Flux always samples with this flow-matching Euler schedule.

use burn::tensor::{Device, Tensor, TensorData};

use super::FluxInputs;
use super::FluxTransformer2DModel;
use super::model::FluxModel;
use super::packing::{pack_latents, unpack_latents};
use super::rope::{image_ids, text_ids};
use super::scheduler::FlowMatchConfig;
use crate::error::{Error, Result};
use crate::rng::{SeededRng, Stream};
use crate::sample::SampleSettings;
use crate::sample::png::RgbImage;
use crate::tensor_file::HostTensor;
use crate::vae::AutoencoderKL;

/// The largest image side accepted, in pixels (FLUX.1 is trained up to about 2 megapixels).
pub const MAX_SIDE: usize = 4096;

/// The largest distilled guidance value accepted.
pub const MAX_GUIDANCE: f64 = 100.0;

/// The models a FLUX.1 rendering needs (borrowed, so a LoRA-adapted transformer can stand in).
#[derive(Debug, Clone, Copy)]
pub struct FluxPipeline<'a> {
    /// The denoiser.
    pub transformer: &'a FluxTransformer2DModel,
    /// The autoencoder.
    pub vae: &'a AutoencoderKL,
    /// Text encoders, tokenizers and configs; `None` when the prompts come encoded (a
    /// training run, which drops its text encoders after caching their outputs, renders
    /// through [`denoise`](Self::denoise)).
    pub model: Option<&'a FluxModel>,
    /// The schedule.
    pub scheduler: &'a FlowMatchConfig,
}

/// What [`FluxPipeline::denoise`] produces.
#[derive(Debug, Clone)]
pub struct FluxOutput {
    /// The final latents, unpacked and still scaled: `[1, latent_channels, h / f, w / f]`.
    pub latents: Tensor<4>,
    /// The decoded image in [0, 1]: `[1, 3, height, width]`.
    pub image: Tensor<4>,
    /// The schedule that was run (σ per step, then 0).
    pub sigmas: Vec<f32>,
}

impl<'a> FluxPipeline<'a> {
    /// The pipeline of a loaded model.
    pub fn new(model: &'a FluxModel) -> Self {
        Self {
            transformer: &model.transformer,
            vae: &model.vae,
            model: Some(model),
            scheduler: &model.config.scheduler,
        }
    }

    /// The same pipeline with another transformer (one being trained, or with adapters).
    pub fn with_transformer(self, transformer: &'a FluxTransformer2DModel) -> Self {
        Self {
            transformer,
            ..self
        }
    }

    /// The VAE's downscaling factor.
    fn vae_factor(&self) -> usize {
        1 << (self.vae.encoder.down_blocks.len() - 1)
    }

    /// Checks the size and steps and gives the latent size `(height, width)`.
    fn latent_size(&self, settings: &SampleSettings) -> Result<(usize, usize)> {
        let f = self.vae_factor();
        let multiple = 2 * f;
        for (field, v) in [("width", settings.width), ("height", settings.height)] {
            if v == 0 || v > MAX_SIDE || !v.is_multiple_of(multiple) {
                return Err(Error::invalid(
                    field,
                    v,
                    format!(
                        "must be a positive multiple of {multiple} up to {MAX_SIDE} for this \
                         model (the VAE's factor {f} × the 2×2 packing)"
                    ),
                ));
            }
        }
        if !settings.guidance_scale.is_finite()
            || !(0.0..=MAX_GUIDANCE).contains(&settings.guidance_scale)
        {
            return Err(Error::invalid(
                "guidance_scale",
                settings.guidance_scale,
                format!(
                    "expected a distilled guidance value in [0, {MAX_GUIDANCE}] (3.5 is usual)"
                ),
            ));
        }
        if settings.clip_skip != 1 {
            return Err(Error::invalid(
                "clip_skip",
                settings.clip_skip,
                "FLUX.1 conditions on CLIP's pooled output; leave clip_skip at 1",
            ));
        }
        Ok((settings.height / f, settings.width / f))
    }

    /// The seeded initial latents for `settings`, `[1, latent_channels, h / f, w / f]`.
    pub fn initial_latents(&self, settings: &SampleSettings) -> Result<HostTensor> {
        let (h, w) = self.latent_size(settings)?;
        let c = self.transformer.in_channels() / 4;
        let shape = vec![1, c, h, w];
        let n = shape.iter().product();
        Ok(HostTensor::new(
            shape,
            SeededRng::new(settings.seed, Stream::Sample).normal(n),
        ))
    }

    /// Encodes the prompt, denoises `latents` (or seeded ones) and decodes them.
    ///
    /// # Shapes
    ///
    /// - latents: `[1, latent_channels, height / f, width / f]` (not packed)
    pub fn generate(
        &self,
        settings: &SampleSettings,
        latents: Option<Tensor<4>>,
        device: &Device,
    ) -> Result<FluxOutput> {
        let latents = match latents {
            Some(l) => l,
            None => self.initial_latents(settings)?.to_tensor(device),
        };
        let model = self.model.ok_or_else(|| {
            Error::invalid(
                "model",
                "none",
                "encoding a prompt needs the model's text encoders; give the pipeline a \
                 FluxModel, or call denoise with the prompt's encoded states",
            )
        })?;
        let (states, pooled) = model.encode_prompt(&settings.prompt, device)?;
        self.denoise(settings, latents, states, pooled)
    }

    /// Denoises given initial latents under given text conditioning and decodes them: the
    /// lower-level step of [`generate`](Self::generate), for parity and cached prompts.
    ///
    /// # Shapes
    ///
    /// - latents: `[1, latent_channels, height / f, width / f]` (not packed)
    /// - states: `[1, text_tokens, joint_attention_dim]`; pooled: `[1, pooled_projection_dim]`
    pub fn denoise(
        &self,
        settings: &SampleSettings,
        latents: Tensor<4>,
        states: Tensor<3>,
        pooled: Tensor<2>,
    ) -> Result<FluxOutput> {
        let (h, w) = self.latent_size(settings)?;
        let c = self.transformer.in_channels() / 4;
        let [b, lc, lh, lw] = latents.dims();
        if [b, lc, lh, lw] != [1, c, h, w] {
            return Err(Error::invalid(
                "latents",
                format!("shape {:?}", [b, lc, lh, lw]),
                format!(
                    "expected [1, {c}, {h}, {w}] for {}×{} px",
                    settings.width, settings.height
                ),
            ));
        }
        let device = latents.device();
        let text_tokens = states.dims()[1];
        let image_tokens = (h / 2) * (w / 2);
        let sigmas = self.scheduler.sigmas(settings.steps, image_tokens)?;
        let (txt_ids, img_ids) = (text_ids(text_tokens), image_ids(h / 2, w / 2, 0.0));
        let rope = self
            .transformer
            .rotary_embedding(&txt_ids, &img_ids, &device)?;
        let guidance = self.transformer.has_guidance_embeds().then(|| {
            Tensor::<1>::from_data(
                TensorData::new(vec![settings.guidance_scale as f32], [1]),
                &device,
            )
        });
        let mut x = pack_latents(latents)?;
        for pair in sigmas.windows(2) {
            let (sigma, next) = (pair[0], pair[1]);
            let timestep = Tensor::<1>::from_data(
                TensorData::new(vec![self.scheduler.model_timestep(sigma)], [1]),
                &device,
            );
            let v = self.transformer.forward_with_rope(
                FluxInputs {
                    hidden_states: x.clone(),
                    encoder_hidden_states: states.clone(),
                    pooled_projections: pooled.clone(),
                    timestep,
                    img_ids: img_ids.clone(),
                    txt_ids: txt_ids.clone(),
                    guidance: guidance.clone(),
                },
                &rope,
            )?;
            x = x + v.mul_scalar(next - sigma);
        }
        let latents = unpack_latents(x, h, w)?;
        let image = self
            .vae
            .decode_latents(latents.clone())
            .div_scalar(2.0)
            .add_scalar(0.5)
            .clamp(0.0, 1.0);
        Ok(FluxOutput {
            latents,
            image,
            sigmas,
        })
    }

    /// Renders `settings` from its seed to an 8-bit image.
    pub fn render(&self, settings: &SampleSettings, device: &Device) -> Result<RgbImage> {
        let out = self.generate(settings, None, device)?;
        let [_, _, h, w] = out.image.dims();
        Ok(RgbImage::from_chw(
            &HostTensor::from_tensor(out.image).data,
            h,
            w,
        ))
    }
}
