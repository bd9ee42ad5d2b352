//! SDXL text to image, as diffusers' `StableDiffusionXLPipeline` renders it.
//!
//! Both encoders give the context and the pooled vector; the micro-conditioning is an uncropped
//! image of the sample size (`original = target = (height, width)`, crop `(0, 0)`), for the
//! conditional and the unconditional branch alike. With guidance, an empty negative prompt is
//! zeros (context and pooled), as the pipeline's `force_zeros_for_empty_prompt` does when no
//! negative prompt is given; a non-empty one is encoded. DDIM and Euler come from
//! [`crate::sample::scheduler`], shared with SD1.x/SD2.x.

use burn::tensor::{Device, Tensor, TensorData};

use super::StableDiffusionXl;
use super::conditioning::{SizeConditioning, time_ids_tensor};
use super::text::{SdxlText, SdxlTextEncoders, SdxlTokenizers};
use crate::error::{Error, Result};
use crate::rng::{SeededRng, Stream};
use crate::sample::SampleSettings;
use crate::sample::png::RgbImage;
use crate::sample::scheduler::{Sampler, SchedulerConfig};
use crate::tensor_file::HostTensor;
use crate::unet::{AddedConditions, UNet2DConditionModel};
use crate::vae::AutoencoderKL;

/// The models an SDXL rendering needs (borrowed, so a LoRA-adapted copy can stand in).
#[derive(Debug, Clone, Copy)]
pub struct SdxlPipeline<'a> {
    /// The denoiser.
    pub unet: &'a UNet2DConditionModel,
    /// Both text encoders.
    pub text: &'a SdxlTextEncoders,
    /// The autoencoder.
    pub vae: &'a AutoencoderKL,
    /// Both tokenizers.
    pub tokenizers: &'a SdxlTokenizers,
    /// The schedule.
    pub scheduler: &'a SchedulerConfig,
}

impl<'a> SdxlPipeline<'a> {
    /// The pipeline of a loaded model.
    pub fn new(model: &'a StableDiffusionXl) -> Self {
        Self {
            unet: &model.unet,
            text: &model.text,
            vae: &model.vae,
            tokenizers: &model.tokenizers,
            scheduler: &model.config.scheduler,
        }
    }

    /// The seeded initial latents for `settings` (before the sampler's noise scale).
    pub fn initial_latents(&self, settings: &SampleSettings) -> Result<HostTensor> {
        let f = 1usize << (self.vae.encoder.down_blocks.len() - 1);
        let multiple = f * (1usize << (self.unet.down_blocks.len() - 1));
        for (field, v) in [("width", settings.width), ("height", settings.height)] {
            if v == 0 || v % multiple != 0 {
                return Err(Error::invalid(
                    field,
                    v,
                    format!("must be a positive multiple of {multiple} for this model"),
                ));
            }
        }
        let c = self.unet.conv_in.channels_in();
        let shape = vec![1, c, settings.height / f, settings.width / f];
        let n = shape.iter().product();
        Ok(HostTensor::new(
            shape,
            SeededRng::new(settings.seed, Stream::Sample).normal(n),
        ))
    }

    /// The conditioning of the batch the UNet sees: `[negative, prompt]` with guidance,
    /// `[prompt]` without.
    fn conditioning(&self, settings: &SampleSettings, device: &Device) -> Result<SdxlText> {
        let guided = settings.guidance_scale > 1.0;
        let zero_negative = guided && settings.negative_prompt.is_empty();
        let captions: Vec<&str> = match (guided, zero_negative) {
            (true, false) => vec![&settings.negative_prompt, &settings.prompt],
            _ => vec![&settings.prompt],
        };
        let ids = self.tokenizers.encode_batch(&captions);
        let text = self.text.encode(&ids, device)?;
        if !zero_negative {
            return Ok(text);
        }
        Ok(SdxlText {
            context: Tensor::cat(vec![text.context.zeros_like(), text.context], 0),
            pooled: Tensor::cat(vec![text.pooled.zeros_like(), text.pooled], 0),
        })
    }

    /// Denoises `latents` (or seeded ones) and decodes them.
    ///
    /// # Shapes
    ///
    /// - latents: `[1, latent_channels, height / f, width / f]`
    /// - output: `(final latents, image [1, 3, height, width] in [0, 1])`
    pub fn generate(
        &self,
        settings: &SampleSettings,
        latents: Option<Tensor<4>>,
        device: &Device,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        if settings.clip_skip != 1 {
            return Err(Error::invalid(
                "clip_skip",
                settings.clip_skip,
                "SDXL always conditions on the penultimate layers; leave clip_skip at 1",
            ));
        }
        let latents = match latents {
            Some(l) => l,
            None => self.initial_latents(settings)?.to_tensor(device),
        };
        let guided = settings.guidance_scale > 1.0;
        let text = self.conditioning(settings, device)?;
        let batch = text.context.dims()[0];
        let size = SizeConditioning::uncropped(settings.height as u32, settings.width as u32);
        let added = AddedConditions {
            text_embeds: text.pooled,
            time_ids: time_ids_tensor(&vec![size; batch], device),
        };
        let sampler = Sampler::new(settings.sampler, self.scheduler, settings.steps)?;
        let mut x = latents.mul_scalar(sampler.init_noise_sigma());
        for (i, &t) in sampler.timesteps().iter().enumerate() {
            let input = sampler.scale_model_input(x.clone(), i);
            let input = if guided {
                Tensor::cat(vec![input.clone(), input], 0)
            } else {
                input
            };
            let timesteps =
                Tensor::<1>::from_data(TensorData::new(vec![t as f32; batch], [batch]), device);
            let out =
                self.unet
                    .forward_added(input, timesteps, text.context.clone(), Some(&added))?;
            let out = if guided {
                let [uncond, cond]: [Tensor<4>; 2] =
                    out.chunk(2, 0).try_into().expect("a batch of two");
                uncond.clone() + (cond - uncond).mul_scalar(settings.guidance_scale)
            } else {
                out
            };
            x = sampler.step(out, i, x);
        }
        let image = self
            .vae
            .decode_latents(x.clone())
            .div_scalar(2.0)
            .add_scalar(0.5)
            .clamp(0.0, 1.0);
        Ok((x, image))
    }

    /// Renders `settings` from its seed to an image.
    pub fn render(&self, settings: &SampleSettings, device: &Device) -> Result<RgbImage> {
        let (_, image) = self.generate(settings, None, device)?;
        let [_, _, h, w] = image.dims();
        Ok(RgbImage::from_chw(
            &HostTensor::from_tensor(image).data,
            h,
            w,
        ))
    }
}
