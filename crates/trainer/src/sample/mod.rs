//! Text to image: prompts through the text encoder, classifier-free guidance with DDIM or Euler,
//! latents through the VAE decoder, PNG files with the prompt and seed in text chunks.
//!
//! - [`scheduler`]: `scheduler_config.json`, DDIM and Euler.
//! - [`png`]: PNG writing and reading with text chunks.
//!
//! With the same initial latents the result matches diffusers' `StableDiffusionPipeline`
//! (checked at tiny size). Initial latents are drawn on the host from the seed, so an image is
//! reproducible from (model, LoRA, prompt, seed, settings) on any device.

pub mod png;
pub mod scheduler;

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::clip::{ClipTextModel, ClipTokenizer, ids_tensor};
use crate::error::{Error, Result};
use crate::lora::{LoadedLora, TE_PREFIX, UNET_PREFIX, load_kohya_parts};
use crate::pipeline::StableDiffusion;
use crate::rng::{SeededRng, Stream};
use crate::tensor_file::HostTensor;
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKL;
use png::RgbImage;
use scheduler::{Sampler, SamplerKind, SchedulerConfig};

/// What to render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSettings {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (the unconditional branch of guidance).
    #[serde(default)]
    pub negative_prompt: String,
    /// Image width in pixels (a multiple of the VAE factor times the UNet's).
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Inference steps.
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or less disables guidance.
    pub guidance_scale: f64,
    /// Seed of the initial latents.
    pub seed: u64,
    /// DDIM or Euler.
    #[serde(default)]
    pub sampler: SamplerKind,
    /// Text-encoder layer from the end (1 = last), as kohya and A1111 count.
    #[serde(default = "one")]
    pub clip_skip: usize,
}

fn one() -> usize {
    1
}

impl SampleSettings {
    /// A1111's `parameters` text (what image browsers and model sites read).
    pub fn a1111_parameters(&self, model: &str, lora: Option<(&str, f64)>) -> String {
        let mut s = self.prompt.clone();
        if let Some((name, strength)) = lora {
            s.push_str(&format!(" <lora:{name}:{strength}>"));
        }
        s.push_str(&format!(
            "\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.negative_prompt,
            self.steps,
            self.sampler.display_name(),
            self.guidance_scale,
            self.seed,
            self.width,
            self.height,
            model
        ));
        if self.clip_skip > 1 {
            s.push_str(&format!(", Clip skip: {}", self.clip_skip));
        }
        s
    }
}

/// The models a rendering needs (borrowed, so a LoRA-adapted copy can stand in for the base).
#[derive(Debug, Clone, Copy)]
pub struct Pipeline<'a> {
    /// The denoiser.
    pub unet: &'a UNet2DConditionModel,
    /// The text encoder.
    pub text_encoder: &'a ClipTextModel,
    /// The autoencoder.
    pub vae: &'a AutoencoderKL,
    /// The tokenizer.
    pub tokenizer: &'a ClipTokenizer,
    /// The schedule.
    pub scheduler: &'a SchedulerConfig,
}

impl<'a> Pipeline<'a> {
    /// The pipeline of a loaded model.
    pub fn new(model: &'a StableDiffusion) -> Self {
        Self {
            unet: &model.unet,
            text_encoder: &model.text_encoder,
            vae: &model.vae,
            tokenizer: &model.tokenizer,
            scheduler: &model.config.scheduler,
        }
    }

    /// The seeded initial latents for `settings` (before the sampler's noise scale).
    pub fn initial_latents(&self, settings: &SampleSettings) -> Result<HostTensor> {
        let f = 1usize << (self.vae.encoder.down_blocks.len() - 1);
        let unet_f = 1usize << (self.unet.down_blocks.len() - 1);
        let multiple = f * unet_f;
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
        let latents = match latents {
            Some(l) => l,
            None => self.initial_latents(settings)?.to_tensor(device),
        };
        let guided = settings.guidance_scale > 1.0;
        let ids = if guided {
            vec![
                self.tokenizer.encode_padded(&settings.negative_prompt),
                self.tokenizer.encode_padded(&settings.prompt),
            ]
        } else {
            vec![self.tokenizer.encode_padded(&settings.prompt)]
        };
        let context = self
            .text_encoder
            .forward(ids_tensor(&ids, device), settings.clip_skip)?;
        let sampler = Sampler::new(settings.sampler, self.scheduler, settings.steps)?;
        let mut x = latents.mul_scalar(sampler.init_noise_sigma());
        let batch = ids.len();
        for (i, &t) in sampler.timesteps().iter().enumerate() {
            let input = sampler.scale_model_input(x.clone(), i);
            let input = if guided {
                Tensor::cat(vec![input.clone(), input], 0)
            } else {
                input
            };
            let timesteps =
                Tensor::<1>::from_data(TensorData::new(vec![t as f32; batch], [batch]), device);
            let out = self.unet.forward(input, timesteps, context.clone());
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

    /// Renders `settings` to an 8-bit image.
    pub fn render(&self, settings: &SampleSettings, device: &Device) -> Result<RgbImage> {
        let (_, image) = self.generate(settings, None, device)?;
        let [_, _, h, w] = image.dims();
        let host = HostTensor::from_tensor(image);
        Ok(RgbImage::from_chw(&host.data, h, w))
    }
}

/// The text chunks written with a sample: `parameters` (A1111), `prompt`, `negative_prompt`,
/// `seed`, `steps`, `sampler`, `guidance_scale`, and the LoRA with its strength when there is one.
pub fn png_text(
    settings: &SampleSettings,
    model: &str,
    lora: Option<(&str, f64)>,
) -> Vec<(String, String)> {
    let mut text = vec![
        (
            "parameters".to_string(),
            settings.a1111_parameters(model, lora),
        ),
        ("prompt".into(), settings.prompt.clone()),
        ("negative_prompt".into(), settings.negative_prompt.clone()),
        ("seed".into(), settings.seed.to_string()),
        ("steps".into(), settings.steps.to_string()),
        (
            "sampler".into(),
            settings.sampler.display_name().to_string(),
        ),
        ("guidance_scale".into(), settings.guidance_scale.to_string()),
        ("model".into(), model.to_string()),
    ];
    if let Some((name, strength)) = lora {
        text.push(("lora".into(), name.to_string()));
        text.push(("lora_strength".into(), strength.to_string()));
    }
    text
}

impl StableDiffusion {
    /// A copy of the model with a kohya LoRA file applied at `strength` (UNet and, when the file
    /// has `lora_te_*` keys, text encoder), as adapters on the base layers.
    pub fn with_lora(
        &self,
        path: &Path,
        strength: f64,
        device: &Device,
    ) -> Result<(StableDiffusion, LoadedLora)> {
        let mut model = self.clone();
        let loaded = load_kohya_parts(
            &mut [
                (UNET_PREFIX, &mut model.unet),
                (TE_PREFIX, &mut model.text_encoder),
            ],
            path,
            strength,
            device,
        )?;
        Ok((model, loaded))
    }
}
