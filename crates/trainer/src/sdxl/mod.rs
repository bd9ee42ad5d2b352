//! Stable Diffusion XL: its diffusers folder, its two text encoders and its micro-conditioning.
//!
//! The UNet is the crate's [`UNet2DConditionModel`] with SDXL's added conditioning
//! ([`crate::unet::text_time`]); the VAE is [`AutoencoderKL`] with SDXL's scaling factor read
//! from its config (0.13025).
//!
//! - [`text`]: both tokenizers and encoders → the concatenated context and the pooled vector.
//! - [`conditioning`]: the six `time_ids` (original size, crop, target size) of each image.
//! - [`lora`]: kohya SDXL LoRA files (SGM UNet names, `lora_te1_`/`lora_te2_`).
//! - [`sample`]: text to image with guidance and micro-conditioning at the sample size.
//! - [`single_file`]: Stability's SGM single-file layout (`sd_xl_base_1.0.safetensors`).

pub mod conditioning;
pub mod lora;
pub mod sample;
pub mod single_file;
pub mod text;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

pub use conditioning::{SizeConditioning, time_ids_tensor};
pub use text::{SdxlIds, SdxlText, SdxlTextEncoders, SdxlTokenizers};

use crate::clip::{ClipProjectionConfig, ClipTextConfig, ClipTokenizer};
use crate::error::{Error, Result};
use crate::pipeline::{tokenizer_folder, weights_file};
use crate::sample::scheduler::SchedulerConfig;
use crate::tensor_file::TensorFile;
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};

/// The number of SDXL `time_ids`.
pub const TIME_IDS: usize = 6;

/// Whether `dir` is a diffusers SDXL folder (or an SDXL config folder): it has a second text
/// encoder's config and is not a FLUX.1 folder (whose second encoder is T5).
pub fn is_sdxl_dir(dir: &Path) -> bool {
    dir.join("text_encoder_2").join("config.json").is_file() && !crate::flux::is_flux_dir(dir)
}

/// The configurations of an SDXL model's components.
#[derive(Debug, Clone, PartialEq)]
pub struct SdxlConfig {
    /// `unet/config.json` (with `addition_embed_type = "text_time"`).
    pub unet: UNetConfig,
    /// `vae/config.json`.
    pub vae: VaeConfig,
    /// `text_encoder/config.json`.
    pub text_encoder: ClipTextConfig,
    /// `text_encoder_2/config.json`.
    pub text_encoder_2: ClipProjectionConfig,
    /// `scheduler/scheduler_config.json` (SD1.x's when absent).
    pub scheduler: SchedulerConfig,
    /// The `tokenizer/` folder.
    pub tokenizer_dir: PathBuf,
    /// The `tokenizer_2/` folder.
    pub tokenizer_2_dir: PathBuf,
}

impl SdxlConfig {
    /// Reads every component's config from a diffusers SDXL folder (weights are not read) and
    /// checks that the widths fit together: the two encoders' widths add up to the UNet's
    /// cross-attention width, and the projection plus six time ids fill `add_embedding`'s input.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let required = |sub: &str| {
            let p = dir.join(sub);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::invalid(
                    "model",
                    dir.display(),
                    format!("a diffusers SDXL folder needs {sub}, which is missing"),
                ))
            }
        };
        let scheduler_path = dir.join("scheduler/scheduler_config.json");
        let config = Self {
            unet: UNetConfig::from_file(required("unet/config.json")?)?,
            vae: VaeConfig::from_file(required("vae/config.json")?)?,
            text_encoder: ClipTextConfig::from_file(required("text_encoder/config.json")?)?,
            text_encoder_2: ClipProjectionConfig::from_file(required(
                "text_encoder_2/config.json",
            )?)?,
            scheduler: if scheduler_path.is_file() {
                SchedulerConfig::from_file(&scheduler_path)?
            } else {
                SchedulerConfig::default()
            },
            tokenizer_dir: tokenizer_folder(dir, "tokenizer")?,
            tokenizer_2_dir: tokenizer_folder(dir, "tokenizer_2")?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the components' widths fit together.
    pub fn validate(&self) -> Result<()> {
        let Some(added) = self.unet.addition else {
            return Err(Error::invalid(
                "unet.addition_embed_type",
                "null",
                "an SDXL UNet has addition_embed_type \"text_time\"",
            ));
        };
        let context = self.text_encoder.hidden_size + self.text_encoder_2.text.hidden_size;
        if let Some(&cross) = self
            .unet
            .cross_attention_dim
            .iter()
            .find(|&&c| c != context)
        {
            return Err(Error::invalid(
                "unet.cross_attention_dim",
                cross,
                format!(
                    "expected the two encoders' widths together ({} + {} = {context})",
                    self.text_encoder.hidden_size, self.text_encoder_2.text.hidden_size
                ),
            ));
        }
        if added.text_embeds_dim(TIME_IDS) != Some(self.text_encoder_2.projection_dim) {
            return Err(Error::invalid(
                "unet.projection_class_embeddings_input_dim",
                added.projection_class_embeddings_input_dim,
                format!(
                    "expected text_encoder_2's projection_dim ({}) + {TIME_IDS} × \
                     addition_time_embed_dim ({})",
                    self.text_encoder_2.projection_dim, added.addition_time_embed_dim
                ),
            ));
        }
        Ok(())
    }

    /// What the VAE and the UNet downsample an image by, together.
    pub fn pixel_multiple(&self) -> usize {
        self.vae.downscale_factor() * (1usize << (self.unet.block_out_channels.len() - 1))
    }

    /// Image size the model samples at by default (1024 for SDXL base).
    pub fn default_image_size(&self) -> usize {
        self.unet.sample_size.unwrap_or(128) * self.vae.downscale_factor()
    }
}

/// A loaded SDXL model.
#[derive(Debug, Clone)]
pub struct StableDiffusionXl {
    /// Component configurations.
    pub config: SdxlConfig,
    /// The denoiser, with added conditioning.
    pub unet: UNet2DConditionModel,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// Both text encoders.
    pub text: SdxlTextEncoders,
    /// Both tokenizers.
    pub tokenizers: SdxlTokenizers,
    /// Where it was loaded from.
    pub source: PathBuf,
}

impl StableDiffusionXl {
    /// Loads every component of a diffusers SDXL folder (fp32, fp16 or bf16 weight files).
    pub fn load_diffusers(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let index = dir.join("model_index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::read(&index, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Parse {
                    path: index.clone(),
                    reason: e.to_string(),
                })?;
            let class = value["_class_name"].as_str().unwrap_or_default();
            if !class.starts_with("StableDiffusionXL") {
                return Err(Error::Unsupported {
                    field: "_class_name".into(),
                    value: format!("{class:?}"),
                    hint: "expected an SDXL pipeline (StableDiffusionXLPipeline)".into(),
                });
            }
        }
        let config = SdxlConfig::from_dir(dir)?;
        let open = |sub: &str, stem: &str| TensorFile::open(weights_file(&dir.join(sub), stem)?);
        let unet_file = open("unet", "diffusion_pytorch_model")?;
        let vae_file = open("vae", "diffusion_pytorch_model")?;
        let te_file = open("text_encoder", "model")?;
        let te2_file = open("text_encoder_2", "model")?;
        Ok(Self {
            unet: config.unet.init(device).load_weights(&unet_file)?,
            vae: config.vae.init(device).load_weights(&vae_file)?,
            text: SdxlTextEncoders {
                text_encoder: config.text_encoder.init(device).load_weights(&te_file)?,
                text_encoder_2: config.text_encoder_2.init(device).load_weights(&te2_file)?,
            },
            tokenizers: SdxlTokenizers {
                tokenizer: ClipTokenizer::from_dir(&config.tokenizer_dir)?,
                tokenizer_2: ClipTokenizer::from_dir(&config.tokenizer_2_dir)?,
            },
            config,
            source: dir.to_path_buf(),
        })
    }
}
