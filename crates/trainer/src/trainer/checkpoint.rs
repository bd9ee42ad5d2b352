//! kohya metadata, LoRA files and training states.
//!
//! A training state is a folder beside a LoRA file (`<stem>.state/`) with the adapters in f32
//! (`adapters.safetensors`, kohya names), the optimisers' moments (`optimizer_unet.bpk`,
//! `optimizer_text_encoder.bpk`, burn's format, keyed by parameter ids derived from module
//! paths) and `state.json`: the step, the epoch and how many of its batches are done, and the
//! positions of the random streams. Resuming from it continues exactly where the run was, so a
//! killed run that resumes ends with the same weights as one that was never interrupted.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::prepare::Models;
use crate::error::{Error, Result};
use crate::flux::lora::BASE_MODEL_VERSION;
use crate::lora::kohya::{Part, kohya_name_with};
use crate::lora::{KohyaMetadata, LoraLayers, TE_PREFIX, UNET_PREFIX, save_kohya_parts};
use crate::schedule::Prediction;
use crate::sdxl::lora::{SgmNames, TE1_PREFIX, TE2_PREFIX, sdxl_metadata};
use crate::tensor_file::{SaveDtype, TensorFile};
use crate::train::config::TrainConfig;
use crate::train::flow::FlowObjective;
use crate::train::step::Objective;
use crate::unet::UNetConfig;

/// `state.json` of a training state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Format version (1).
    pub version: u32,
    /// [`TrainConfig::training_digest`] of the run that wrote it.
    pub training_digest: String,
    /// [`Trainer::dataset_digest`](super::Trainer::dataset_digest) of its data.
    pub dataset_digest: String,
    /// Optimiser steps done.
    pub step: usize,
    /// The epoch to continue in, 1-based.
    pub epoch: usize,
    /// Micro-batches of that epoch already trained.
    pub batch: usize,
    /// Position of the shuffle stream when that epoch started.
    pub epoch_shuffle_pos: String,
    /// Position of the noise stream.
    pub noise_pos: String,
    /// Position of the caption stream.
    pub caption_pos: String,
    /// Loss of every step so far.
    pub losses: Vec<f32>,
    /// Mean loss of every finished epoch.
    pub epoch_losses: Vec<f32>,
    /// Sum and count of the current epoch's step losses.
    pub epoch_loss: (f64, usize),
    /// Validation losses measured so far.
    #[serde(default)]
    pub validation: Vec<super::ValidationPoint>,
}

/// Where the training state of a LoRA file goes.
pub fn state_dir(lora: &Path) -> PathBuf {
    lora.with_extension("state")
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

/// Calls `f` with the model parts whose adapters go into a LoRA file: the UNet (under its SGM
/// module names for SDXL, as sd-scripts writes them) and the trained text encoder(s).
pub(super) fn with_parts<R>(
    models: &mut Models,
    train_te: bool,
    f: impl FnOnce(&mut [Part<'_>]) -> R,
) -> R {
    if let Some(xl) = models.sdxl.as_mut() {
        let mut sgm = SgmNames::new(&mut models.unet, &models.unet_config);
        let mut parts: Vec<Part<'_>> = vec![(UNET_PREFIX, &mut sgm as &mut dyn LoraLayers)];
        if train_te {
            parts.push((TE1_PREFIX, &mut xl.text.text_encoder));
            parts.push((TE2_PREFIX, &mut xl.text.text_encoder_2));
        }
        return f(&mut parts);
    }
    let mut parts: Vec<Part<'_>> = vec![(UNET_PREFIX, &mut models.unet as &mut dyn LoraLayers)];
    if train_te && let Some(te) = models.text_encoder.as_mut() {
        parts.push((TE_PREFIX, te as &mut dyn LoraLayers));
    }
    f(&mut parts)
}

/// What kind of base model a run trains, for its kohya header.
pub(super) enum BaseKind<'a> {
    /// SD1.x/SD2.x: the version follows the UNet config.
    Sd(&'a UNetConfig),
    /// SDXL.
    Sdxl,
    /// FLUX.1, with the flow-matching settings sd-scripts records.
    Flux(&'a FlowObjective),
}

/// sd-scripts' header for a run; `epoch`, `steps` and `training_finished_at` are filled in at
/// each save.
pub(super) struct MetadataInputs<'a> {
    pub base: BaseKind<'a>,
    /// The base model's file or folder name (`ss_sd_model_name`).
    pub model_name: &'a str,
    /// The objective as resolved against the model.
    pub objective: &'a Objective,
    pub examples_per_epoch: usize,
    pub batches_per_epoch: usize,
    pub epochs: usize,
    pub total_steps: usize,
    pub started_at: u64,
    pub resolution: Option<(usize, usize)>,
    pub tag_frequency:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>,
    pub dataset_dirs: std::collections::BTreeMap<String, (usize, usize)>,
}

impl<'a> MetadataInputs<'a> {
    /// The base kind and name of the models of a UNet run.
    pub(super) fn base_of(models: &'a Models) -> (BaseKind<'a>, &'a str) {
        let kind = if models.sdxl.is_some() {
            BaseKind::Sdxl
        } else {
            BaseKind::Sd(&models.unet_config)
        };
        (kind, &models.model_name)
    }
}

pub(super) fn kohya_metadata(cfg: &TrainConfig, inputs: MetadataInputs<'_>) -> KohyaMetadata {
    let base_model_version = cfg
        .model
        .base_model_version
        .clone()
        .unwrap_or_else(|| match &inputs.base {
            BaseKind::Sd(unet_config) => {
                let sd2 =
                    unet_config.use_linear_projection || unet_config.cross_attention_dim[0] == 1024;
                if sd2 { "sd_v2" } else { "sd_v1" }.to_string()
            }
            // Replaced below by the family's own.
            BaseKind::Sdxl => "sd_v1".to_string(),
            BaseKind::Flux(_) => BASE_MODEL_VERSION.to_string(),
        });
    let mut metadata = KohyaMetadata {
        v2: base_model_version.starts_with("sd_v2"),
        base_model_version,
        v_parameterization: inputs.objective.prediction == Prediction::VPrediction,
        network: cfg.network.clone(),
        learning_rate: cfg.optimizer.learning_rate,
        lr_scheduler: cfg.lr_schedule.name().to_string(),
        lr_warmup_steps: cfg.lr_schedule.warmup_steps,
        optimizer: cfg.optimizer.describe(),
        num_train_images: inputs.examples_per_epoch,
        num_batches_per_epoch: inputs.batches_per_epoch,
        num_epochs: inputs.epochs,
        max_train_steps: inputs.total_steps,
        batch_size: cfg.batch_size,
        gradient_accumulation_steps: cfg.gradient_accumulation_steps,
        gradient_checkpointing: cfg.gradient_checkpointing,
        max_grad_norm: cfg.max_grad_norm.unwrap_or(0.0),
        seed: cfg.seed,
        noise_offset: inputs.objective.noise_offset,
        min_snr_gamma: inputs.objective.min_snr_gamma,
        training_started_at: inputs.started_at,
        output_name: cfg.output.name.clone(),
        sd_model_name: inputs.model_name.to_string(),
        resolution: inputs.resolution,
        session_id: u64::from_le_bytes(
            Sha256::digest(format!("{}:{}", cfg.seed, inputs.started_at))[..8]
                .try_into()
                .expect("8 bytes"),
        ) & 0xffff_ffff,
        text_encoder_lr: cfg.text_encoder.as_ref().map(|t| t.learning_rate),
        clip_skip: match inputs.base {
            // FLUX.1 conditions on T5's last layer and CLIP's pooled output.
            BaseKind::Flux(_) => None,
            _ => cfg.images.as_ref().map(|_| cfg.clip_skip),
        },
        tag_frequency: inputs.tag_frequency,
        dataset_dirs: inputs.dataset_dirs,
        ..KohyaMetadata::default()
    };
    if let Some(images) = &cfg.images {
        let extra = &mut metadata.extra;
        extra.insert("ss_enable_bucket".into(), py_bool(images.buckets.enabled));
        extra.insert(
            "ss_shuffle_caption".into(),
            py_bool(images.captions.shuffle_tags),
        );
        extra.insert(
            "ss_keep_tokens".into(),
            images.captions.keep_tokens.to_string(),
        );
        extra.insert(
            "ss_caption_dropout_rate".into(),
            images.captions.dropout.to_string(),
        );
    }
    metadata.extra.insert(
        "loraflow_train_config".into(),
        serde_json::to_string(cfg).expect("the config serialises"),
    );
    match inputs.base {
        BaseKind::Sdxl => {
            metadata = sdxl_metadata(&metadata);
            if let Some(v) = &cfg.model.base_model_version {
                metadata.base_model_version.clone_from(v);
            }
        }
        BaseKind::Flux(flow) => flow_metadata(&mut metadata.extra, flow),
        BaseKind::Sd(_) => {}
    }
    metadata
}

/// The flow-matching settings under the keys sd-scripts' `flux_train_network.py` writes.
fn flow_metadata(extra: &mut std::collections::BTreeMap<String, String>, flow: &FlowObjective) {
    use crate::train::flow_timesteps::{LossWeighting, TimestepSampling};
    // sd-scripts' defaults for what a mode does not use.
    let (mut sigmoid_scale, mut shift) = (1.0, 3.0);
    let (mut logit_mean, mut logit_std, mut mode_scale) = (0.0, 1.0, 1.29);
    let sampling = match flow.timestep_sampling {
        TimestepSampling::Uniform => "uniform",
        TimestepSampling::Sigmoid { sigmoid_scale: s } => {
            sigmoid_scale = s;
            "sigmoid"
        }
        TimestepSampling::Shift {
            sigmoid_scale: s,
            shift: f,
        } => {
            (sigmoid_scale, shift) = (s, f);
            "shift"
        }
        TimestepSampling::FluxShift { sigmoid_scale: s } => {
            sigmoid_scale = s;
            "flux_shift"
        }
        TimestepSampling::LogitNormal {
            logit_mean: m,
            logit_std: d,
            shift: f,
        } => {
            (logit_mean, logit_std, shift) = (m, d, f);
            "logit_normal"
        }
        TimestepSampling::Mode {
            mode_scale: m,
            shift: f,
        } => {
            (mode_scale, shift) = (m, f);
            "mode"
        }
    };
    let weighting = match flow.weighting {
        LossWeighting::None => "none",
        LossWeighting::SigmaSqrt => "sigma_sqrt",
        LossWeighting::Cosmap => "cosmap",
    };
    for (key, value) in [
        ("ss_timestep_sampling", sampling.to_string()),
        ("ss_sigmoid_scale", sigmoid_scale.to_string()),
        ("ss_discrete_flow_shift", shift.to_string()),
        ("ss_weighting_scheme", weighting.to_string()),
        ("ss_logit_mean", logit_mean.to_string()),
        ("ss_logit_std", logit_std.to_string()),
        ("ss_mode_scale", mode_scale.to_string()),
        ("ss_guidance_scale", flow.guidance.to_string()),
        ("ss_model_prediction_type", "raw".to_string()),
        ("ss_apply_t5_attn_mask", py_bool(false)),
    ] {
        extra.insert(key.to_string(), value);
    }
}

fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

/// Writes the adapters of `parts` to `path` with `metadata`.
pub(super) fn save_lora(
    parts: &mut [Part<'_>],
    path: &Path,
    metadata: &KohyaMetadata,
    dtype: SaveDtype,
) -> Result<String> {
    save_kohya_parts(parts, path, metadata, dtype)?;
    sha256_file(path)
}

fn optim_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        reason: format!("optimiser state: {e}"),
    }
}

/// Writes a training state folder.
pub(super) fn save_state(
    dir: &Path,
    parts: &mut [Part<'_>],
    optimizers: (&ModuleOptimizer, Option<&ModuleOptimizer>),
    state: &TrainingState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    save_kohya_parts(
        parts,
        &dir.join("adapters.safetensors"),
        &KohyaMetadata::default(),
        SaveDtype::F32,
    )?;
    let unet = dir.join("optimizer_unet.bpk");
    optimizers.0.save(&unet).map_err(|e| optim_err(&unet, e))?;
    if let Some(te) = optimizers.1 {
        let path = dir.join("optimizer_text_encoder.bpk");
        te.save(&path).map_err(|e| optim_err(&path, e))?;
    }
    let json = serde_json::to_string_pretty(state).expect("the state serialises");
    let path = dir.join("state.json");
    std::fs::write(&path, json).map_err(|e| Error::write(&path, e))
}

/// Reads `state.json` of a state folder (or the file itself) and checks that it belongs to
/// this training configuration.
pub(super) fn read_state(
    path: &Path,
    cfg: &TrainConfig,
    dataset_digest: &str,
) -> Result<(PathBuf, TrainingState)> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let file = dir.join("state.json");
    let text = std::fs::read_to_string(&file).map_err(|e| Error::read(&file, e))?;
    let state: TrainingState = serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: file.clone(),
        reason: e.to_string(),
    })?;
    if state.training_digest != cfg.training_digest() {
        return Err(Error::invalid(
            "resume",
            path.display(),
            "the state was written by a run with other training settings (seed, data, network, \
             optimiser, ...); resume with the configuration it was saved with",
        ));
    }
    if state.dataset_digest != dataset_digest {
        return Err(Error::invalid(
            "resume",
            path.display(),
            "the state was written for other training data (images, captions, repeats or \
             buckets differ); resume with the dataset it was trained on",
        ));
    }
    Ok((dir, state))
}

/// Puts a state's adapter factors into the attached adapters (keeping their configured alpha)
/// and loads the optimisers' moments.
pub(super) fn restore(
    dir: &Path,
    parts: &mut [Part<'_>],
    optimizers: (ModuleOptimizer, Option<ModuleOptimizer>),
    device: &Device,
) -> Result<(ModuleOptimizer, Option<ModuleOptimizer>)> {
    let file = TensorFile::open(dir.join("adapters.safetensors"))?;
    for (prefix, model) in parts.iter_mut() {
        for (path, mut layer) in model.layers() {
            let Some((_, _, alpha)) = layer.factors() else {
                continue;
            };
            let name = kohya_name_with(prefix, &path);
            let down = file.read(&format!("{name}.lora_down.weight"))?;
            let up = file.read(&format!("{name}.lora_up.weight"))?;
            layer.set_factors(&name, down, up, alpha, device)?;
        }
    }
    let unet_path = dir.join("optimizer_unet.bpk");
    let unet = optimizers
        .0
        .load(&unet_path)
        .map_err(|e| optim_err(&unet_path, e))?;
    let te = match optimizers.1 {
        Some(o) => {
            let path = dir.join("optimizer_text_encoder.bpk");
            Some(o.load(&path).map_err(|e| optim_err(&path, e))?)
        }
        None => None,
    };
    Ok((unet, te))
}
