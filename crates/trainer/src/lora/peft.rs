//! diffusers/PEFT-format LoRA files (`lora_A`/`lora_B` keys).
//!
//! One file holds the UNet's adapters and, when it is trained, the text encoder's, each under
//! its diffusers component prefix (`unet.`, `text_encoder.`), as diffusers' `save_lora_weights`
//! writes them and `load_lora_weights` reads them.
//!
//! PEFT files carry no per-module alpha tensor: the scale comes from the adapter config. On
//! export, `alpha / rank` is folded into `lora_B`, so the file is exact under PEFT's default
//! `lora_alpha = r`; the `lora_adapter_metadata` header (read by diffusers' `load_lora_weights`)
//! says so explicitly, with per-module rank patterns when ranks differ.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::Device;
use serde_json::{Value, json};

use super::kohya::Part;
use super::{LoadedLora, LoraLayers};
use crate::error::{Error, Result};
use crate::tensor_file::{self, HostTensor, SaveDtype, TensorFile};

/// The header key diffusers reads adapter configs from.
pub const ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// Key prefix of UNet adapters in diffusers' files.
pub const PEFT_UNET: &str = "unet";

/// Key prefix of text-encoder adapters in diffusers' files.
pub const PEFT_TEXT_ENCODER: &str = "text_encoder";

/// Component prefixes of diffusers' LoRA files for the SD families; keys under one that is not
/// being loaded are skipped rather than refused.
const COMPONENTS: [&str; 3] = [PEFT_UNET, PEFT_TEXT_ENCODER, "text_encoder_2"];

/// The adapters of `model` as PEFT tensors under `prefix` (`unet` for diffusers pipelines),
/// with the scale folded into `lora_B`.
pub fn peft_tensors<M: LoraLayers + ?Sized>(
    model: &mut M,
    prefix: &str,
) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    for (path, layer) in model.layers() {
        if let Some((down, mut up, alpha)) = layer.factors() {
            let rank = down.shape[0];
            let scale = (alpha / rank as f64) as f32;
            up.data.iter_mut().for_each(|v| *v *= scale);
            let name = super::join(prefix, &path);
            out.push((format!("{name}.lora_A.weight"), down));
            out.push((format!("{name}.lora_B.weight"), up));
        }
    }
    out
}

/// The PEFT adapter config of one component (`r`, `lora_alpha = r`, rank patterns where ranks
/// differ, target modules), or `None` when it has no adapters.
fn adapter_config(model: &mut dyn LoraLayers) -> Option<Value> {
    let ranks: BTreeMap<String, usize> = model
        .layers()
        .into_iter()
        .filter_map(|(p, layer)| layer.factors().map(|(down, _, _)| (p, down.shape[0])))
        .collect();
    let &r = ranks.values().next()?;
    let pattern: serde_json::Map<String, Value> = ranks
        .iter()
        .filter(|(_, rank)| **rank != r)
        .map(|(p, rank)| (p.clone(), json!(rank)))
        .collect();
    Some(json!({
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": pattern,
        "target_modules": ranks.keys().collect::<Vec<_>>(),
        "use_dora": false,
        "lora_bias": false,
    }))
}

/// Writes the adapters of `model` as a diffusers/PEFT LoRA file
/// (`pytorch_lora_weights.safetensors` style), keys prefixed with `prefix`.
pub fn save_peft<M: LoraLayers>(
    model: &mut M,
    path: &Path,
    prefix: &str,
    dtype: SaveDtype,
) -> Result<()> {
    save_peft_parts(&mut [(prefix, model)], path, dtype)
}

/// Writes the adapters of several models as one diffusers/PEFT file, as diffusers'
/// `save_lora_weights(unet_lora_layers=..., text_encoder_lora_layers=...)` does: each
/// component's keys under its prefix (`unet.<path>.lora_A.weight`,
/// `text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight`, ...) and each
/// component's adapter config packed under the same prefix (`unet.r`, `text_encoder.r`, ...) in
/// the `lora_adapter_metadata` header.
pub fn save_peft_parts(parts: &mut [Part<'_>], path: &Path, dtype: SaveDtype) -> Result<()> {
    let mut tensors = Vec::new();
    let mut packed = serde_json::Map::new();
    for (prefix, model) in parts.iter_mut() {
        let Some(config) = adapter_config(&mut **model) else {
            continue;
        };
        // diffusers packs each component's config with its prefix (`unet.r`, ...).
        for (k, v) in config.as_object().expect("an object") {
            packed.insert(super::join(prefix, k), v.clone());
        }
        tensors.extend(peft_tensors(&mut **model, prefix));
    }
    if tensors.is_empty() {
        return Err(Error::InvalidLora {
            path: path.to_path_buf(),
            reason: "the model has no adapters to save".into(),
        });
    }
    let mut metadata = HashMap::new();
    metadata.insert(
        ADAPTER_METADATA_KEY.to_string(),
        Value::Object(packed).to_string(),
    );
    metadata.insert("format".to_string(), "pt".to_string());
    tensor_file::write(path, &tensors, metadata, dtype)
}

/// Installs the adapters of a PEFT file into `model`.
///
/// Keys may carry `prefix.` (e.g. `unet.`) or not; keys of other diffusers components
/// (`text_encoder.`, ...) are skipped and listed. Every module gets `alpha` when given,
/// otherwise its rank (PEFT's default, and what [`save_peft`] relies on).
pub fn load_peft<M: LoraLayers>(
    model: &mut M,
    path: &Path,
    prefix: &str,
    alpha: Option<f64>,
    device: &Device,
) -> Result<LoadedLora> {
    load_peft_parts(&mut [(prefix, model)], path, alpha, device)
}

/// Installs the adapters of a PEFT file into several models (UNet under `unet.`, text encoder
/// under `text_encoder.`), the counterpart of [`save_peft_parts`].
///
/// With a single part, keys without a component prefix belong to it. Keys under a component
/// prefix not given are skipped and listed; any other key, a module that names no layer, or a
/// module with only one factor is an error naming it. Modules come back in model order, those
/// of parts other than the UNet prefixed with their component (`text_encoder.<path>`).
pub fn load_peft_parts(
    parts: &mut [Part<'_>],
    path: &Path,
    alpha: Option<f64>,
    device: &Device,
) -> Result<LoadedLora> {
    let file = TensorFile::open(path)?;
    let bad = |reason: String| Error::InvalidLora {
        path: path.to_path_buf(),
        reason,
    };
    let prefixes: Vec<String> = parts.iter().map(|(p, _)| p.to_string()).collect();
    // (part index, module path) → (lora_A, lora_B)
    type Factors = (Option<HostTensor>, Option<HostTensor>);
    let mut entries: BTreeMap<(usize, String), Factors> = BTreeMap::new();
    let mut skipped = Vec::new();
    for key in file.names() {
        let owner = prefixes.iter().enumerate().find_map(|(i, p)| {
            key.strip_prefix(p.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|rest| (i, rest))
        });
        let (part, bare) = match owner {
            Some(found) => found,
            None if COMPONENTS.iter().any(|c| key.starts_with(&format!("{c}."))) => {
                skipped.push(key.clone());
                continue;
            }
            None if parts.len() == 1 => (0, key.as_str()),
            None => {
                return Err(bad(format!(
                    "key `{key}` has no component prefix among {prefixes:?}"
                )));
            }
        };
        let (module, is_a) = if let Some(m) = bare.strip_suffix(".lora_A.weight") {
            (m, true)
        } else if let Some(m) = bare.strip_suffix(".lora_B.weight") {
            (m, false)
        } else {
            return Err(bad(format!(
                "key `{key}` is not a PEFT lora_A/lora_B weight"
            )));
        };
        let t = Some(file.read(&key)?);
        let entry = entries.entry((part, module.to_string())).or_default();
        if is_a { entry.0 = t } else { entry.1 = t }
    }
    let mut modules = Vec::new();
    for (i, (prefix, model)) in parts.iter_mut().enumerate() {
        for (module_path, mut layer) in model.layers() {
            let Some((a, b)) = entries.remove(&(i, module_path.clone())) else {
                continue;
            };
            let name = super::join(prefix, &module_path);
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("`{name}` needs both lora_A and lora_B")));
            };
            let rank = a.shape.first().copied().unwrap_or(0);
            let alpha = alpha.unwrap_or(rank as f64);
            layer.set_factors(&name, a, b, alpha, device)?;
            modules.push(if *prefix == PEFT_UNET {
                module_path
            } else {
                name
            });
        }
    }
    if let Some((i, module)) = entries.keys().next() {
        return Err(bad(format!(
            "`{}` names no layer of this model",
            super::join(&prefixes[*i], module)
        )));
    }
    Ok(LoadedLora {
        modules,
        skipped,
        metadata: file.metadata(),
    })
}
