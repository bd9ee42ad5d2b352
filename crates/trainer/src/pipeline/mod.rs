//! A whole Stable Diffusion model as users have it: a diffusers folder (`unet/`, `vae/`,
//! `text_encoder/`, `tokenizer/`, `scheduler/`) or an SD1.x single-file checkpoint.
//!
//! - [`single_file`]: the original LDM key names (`model.diffusion_model.*`,
//!   `first_stage_model.*`, `cond_stage_model.transformer.*`) mapped to this crate's modules.

pub mod single_file;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use crate::error::{Error, Result};
use crate::sample::scheduler::SchedulerConfig;
use crate::tensor_file::TensorFile;
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};

/// The configurations of a model's components.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// `unet/config.json`.
    pub unet: UNetConfig,
    /// `vae/config.json`.
    pub vae: VaeConfig,
    /// `text_encoder/config.json`.
    pub text_encoder: ClipTextConfig,
    /// `scheduler/scheduler_config.json` (SD1.x's when absent).
    pub scheduler: SchedulerConfig,
    /// The `tokenizer/` folder.
    pub tokenizer_dir: PathBuf,
}

impl PipelineConfig {
    /// What the VAE and the UNet downsample an image by, together: training
    /// and sample sizes must be multiples of it (16 for the tiny demo model,
    /// 64 for SD1.x and SD2.x).
    pub fn pixel_multiple(&self) -> usize {
        self.vae.downscale_factor() * (1usize << (self.unet.block_out_channels.len() - 1))
    }

    /// Reads every component's config from a diffusers folder (weights are not read).
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
                    format!("a diffusers folder needs {sub}, which is missing"),
                ))
            }
        };
        let scheduler_path = dir.join("scheduler/scheduler_config.json");
        let unet = UNetConfig::from_file(required("unet/config.json")?)?;
        if unet.addition.is_some() {
            return Err(Error::Unsupported {
                field: "unet.addition_embed_type".into(),
                value: "\"text_time\"".into(),
                hint: format!(
                    "{} is an SDXL model; load it as one (crate::sdxl), not as SD1.x/SD2.x",
                    dir.display()
                ),
            });
        }
        Ok(Self {
            unet,
            vae: VaeConfig::from_file(required("vae/config.json")?)?,
            text_encoder: ClipTextConfig::from_file(required("text_encoder/config.json")?)?,
            scheduler: if scheduler_path.is_file() {
                SchedulerConfig::from_file(&scheduler_path)?
            } else {
                SchedulerConfig::default()
            },
            tokenizer_dir: tokenizer_folder(dir, "tokenizer")?,
        })
    }

    /// Image size the model samples at by default: the UNet's `sample_size` times the VAE's
    /// downscale factor (512 for SD1.5).
    pub fn default_image_size(&self) -> usize {
        self.unet.sample_size.unwrap_or(64) * self.vae.downscale_factor()
    }
}

/// The tokenizer folder `sub` of a diffusers model: `vocab.json` with `merges.txt`, or
/// `tokenizer.json`.
pub(crate) fn tokenizer_folder(dir: &Path, sub: &str) -> Result<PathBuf> {
    let folder = dir.join(sub);
    if crate::clip::tokenizer::has_tokenizer(&folder) {
        Ok(folder)
    } else {
        Err(Error::invalid(
            "model",
            dir.display(),
            format!(
                "a diffusers folder needs {sub}/vocab.json and {sub}/merges.txt, or \
                 {sub}/tokenizer.json; none is there"
            ),
        ))
    }
}

/// A loaded Stable Diffusion 1.x/2.x model.
#[derive(Debug, Clone)]
pub struct StableDiffusion {
    /// Component configurations.
    pub config: PipelineConfig,
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// The text encoder.
    pub text_encoder: ClipTextModel,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Where it was loaded from.
    pub source: PathBuf,
}

/// The first existing weights file of a component folder: plain, then fp16 and bf16 variants.
pub(crate) fn weights_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
        format!("{stem}.bf16.safetensors"),
    ];
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let hint = if dir.join(format!("{stem}.bin")).is_file() {
                "only a PyTorch .bin file is there; convert it to safetensors"
            } else {
                "no weights file found"
            };
            Error::invalid(
                "model",
                dir.display(),
                format!("expected {} ({hint})", candidates.join(" or ")),
            )
        })
}

impl StableDiffusion {
    /// Loads a model from a diffusers folder, or from an SD1.x single-file checkpoint
    /// (`.safetensors`) with the component configs and tokenizer of `config_dir` (a diffusers
    /// folder; its weights are not read).
    pub fn load(
        path: impl AsRef<Path>,
        config_dir: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Self::load_diffusers(path, device);
        }
        if !path.is_file() {
            return Err(Error::read(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        let config = match config_dir {
            Some(dir) => PipelineConfig::from_dir(dir)?,
            None => {
                return Err(Error::invalid(
                    "model.config",
                    "none",
                    format!(
                        "{} is a single-file checkpoint, which carries no tokenizer or configs; \
                         give a diffusers folder of the same architecture (weights not needed)",
                        path.display()
                    ),
                ));
            }
        };
        Self::load_single_file(path, config, device)
    }

    /// Loads every component of a diffusers folder.
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
            if !class.starts_with("StableDiffusion") || class.contains("XL") {
                return Err(Error::Unsupported {
                    field: "_class_name".into(),
                    value: format!("{class:?}"),
                    hint: "only Stable Diffusion 1.x/2.x pipelines are implemented".into(),
                });
            }
        }
        let config = PipelineConfig::from_dir(dir)?;
        let unet_file =
            TensorFile::open(weights_file(&dir.join("unet"), "diffusion_pytorch_model")?)?;
        let vae_file =
            TensorFile::open(weights_file(&dir.join("vae"), "diffusion_pytorch_model")?)?;
        let te_file = TensorFile::open(weights_file(&dir.join("text_encoder"), "model")?)?;
        Ok(Self {
            unet: config.unet.init(device).load_weights(&unet_file)?,
            vae: config.vae.init(device).load_weights(&vae_file)?,
            text_encoder: config.text_encoder.init(device).load_weights(&te_file)?,
            tokenizer: ClipTokenizer::from_dir(&config.tokenizer_dir)?,
            config,
            source: dir.to_path_buf(),
        })
    }

    /// Loads an SD1.x single-file checkpoint with the given component configs.
    pub fn load_single_file(
        path: impl AsRef<Path>,
        config: PipelineConfig,
        device: &Device,
    ) -> Result<Self> {
        let file = TensorFile::open(path.as_ref())?;
        let unet = config.unet.init(device);
        let vae = config.vae.init(device);
        let text_encoder = config.text_encoder.init(device);
        let views = single_file::LdmViews::new(&file, &unet, &vae, &text_encoder, &config.unet)?;
        Ok(Self {
            unet: unet.load_weights(&views.unet)?,
            vae: vae.load_weights(&views.vae)?,
            text_encoder: text_encoder.load_weights(&views.text_encoder)?,
            tokenizer: ClipTokenizer::from_dir(&config.tokenizer_dir)?,
            config,
            source: path.as_ref().to_path_buf(),
        })
    }
}
