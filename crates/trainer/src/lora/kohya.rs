//! kohya-format LoRA files, as sd-scripts writes them and ComfyUI, A1111 and diffusers read them.
//!
//! Each adapted module `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` becomes
//! `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q` with three tensors:
//! `.lora_down.weight` (`[r, in]`, or `[r, in, k, k]` for convolutions), `.lora_up.weight`
//! (`[out, r]` or `[out, r, 1, 1]`) and a 0-d `.alpha`. The header carries sd-scripts' `ss_*`
//! training metadata (every value a string) and the `sshs_*` hashes A1111 displays.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::Device;
use sha2::{Digest, Sha256};

use super::{LoraLayers, NetworkConfig};
use crate::error::{Error, Result};
use crate::tensor_file::{self, HostTensor, SaveDtype, TensorFile};

/// Key prefix of UNet modules.
pub const UNET_PREFIX: &str = "lora_unet_";

/// Key prefix of SD1.x/SD2.x text-encoder modules.
pub const TE_PREFIX: &str = "lora_te_";

/// The kohya module name of a diffusers UNet module path.
pub fn kohya_name(path: &str) -> String {
    kohya_name_with(UNET_PREFIX, path)
}

/// The kohya module name of a module path under a key prefix (`lora_unet_`, `lora_te_`).
pub fn kohya_name_with(prefix: &str, path: &str) -> String {
    format!("{prefix}{}", path.replace('.', "_"))
}

/// One model of a LoRA file and its key prefix, e.g. `(UNET_PREFIX, &mut unet)`.
pub type Part<'a> = (&'a str, &'a mut dyn LoraLayers);

/// The adapters of `model` as kohya tensors, in model order.
pub fn kohya_tensors<M: LoraLayers>(model: &mut M) -> Vec<(String, HostTensor)> {
    kohya_tensors_of(&mut [(UNET_PREFIX, model)])
}

/// The adapters of several models (UNet and text encoder) as kohya tensors.
pub fn kohya_tensors_of(parts: &mut [Part<'_>]) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    for (prefix, model) in parts.iter_mut() {
        for (path, layer) in model.layers() {
            if let Some((down, up, alpha)) = layer.factors() {
                let name = kohya_name_with(prefix, &path);
                out.push((format!("{name}.lora_down.weight"), down));
                out.push((format!("{name}.lora_up.weight"), up));
                out.push((format!("{name}.alpha"), HostTensor::scalar(alpha as f32)));
            }
        }
    }
    out
}

/// The training facts sd-scripts records in a LoRA's header.
///
/// Only fields the trainer knows are set; [`KohyaMetadata::to_map`] renders them under
/// sd-scripts' key names, and `extra` adds any other string pairs (for example the full
/// training configuration).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KohyaMetadata {
    /// `sd_v1`, `sd_v2`, ... (`ss_base_model_version`).
    pub base_model_version: String,
    /// SD2-family base (`ss_v2`).
    pub v2: bool,
    /// v-prediction training (`ss_v_parameterization`).
    pub v_parameterization: bool,
    /// The adapter network (`ss_network_dim`, `ss_network_alpha`, `ss_network_args`).
    pub network: NetworkConfig,
    /// Learning rate (`ss_learning_rate`, `ss_unet_lr`).
    pub learning_rate: f64,
    /// Scheduler name (`ss_lr_scheduler`).
    pub lr_scheduler: String,
    /// Warm-up steps (`ss_lr_warmup_steps`).
    pub lr_warmup_steps: usize,
    /// Optimiser description (`ss_optimizer`).
    pub optimizer: String,
    /// Training images, repeats included (`ss_num_train_images`).
    pub num_train_images: usize,
    /// Batches per epoch (`ss_num_batches_per_epoch`).
    pub num_batches_per_epoch: usize,
    /// Planned epochs (`ss_num_epochs`).
    pub num_epochs: usize,
    /// Epoch this file was saved at (`ss_epoch`).
    pub epoch: usize,
    /// Optimiser steps done (`ss_steps`).
    pub steps: usize,
    /// Planned optimiser steps (`ss_max_train_steps`).
    pub max_train_steps: usize,
    /// Batch size (`ss_batch_size_per_device`).
    pub batch_size: usize,
    /// Gradient accumulation (`ss_gradient_accumulation_steps`).
    pub gradient_accumulation_steps: usize,
    /// Gradient checkpointing (`ss_gradient_checkpointing`).
    pub gradient_checkpointing: bool,
    /// Global gradient-norm limit (`ss_max_grad_norm`), 0 for none.
    pub max_grad_norm: f64,
    /// Seed (`ss_seed`).
    pub seed: u64,
    /// Offset noise (`ss_noise_offset`).
    pub noise_offset: f64,
    /// Min-SNR γ (`ss_min_snr_gamma`).
    pub min_snr_gamma: Option<f64>,
    /// Unix seconds (`ss_training_started_at`).
    pub training_started_at: u64,
    /// Unix seconds (`ss_training_finished_at`).
    pub training_finished_at: u64,
    /// Output name (`ss_output_name`).
    pub output_name: String,
    /// Base model file name (`ss_sd_model_name`).
    pub sd_model_name: String,
    /// Training resolution in pixels (`ss_resolution`).
    pub resolution: Option<(usize, usize)>,
    /// Session id (`ss_session_id`).
    pub session_id: u64,
    /// Text-encoder learning rate when its adapters are trained (`ss_text_encoder_lr`; also
    /// decides `ss_network_train_unet_only`).
    pub text_encoder_lr: Option<f64>,
    /// `clip_skip` (`ss_clip_skip`).
    pub clip_skip: Option<usize>,
    /// Tag counts per dataset folder (`ss_tag_frequency`).
    pub tag_frequency: BTreeMap<String, BTreeMap<String, usize>>,
    /// `(n_repeats, img_count)` per dataset folder (`ss_dataset_dirs`).
    pub dataset_dirs: BTreeMap<String, (usize, usize)>,
    /// Additional header pairs.
    pub extra: BTreeMap<String, String>,
}

fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

/// Python's `str(float)` for the values sd-scripts stringifies.
fn py_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

impl KohyaMetadata {
    /// The header map, sd-scripts key names and value spellings.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("ss_session_id", self.session_id.to_string());
        put(
            "ss_training_started_at",
            self.training_started_at.to_string(),
        );
        put(
            "ss_training_finished_at",
            self.training_finished_at.to_string(),
        );
        put("ss_output_name", self.output_name.clone());
        put("ss_learning_rate", py_float(self.learning_rate));
        put("ss_unet_lr", py_float(self.learning_rate));
        put(
            "ss_text_encoder_lr",
            self.text_encoder_lr.map_or("None".into(), py_float),
        );
        put(
            "ss_network_train_unet_only",
            py_bool(self.text_encoder_lr.is_none()),
        );
        put(
            "ss_clip_skip",
            self.clip_skip.map_or("None".into(), |c| c.to_string()),
        );
        put(
            "ss_tag_frequency",
            serde_json::to_string(&self.tag_frequency).expect("maps serialise"),
        );
        let dirs: BTreeMap<&String, serde_json::Value> = self
            .dataset_dirs
            .iter()
            .map(|(dir, (repeats, count))| {
                (
                    dir,
                    serde_json::json!({"n_repeats": repeats, "img_count": count}),
                )
            })
            .collect();
        put(
            "ss_dataset_dirs",
            serde_json::to_string(&dirs).expect("maps serialise"),
        );
        put("ss_num_train_images", self.num_train_images.to_string());
        put("ss_num_reg_images", "0".into());
        put(
            "ss_num_batches_per_epoch",
            self.num_batches_per_epoch.to_string(),
        );
        put("ss_num_epochs", self.num_epochs.to_string());
        put("ss_epoch", self.epoch.to_string());
        put("ss_steps", self.steps.to_string());
        put("ss_max_train_steps", self.max_train_steps.to_string());
        put("ss_batch_size_per_device", self.batch_size.to_string());
        put(
            "ss_gradient_accumulation_steps",
            self.gradient_accumulation_steps.to_string(),
        );
        put(
            "ss_gradient_checkpointing",
            py_bool(self.gradient_checkpointing),
        );
        put("ss_lr_warmup_steps", self.lr_warmup_steps.to_string());
        put("ss_lr_scheduler", self.lr_scheduler.clone());
        put("ss_optimizer", self.optimizer.clone());
        put("ss_max_grad_norm", py_float(self.max_grad_norm));
        put("ss_network_module", "networks.lora".into());
        put("ss_network_dim", self.network.rank.to_string());
        put("ss_network_alpha", py_float(self.network.alpha));
        put("ss_network_dropout", "None".into());
        let mut args = serde_json::Map::new();
        if let Some(rank) = self.network.conv_rank {
            args.insert("conv_dim".into(), rank.to_string().into());
            let alpha = self.network.conv_alpha.unwrap_or(self.network.alpha);
            args.insert("conv_alpha".into(), py_float(alpha).into());
        }
        args.insert(
            "loraflow_targets".into(),
            serde_json::Value::from(self.network.targets.clone()),
        );
        put(
            "ss_network_args",
            serde_json::Value::Object(args).to_string(),
        );
        put("ss_mixed_precision", "no".into());
        put("ss_full_fp16", py_bool(false));
        put("ss_v2", py_bool(self.v2));
        put("ss_v_parameterization", py_bool(self.v_parameterization));
        put("ss_base_model_version", self.base_model_version.clone());
        put("ss_sd_model_name", self.sd_model_name.clone());
        put("ss_cache_latents", py_bool(true));
        put("ss_seed", self.seed.to_string());
        put("ss_noise_offset", py_float(self.noise_offset));
        put(
            "ss_min_snr_gamma",
            self.min_snr_gamma.map_or("None".into(), py_float),
        );
        if let Some((w, h)) = self.resolution {
            put("ss_resolution", format!("({w}, {h})"));
        }
        let arch = match (self.v2, self.v_parameterization) {
            (false, _) => "stable-diffusion-v1/lora",
            (true, true) => "stable-diffusion-v2-768-v/lora",
            (true, false) => "stable-diffusion-v2-512/lora",
        };
        put("modelspec.sai_model_spec", "1.0.0".into());
        put("modelspec.architecture", arch.into());
        put("modelspec.implementation", "diffusers".into());
        put("modelspec.title", self.output_name.clone());
        for (k, v) in &self.extra {
            put(k, v.clone());
        }
        m
    }
}

/// sd-scripts' `addnet_hash_safetensors`: SHA-256 of everything after the header.
pub fn addnet_hash(bytes: &[u8]) -> String {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length")) as usize;
    hex::encode(Sha256::digest(&bytes[8 + n..]))
}

/// sd-scripts' `addnet_hash_legacy`: the first 8 hex digits of SHA-256 of bytes
/// `0x100000..0x110000` (empty for files under 1 MiB, as in Python).
pub fn addnet_legacy_hash(bytes: &[u8]) -> String {
    let start = 0x100000.min(bytes.len());
    let end = 0x110000.min(bytes.len());
    hex::encode(Sha256::digest(&bytes[start..end]))[..8].to_string()
}

/// Writes the adapters of `model` (a UNet) as a kohya LoRA file.
///
/// As sd-scripts does, the `sshs_model_hash`/`sshs_legacy_hash` values are computed over the
/// file as written with only the `ss_*` metadata, so they identify the weights and training
/// facts, not later header edits.
pub fn save_kohya<M: LoraLayers>(
    model: &mut M,
    path: &Path,
    metadata: &KohyaMetadata,
    dtype: SaveDtype,
) -> Result<()> {
    save_kohya_parts(&mut [(UNET_PREFIX, model)], path, metadata, dtype)
}

/// Writes the adapters of several models (UNet and text encoder) as one kohya LoRA file.
pub fn save_kohya_parts(
    parts: &mut [Part<'_>],
    path: &Path,
    metadata: &KohyaMetadata,
    dtype: SaveDtype,
) -> Result<()> {
    let tensors = kohya_tensors_of(parts);
    if tensors.is_empty() {
        return Err(Error::InvalidLora {
            path: path.to_path_buf(),
            reason: "the model has no adapters to save".into(),
        });
    }
    let mut map = metadata.to_map();
    let ss_only: HashMap<String, String> = map
        .iter()
        .filter(|(k, _)| k.starts_with("ss_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bytes = tensor_file::to_bytes(path, &tensors, ss_only, dtype)?;
    map.insert("sshs_model_hash".into(), addnet_hash(&bytes));
    map.insert("sshs_legacy_hash".into(), addnet_legacy_hash(&bytes));
    tensor_file::write(path, &tensors, map, dtype)
}

/// What a LoRA file held and what was done with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedLora {
    /// Module paths that received adapters (text-encoder ones prefixed with `text_encoder.`).
    pub modules: Vec<String>,
    /// Keys of other models (text encoders) that were left alone.
    pub skipped: Vec<String>,
    /// The file's header metadata.
    pub metadata: HashMap<String, String>,
}

#[derive(Default)]
struct Entry {
    down: Option<HostTensor>,
    up: Option<HostTensor>,
    alpha: Option<f64>,
}

/// Installs the adapters of a kohya LoRA file into `model` (a UNet, on `device`).
///
/// Text-encoder keys (`lora_te*`) are skipped and listed. A key that is not a LoRA tensor
/// (LoHa, DoRA, ...), names no module of the model, or has shapes that do not fit is an error
/// naming it. A missing `.alpha` means `alpha = rank`, as in sd-scripts.
pub fn load_kohya<M: LoraLayers>(
    model: &mut M,
    path: &Path,
    device: &Device,
) -> Result<LoadedLora> {
    load_kohya_parts(&mut [(UNET_PREFIX, model)], path, 1.0, device)
}

/// Installs the adapters of a kohya LoRA file into several models (UNet under `lora_unet_`,
/// text encoder under `lora_te_`), scaled by `strength` (A1111's LoRA weight: every alpha is
/// multiplied by it).
///
/// Keys of prefixes not given (for example `lora_te_` when only the UNet is passed, or SDXL's
/// `lora_te1_`/`lora_te2_`) are skipped and listed.
pub fn load_kohya_parts(
    parts: &mut [Part<'_>],
    path: &Path,
    strength: f64,
    device: &Device,
) -> Result<LoadedLora> {
    let file = TensorFile::open(path)?;
    let bad = |reason: String| Error::InvalidLora {
        path: path.to_path_buf(),
        reason,
    };
    let prefixes: Vec<&str> = parts.iter().map(|(p, _)| *p).collect();
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut skipped = Vec::new();
    for key in file.names() {
        let owned = prefixes.iter().any(|p| key.starts_with(p));
        if !owned {
            if key.starts_with("lora_te") || key.starts_with(UNET_PREFIX) {
                skipped.push(key);
                continue;
            }
            return Err(bad(format!(
                "key `{key}` is not a kohya key (expected a prefix among {prefixes:?})"
            )));
        }
        let (module, kind) = key
            .split_once('.')
            .ok_or_else(|| bad(format!("key `{key}` has no tensor suffix")))?;
        let entry = entries.entry(module.to_string()).or_default();
        match kind {
            "lora_down.weight" => entry.down = Some(file.read(&key)?),
            "lora_up.weight" => entry.up = Some(file.read(&key)?),
            "alpha" => {
                let t = file.read(&key)?;
                if t.data.len() != 1 {
                    return Err(bad(format!(
                        "`{key}` has shape {:?}, expected a scalar",
                        t.shape
                    )));
                }
                entry.alpha = Some(t.data[0] as f64);
            }
            other => {
                return Err(bad(format!(
                    "key `{key}`: `{other}` tensors are not plain LoRA (LoHa, LoKr and DoRA are not supported)"
                )));
            }
        }
    }

    // Walk the models so that modules come back in model order.
    let mut modules = Vec::new();
    for (prefix, model) in parts.iter_mut() {
        for (module_path, mut layer) in model.layers() {
            let name = kohya_name_with(prefix, &module_path);
            let Some(entry) = entries.remove(&name) else {
                continue;
            };
            let (Some(down), Some(up)) = (entry.down, entry.up) else {
                return Err(bad(format!(
                    "`{name}` needs both lora_down.weight and lora_up.weight"
                )));
            };
            let rank = down.shape.first().copied().unwrap_or(0);
            let alpha = match entry.alpha {
                Some(a) if a != 0.0 => a,
                _ => rank as f64,
            };
            layer.set_factors(&name, down, up, alpha * strength, device)?;
            modules.push(match *prefix {
                UNET_PREFIX => module_path,
                TE_PREFIX => format!("text_encoder.{module_path}"),
                other => format!("{other}{module_path}"),
            });
        }
    }
    if let Some(name) = entries.keys().next() {
        return Err(bad(format!("`{name}` names no layer of this model")));
    }
    Ok(LoadedLora {
        modules,
        skipped,
        metadata: file.metadata(),
    })
}
