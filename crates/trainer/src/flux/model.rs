//! A whole FLUX.1 model: the transformer, the VAE, both text encoders with their tokenizers and
//! the scheduler's config, loaded from a diffusers folder (`FluxPipeline.save_pretrained`'s
//! layout, as `black-forest-labs/FLUX.1-dev` is published).
//!
//! The text conditioning is `FluxPipeline.encode_prompt`'s: the T5 encoder's last hidden state
//! of the prompt cut and padded to `max_sequence_length` tokens (no attention mask), and the
//! CLIP text model's pooled output of the prompt framed and padded to 77 tokens.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use serde_json::Value;

use super::FluxTransformer2DModel;
use super::config::FluxTransformerConfig;
use super::lora::{
    KOHYA_PREFIX, PEFT_TEXT_ENCODER, PEFT_TRANSFORMER, TE1_PREFIX, TE3_PREFIX, load_flux_kohya,
    load_flux_kohya_text, load_flux_peft,
};
use super::scheduler::FlowMatchConfig;
use crate::clip::{ClipTextConfig, ClipTextModel, ClipTokenizer, ids_tensor};
use crate::error::{Error, Result};
use crate::lora::kohya::Part;
use crate::lora::{LayerMut, LoadedLora, LoraLayers, load_peft_parts};
use crate::pipeline::{tokenizer_folder, weights_file};
use crate::t5::{T5Config, T5EncoderModel, T5Tokenizer};
use crate::tensor_file::TensorFile;
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::weights::{ShardedFiles, Weights};

/// The longest T5 sequence FluxPipeline accepts (`max_sequence_length`, its default for dev).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// Whether `dir` is a diffusers FLUX.1 folder: `model_index.json` names a Flux pipeline, or
/// `transformer/config.json` a `FluxTransformer2DModel` (a folder of configs without an
/// index, as single-file users keep beside their checkpoints).
pub fn is_flux_dir(dir: &Path) -> bool {
    let class = |path: PathBuf| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        value["_class_name"].as_str().map(str::to_string)
    };
    class(dir.join("model_index.json")).is_some_and(|c| c.starts_with("Flux"))
        || class(dir.join("transformer").join("config.json"))
            .is_some_and(|c| c == "FluxTransformer2DModel")
}

/// The configurations of a FLUX.1 model's components.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxModelConfig {
    /// `transformer/config.json`.
    pub transformer: FluxTransformerConfig,
    /// `vae/config.json` (16 latent channels, shift and scale for FLUX.1).
    pub vae: VaeConfig,
    /// `text_encoder/config.json` (CLIP ViT-L's text model for FLUX.1).
    pub text_encoder: ClipTextConfig,
    /// `text_encoder_2/config.json` (T5 v1.1 XXL's encoder for FLUX.1).
    pub text_encoder_2: T5Config,
    /// `scheduler/scheduler_config.json` (FLUX.1-dev's when absent).
    pub scheduler: FlowMatchConfig,
    /// T5 tokens per prompt: 512 (FluxPipeline's default), or the tokenizer's
    /// `model_max_length` when smaller.
    pub max_sequence_length: usize,
}

/// `dir/sub`, or an error naming it.
fn required(dir: &Path, sub: &str) -> Result<PathBuf> {
    let p = dir.join(sub);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::invalid(
            "model",
            dir.display(),
            format!("a diffusers FLUX.1 folder needs {sub}, which is missing"),
        ))
    }
}

/// The tokenizer's `model_max_length`, when its config gives a usable one.
pub(crate) fn tokenizer_max_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let value = crate::error::read_json(&path)?;
    // Some configs hold a huge sentinel instead of a length.
    Ok(value["model_max_length"]
        .as_u64()
        .filter(|&n| (1..=MAX_SEQUENCE_LENGTH as u64).contains(&n))
        .map(|n| n as usize))
}

impl FluxModelConfig {
    /// Reads every component's config from a diffusers FLUX.1 folder (weights are not read)
    /// and checks that they fit together ([`validate`](Self::validate)).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let scheduler_path = dir.join("scheduler/scheduler_config.json");
        let max = tokenizer_max_length(&required(dir, "tokenizer_2")?)?;
        let config = Self {
            transformer: FluxTransformerConfig::from_file(required(
                dir,
                "transformer/config.json",
            )?)?,
            vae: VaeConfig::from_file(required(dir, "vae/config.json")?)?,
            text_encoder: ClipTextConfig::from_file(required(dir, "text_encoder/config.json")?)?,
            text_encoder_2: T5Config::from_file(required(dir, "text_encoder_2/config.json")?)?,
            scheduler: if scheduler_path.is_file() {
                FlowMatchConfig::from_file(&scheduler_path)?
            } else {
                FlowMatchConfig::flux_dev()
            },
            max_sequence_length: max.unwrap_or(MAX_SEQUENCE_LENGTH),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the components' widths fit together: the transformer reads T5's width as
    /// `joint_attention_dim` and CLIP's as `pooled_projection_dim`, and its tokens are the VAE
    /// latent packed 2×2 (`in_channels` and its output width `4 × latent_channels`).
    pub fn validate(&self) -> Result<()> {
        let t = &self.transformer;
        let packed = 4 * self.vae.latent_channels;
        let checks = [
            (
                "transformer.joint_attention_dim",
                t.joint_attention_dim,
                self.text_encoder_2.d_model,
                "text_encoder_2's d_model",
            ),
            (
                "transformer.pooled_projection_dim",
                t.pooled_projection_dim,
                self.text_encoder.hidden_size,
                "text_encoder's hidden_size",
            ),
            (
                "transformer.in_channels",
                t.in_channels,
                packed,
                "4 × the VAE's latent_channels (2×2 packing)",
            ),
            (
                "transformer.out_channels",
                t.output_dim(),
                packed,
                "4 × the VAE's latent_channels (2×2 packing)",
            ),
        ];
        for (field, given, expected, what) in checks {
            if given != expected {
                return Err(Error::invalid(
                    field,
                    given,
                    format!("expected {what} ({expected})"),
                ));
            }
        }
        if self.max_sequence_length == 0 || self.max_sequence_length > MAX_SEQUENCE_LENGTH {
            return Err(Error::invalid(
                "max_sequence_length",
                self.max_sequence_length,
                format!("expected 1..={MAX_SEQUENCE_LENGTH} (FluxPipeline's limit)"),
            ));
        }
        self.scheduler.validate()
    }

    /// What image sides must be a multiple of: the VAE's downscaling times the 2×2 packing
    /// (16 for FLUX.1).
    pub fn pixel_multiple(&self) -> usize {
        self.vae.downscale_factor() * 2
    }

    /// The image side FluxPipeline renders by default: 128 latent pixels (1024 for FLUX.1).
    pub fn default_image_size(&self) -> usize {
        128 * self.vae.downscale_factor()
    }
}

/// A loaded FLUX.1 model.
#[derive(Debug, Clone)]
pub struct FluxModel {
    /// The rectified-flow transformer.
    pub transformer: FluxTransformer2DModel,
    /// The autoencoder (FLUX.1's config: shift and scale read from it).
    pub vae: AutoencoderKL,
    /// The CLIP text model (its pooled output conditions the transformer).
    pub clip: ClipTextModel,
    /// CLIP's BPE tokenizer (`tokenizer/`).
    pub clip_tokenizer: ClipTokenizer,
    /// The T5 encoder (its states are the text tokens).
    pub t5: T5EncoderModel,
    /// T5's SentencePiece tokenizer (`tokenizer_2/spiece.model`).
    pub t5_tokenizer: T5Tokenizer,
    /// Component configurations.
    pub config: FluxModelConfig,
    /// Where it was loaded from.
    pub source: PathBuf,
}

/// A component's weights: `stem.safetensors` (or its fp16/bf16 variant), or the shards of
/// `stem.safetensors.index.json` (FLUX.1-dev's transformer and T5 are sharded).
fn component_weights(dir: &Path, stem: &str) -> Result<Box<dyn Weights>> {
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if !dir.join(format!("{stem}.safetensors")).is_file() && index.is_file() {
        return Ok(Box::new(ShardedFiles::open(index)?));
    }
    Ok(Box::new(TensorFile::open(weights_file(dir, stem)?)?))
}

impl FluxModel {
    /// Loads every component of a diffusers FLUX.1 folder (fp32, fp16 or bf16 weights, single
    /// or sharded files). A folder whose `model_index.json` names another pipeline, or that
    /// lacks a component, is refused naming what is wrong.
    pub fn load_diffusers(dir: &Path, device: &Device) -> Result<Self> {
        let index = dir.join("model_index.json");
        if index.is_file() && !is_flux_dir(dir) {
            return Err(Error::Unsupported {
                field: "_class_name".into(),
                value: format!("{} in {}", "model_index.json", dir.display()),
                hint: "expected a FLUX.1 pipeline (FluxPipeline)".into(),
            });
        }
        let config = FluxModelConfig::from_dir(dir)?;
        let spiece = required(dir, "tokenizer_2/spiece.model")?;
        let transformer = config.transformer.init(device).load_weights(
            component_weights(&dir.join("transformer"), "diffusion_pytorch_model")?.as_ref(),
        )?;
        let vae = config.vae.init(device).load_weights(
            component_weights(&dir.join("vae"), "diffusion_pytorch_model")?.as_ref(),
        )?;
        let clip = config
            .text_encoder
            .init(device)
            .load_weights(component_weights(&dir.join("text_encoder"), "model")?.as_ref())?;
        let t5 = config
            .text_encoder_2
            .init(device)
            .load_weights(component_weights(&dir.join("text_encoder_2"), "model")?.as_ref())?;
        Ok(Self {
            transformer,
            vae,
            clip,
            clip_tokenizer: ClipTokenizer::from_dir(tokenizer_folder(dir, "tokenizer")?)?,
            t5,
            t5_tokenizer: T5Tokenizer::from_file(spiece)?,
            config,
            source: dir.to_path_buf(),
        })
    }

    /// The conditioning of one prompt, as `FluxPipeline.encode_prompt(prompt)` computes it.
    ///
    /// # Shapes
    ///
    /// - output: `(T5 states [1, max_sequence_length, joint_attention_dim], CLIP pooled
    ///   [1, pooled_projection_dim])`
    pub fn encode_prompt(&self, prompt: &str, device: &Device) -> Result<(Tensor<3>, Tensor<2>)> {
        self.encode_prompts(&[prompt], device)
    }

    /// [`encode_prompt`](Self::encode_prompt) for a batch of prompts.
    ///
    /// # Shapes
    ///
    /// - output: `([batch, max_sequence_length, joint_attention_dim], [batch,
    ///   pooled_projection_dim])`
    pub fn encode_prompts(
        &self,
        prompts: &[&str],
        device: &Device,
    ) -> Result<(Tensor<3>, Tensor<2>)> {
        if prompts.is_empty() {
            return Err(Error::invalid(
                "prompts",
                "none",
                "expected at least one prompt",
            ));
        }
        let clip_ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.clip_tokenizer.encode_padded(p))
            .collect();
        let pooled = self.clip.pooler_output(
            ids_tensor(&clip_ids, device),
            &clip_ids,
            self.config.text_encoder.eos_token_id,
        )?;
        let t5_ids = prompts
            .iter()
            .map(|p| {
                self.t5_tokenizer
                    .encode_padded(p, self.config.max_sequence_length)
            })
            .collect::<Result<Vec<_>>>()?;
        let states = self.t5.encode(&t5_ids, device)?;
        Ok((states, pooled))
    }

    /// A copy of the model with a Flux LoRA file applied at `strength`: a kohya file
    /// (sd-scripts' `lora_unet_*` BFL names, fused q/k/v; `lora_te1_*` for CLIP and
    /// `lora_te3_*` for T5 when the text encoder was trained) or a diffusers/PEFT one
    /// (`transformer.<path>.lora_A.weight`, and `text_encoder.<path>` for CLIP, as
    /// `FluxPipeline.save_lora_weights` and ai-toolkit write it). Text-encoder adapters change
    /// the prompt encoding ([`encode_prompt`](Self::encode_prompt)): CLIP's pooled output and
    /// T5's states. The report lists the transformer's modules by diffusers path, then CLIP's
    /// as `text_encoder.<path>` and T5's as `text_encoder_2.<path>`.
    pub fn with_lora(
        &self,
        lora: &Path,
        strength: f64,
        device: &Device,
    ) -> Result<(Self, LoadedLora)> {
        if !strength.is_finite() || strength.abs() > 100.0 {
            return Err(Error::invalid(
                "lora_strength",
                strength,
                "expected a finite strength within ±100",
            ));
        }
        let names = TensorFile::open(lora)?.names();
        let mut model = self.clone();
        let kohya_text = names
            .iter()
            .any(|k| k.starts_with(TE1_PREFIX) || k.starts_with(TE3_PREFIX));
        // Any `lora_te*` key makes it a kohya file, so that one of another model (SD's
        // `lora_te_`, SDXL's `lora_te2_`) is refused naming the key.
        let kohya = names
            .iter()
            .any(|k| k.starts_with(KOHYA_PREFIX) || k.starts_with("lora_te"));
        let loaded = if kohya {
            let mut loaded = load_flux_kohya(&mut model.transformer, lora, strength, device)?;
            if kohya_text {
                let text =
                    load_flux_kohya_text(&mut model.clip, &mut model.t5, lora, strength, device)?;
                loaded.modules.extend(text.modules);
                loaded.skipped.clear();
            }
            loaded
        } else if names.iter().any(|k| k.ends_with(".lora_A.weight")) {
            let peft_text = names
                .iter()
                .any(|k| k.starts_with(&format!("{PEFT_TEXT_ENCODER}.")));
            let loaded = if peft_text {
                let mut parts: Vec<Part<'_>> = vec![
                    (PEFT_TRANSFORMER, &mut model.transformer),
                    (PEFT_TEXT_ENCODER, &mut model.clip),
                ];
                let mut loaded = load_peft_parts(&mut parts, lora, None, device)?;
                for m in &mut loaded.modules {
                    if let Some(rest) = m.strip_prefix("transformer.") {
                        *m = rest.to_string();
                    }
                }
                loaded
            } else {
                load_flux_peft(&mut model.transformer, lora, None, device)?
            };
            scale_adapters(model.transformer.layers(), strength);
            scale_adapters(model.clip.layers(), strength);
            loaded
        } else {
            return Err(Error::InvalidLora {
                path: lora.to_path_buf(),
                reason: format!(
                    "neither kohya Flux keys (`{KOHYA_PREFIX}*`) nor PEFT keys \
                     (`*.lora_A.weight`) are in it"
                ),
            });
        };
        Ok((model, loaded))
    }
}

/// Multiplies the scale of every adapter among `layers` by `strength`.
fn scale_adapters(layers: Vec<(String, LayerMut<'_>)>, strength: f64) {
    for (_, layer) in layers {
        if let LayerMut::Linear(l) = layer
            && let Some(adapter) = &mut l.lora
        {
            adapter.alpha *= strength;
        }
    }
}
