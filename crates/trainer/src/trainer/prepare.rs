//! Loading the models of a run and encoding its dataset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

use super::{CancelSignal, ProgressEvent, ProgressSink, ScannedImages};
use crate::clip::{ClipTextModel, ClipTokenizer, ids_tensor};
use crate::data::bucket::fit_to_bucket;
use crate::data::cache::{Cache, model_identity};
use crate::error::{Error, Result};
use crate::pipeline::StableDiffusion;
use crate::sample::scheduler::SchedulerConfig;
use crate::schedule::{NoiseSchedule, Prediction};
use crate::sdxl::{SdxlTextEncoders, SdxlTokenizers, SizeConditioning, StableDiffusionXl};
use crate::tensor_file::HostTensor;
use crate::train::config::TrainConfig;
use crate::train::examples::{Conditioning, Example, TrainingSet};
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::AutoencoderKL;

/// Everything a run trains and samples with.
pub(super) struct Models {
    pub unet: UNet2DConditionModel,
    pub unet_config: UNetConfig,
    /// Present with a whole model.
    pub text_encoder: Option<ClipTextModel>,
    pub tokenizer: Option<ClipTokenizer>,
    pub vae: Option<AutoencoderKL>,
    pub scheduler: SchedulerConfig,
    pub schedule: NoiseSchedule,
    /// The base model's file or folder name (`ss_sd_model_name`).
    pub model_name: String,
    /// Cache identities of the VAE and text encoder.
    pub vae_identity: String,
    pub text_identity: String,
    /// SDXL's two encoders and tokenizers (then `text_encoder` and `tokenizer` are `None`).
    pub sdxl: Option<SdxlText>,
}

/// The text side of an SDXL model.
pub(super) struct SdxlText {
    pub text: SdxlTextEncoders,
    pub tokenizers: SdxlTokenizers,
}

/// Whether the configured whole model is SDXL: a diffusers folder with a second text encoder
/// (or a single file whose config folder has one).
pub(super) fn is_sdxl(config: &TrainConfig) -> bool {
    let m = &config.model;
    let dir = match &m.path {
        Some(p) if p.is_dir() => Some(p.as_path()),
        Some(_) => m.config_dir.as_deref(),
        None => None,
    };
    // A FLUX.1 folder has a `text_encoder_2/` (T5) too.
    dir.is_some_and(|d| crate::sdxl::is_sdxl_dir(d) && !crate::flux::model::is_flux_dir(d))
}

/// The diffusers FLUX.1 folder of the configured whole model: `model.path` itself (a folder
/// with a `transformer/` instead of a `unet/`), or, when `model.path` is a transformer file
/// under Black Forest Labs' names (`flux1-dev.safetensors`), `model.config_dir`, whose text
/// encoders, VAE, configs, tokenizers and scheduler go with it (as the sample step reads it).
pub(super) fn flux_folder(config: &TrainConfig) -> Option<&Path> {
    let m = &config.model;
    let path = m.path.as_deref()?;
    let dir = if path.is_dir() {
        path
    } else if path.is_file() {
        m.config_dir.as_deref()?
    } else {
        return None;
    };
    crate::flux::model::is_flux_dir(dir).then_some(dir)
}

/// Whether the configured whole model is FLUX.1 ([`flux_folder`]).
pub(super) fn is_flux(config: &TrainConfig) -> bool {
    flux_folder(config).is_some()
}

fn load_sdxl(config: &TrainConfig, path: &Path, device: &Device) -> Result<Models> {
    let xl = if path.is_dir() {
        StableDiffusionXl::load_diffusers(path, device)?
    } else {
        let dir = config
            .model
            .config_dir
            .as_deref()
            .expect("is_sdxl: a single file has a config folder");
        StableDiffusionXl::load_single_file(path, dir, device)?
    };
    let scheduler = xl.config.scheduler.clone();
    let te_identity = format!(
        "{}+{}+{}",
        model_identity(
            &xl.config.text_encoder,
            &component_file(path, "text_encoder", "model"),
        ),
        model_identity(
            &xl.config.text_encoder_2.text,
            &component_file(path, "text_encoder_2", "model"),
        ),
        xl.config.text_encoder_2.projection_dim
    );
    Ok(Models {
        schedule: scheduler.noise_schedule()?,
        scheduler,
        unet_config: xl.config.unet.clone(),
        vae_identity: model_identity(
            &xl.config.vae,
            &component_file(path, "vae", "diffusion_pytorch_model"),
        ),
        text_identity: te_identity,
        model_name: file_name(path),
        unet: xl.unet,
        text_encoder: None,
        tokenizer: None,
        vae: Some(xl.vae),
        sdxl: Some(SdxlText {
            text: xl.text,
            tokenizers: xl.tokenizers,
        }),
    })
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The weights file of a component (for cache identities), or the single file itself.
pub(super) fn component_file(model: &Path, component: &str, stem: &str) -> PathBuf {
    if model.is_file() {
        return model.to_path_buf();
    }
    ["", ".fp16", ".bf16"]
        .iter()
        .map(|v| model.join(component).join(format!("{stem}{v}.safetensors")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| model.join(component))
}

/// The model's `scheduler/scheduler_config.json`, if it has one: in the diffusers folder, in the
/// config folder of a single file, or beside the `unet/` folder of a UNet trained alone.
pub(super) fn scheduler_file(config: &TrainConfig) -> Option<PathBuf> {
    let m = &config.model;
    let root = match (&m.path, &m.unet_config) {
        (Some(p), _) if p.is_dir() => Some(p.clone()),
        (Some(_), _) => m.config_dir.clone(),
        (None, Some(unet)) => unet
            .parent()
            .filter(|dir| dir.file_name().is_some_and(|n| n == "unet"))
            .and_then(Path::parent)
            .map(Path::to_path_buf),
        (None, None) => None,
    };
    root.map(|r| r.join("scheduler").join("scheduler_config.json"))
        .filter(|f| f.is_file())
}

/// What the configured model predicts, when its scheduler config says.
pub(super) fn model_prediction(config: &TrainConfig) -> Result<Option<Prediction>> {
    scheduler_file(config)
        .map(|f| SchedulerConfig::from_file(f).map(|s| s.prediction_type))
        .transpose()
}

/// Loads the configured base model on `device` (the training device, with autodiff).
pub(super) fn load_models(config: &TrainConfig, device: &Device) -> Result<Models> {
    let m = &config.model;
    if let Some(path) = &m.path {
        if is_sdxl(config) {
            return load_sdxl(config, path, device);
        }
        let sd = StableDiffusion::load(path, m.config_dir.as_deref(), device)?;
        let scheduler = sd.config.scheduler.clone();
        return Ok(Models {
            schedule: scheduler.noise_schedule()?,
            scheduler,
            unet_config: sd.config.unet.clone(),
            vae_identity: model_identity(
                &sd.config.vae,
                &component_file(path, "vae", "diffusion_pytorch_model"),
            ),
            text_identity: model_identity(
                &sd.config.text_encoder,
                &component_file(path, "text_encoder", "model"),
            ),
            model_name: file_name(path),
            unet: sd.unet,
            text_encoder: Some(sd.text_encoder),
            tokenizer: Some(sd.tokenizer),
            vae: Some(sd.vae),
            sdxl: None,
        });
    }
    let config_path = m
        .unet_config
        .as_ref()
        .expect("validated: a model source is set");
    let unet_config = UNetConfig::from_file(config_path)?;
    let mut unet = unet_config.init(device);
    if let Some(weights) = &m.unet_weights {
        unet = unet.load_diffusers(weights)?;
    }
    let scheduler = match scheduler_file(config) {
        Some(file) => SchedulerConfig::from_file(file)?,
        None => SchedulerConfig::default(),
    };
    Ok(Models {
        unet,
        unet_config,
        text_encoder: None,
        tokenizer: None,
        vae: None,
        schedule: scheduler.noise_schedule()?,
        scheduler,
        model_name: m
            .unet_weights
            .as_deref()
            .map_or_else(|| "random-init".to_string(), file_name),
        vae_identity: String::new(),
        text_identity: String::new(),
        sdxl: None,
    })
}

/// The cache folder of a run.
pub(super) fn cache_of(config: &TrainConfig) -> Cache {
    let dir = config
        .images
        .as_ref()
        .and_then(|i| i.cache_dir.clone())
        .unwrap_or_else(|| config.output.dir.join("cache"));
    Cache::new(dir)
}

/// Encodes every image to latents (from the cache when it has them).
pub(super) fn encode_images(
    scanned: &ScannedImages,
    models: &Models,
    cache: &Cache,
    sink: &mut dyn ProgressSink,
    cancel: &dyn CancelSignal,
    device: &Device,
) -> Result<TrainingSet> {
    let vae = models.vae.as_ref().expect("a whole model has a VAE");
    let images = ImagesEncoder {
        vae,
        vae_identity: &models.vae_identity,
        sdxl_sizes: models.sdxl.is_some(),
    };
    images.encode(scanned, cache, sink, cancel, device)
}

/// A VAE that encodes a dataset's images to latents, through the cache.
pub(super) struct ImagesEncoder<'a> {
    pub vae: &'a AutoencoderKL,
    /// The VAE's cache identity.
    pub vae_identity: &'a str,
    /// Whether examples carry SDXL's micro-conditioning.
    pub sdxl_sizes: bool,
}

impl ImagesEncoder<'_> {
    /// Encodes every image to latents (from the cache when it has them).
    pub(super) fn encode(
        &self,
        scanned: &ScannedImages,
        cache: &Cache,
        sink: &mut dyn ProgressSink,
        cancel: &dyn CancelSignal,
        device: &Device,
    ) -> Result<TrainingSet> {
        let vae = self.vae;
        let total = scanned.entries.len();
        let mut examples = Vec::with_capacity(total);
        for (i, (entry, &bucket)) in scanned.entries.iter().zip(&scanned.buckets).enumerate() {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled { completed_steps: 0 });
            }
            let bytes = std::fs::read(&entry.path).map_err(|e| Error::read(&entry.path, e))?;
            let key = Cache::latent_key(&bytes, bucket, self.vae_identity);
            let latents = match cache.get("latents", &key) {
                Some(l) => l,
                None => {
                    let image = image::load_from_memory(&bytes)
                        .map_err(|e| Error::Parse {
                            path: entry.path.clone(),
                            reason: format!("not a readable image: {e}"),
                        })?
                        .to_rgb8();
                    let pixels: Tensor<4> = fit_to_bucket(&image, bucket)
                        .to_tensor::<3>(device)
                        .unsqueeze_dim(0);
                    let latents =
                        HostTensor::from_tensor(vae.encode_latents(pixels).squeeze_dim::<3>(0));
                    cache.put("latents", &key, &latents)?;
                    latents
                }
            };
            // SDXL's micro-conditioning, from the image's own size (headers only).
            let size = if self.sdxl_sizes {
                let (w, h) = image::image_dimensions(&entry.path).map_err(|e| Error::Parse {
                    path: entry.path.clone(),
                    reason: format!("not a readable image: {e}"),
                })?;
                Some(SizeConditioning::for_bucket(
                    (w, h),
                    (bucket.0 as u32, bucket.1 as u32),
                    false,
                ))
            } else {
                None
            };
            examples.push(Example {
                latents,
                conditioning: Conditioning::Caption(entry.caption.clone()),
                repeats: entry.repeats,
                size,
            });
            sink.report(ProgressEvent::Preparing {
                stage: "latents",
                done: i + 1,
                total,
            });
        }
        Ok(TrainingSet::new(examples))
    }
}

/// The text conditioning of one caption: its states, and SDXL's pooled vector.
#[derive(Debug, Clone)]
pub(super) struct TextStates {
    /// `[tokens, width]`.
    pub context: HostTensor,
    /// `[projection_dim]`, SDXL only.
    pub pooled: Option<HostTensor>,
}

/// Encodes one caption without gradients (both encoders for SDXL).
fn encode_caption(
    caption: &str,
    models: &Models,
    clip_skip: usize,
    device: &Device,
) -> Result<TextStates> {
    if let Some(xl) = &models.sdxl {
        let ids = xl.tokenizers.encode_batch(&[caption]);
        let text = xl.text.encode(&ids, device)?;
        return Ok(TextStates {
            context: HostTensor::from_tensor(text.context.squeeze_dim::<2>(0)),
            pooled: Some(HostTensor::from_tensor(text.pooled.squeeze_dim::<1>(0))),
        });
    }
    let te = models.text_encoder.as_ref().expect("a whole model");
    let tokenizer = models.tokenizer.as_ref().expect("a whole model");
    let ids = ids_tensor(&[tokenizer.encode_padded(caption)], device);
    Ok(TextStates {
        context: HostTensor::from_tensor(te.forward(ids, clip_skip)?.squeeze_dim::<2>(0)),
        pooled: None,
    })
}

/// Text states of `captions`, computed once (from the cache when it has them).
pub(super) fn encode_captions(
    captions: &[String],
    models: &Models,
    clip_skip: usize,
    cache: &Cache,
    sink: &mut dyn ProgressSink,
    device: &Device,
) -> Result<HashMap<String, TextStates>> {
    let mut out = HashMap::new();
    for (i, caption) in captions.iter().enumerate() {
        if out.contains_key(caption) {
            continue;
        }
        let key = Cache::text_key(caption, clip_skip, &models.text_identity);
        let cached = match (cache.get("text", &key), models.sdxl.is_some()) {
            (Some(context), false) => Some(TextStates {
                context,
                pooled: None,
            }),
            (Some(context), true) => cache.get("pooled", &key).map(|p| TextStates {
                context,
                pooled: Some(p),
            }),
            (None, _) => None,
        };
        let states = match cached {
            Some(s) => s,
            None => {
                let s = encode_caption(caption, models, clip_skip, device)?;
                cache.put("text", &key, &s.context)?;
                if let Some(p) = &s.pooled {
                    cache.put("pooled", &key, p)?;
                }
                s
            }
        };
        out.insert(caption.clone(), states);
        sink.report(ProgressEvent::Preparing {
            stage: "text",
            done: i + 1,
            total: captions.len(),
        });
    }
    Ok(out)
}
