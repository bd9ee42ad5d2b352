//! diffusers/PEFT-format LoRA files (`lora_A`/`lora_B` keys).
//!
//! PEFT files carry no per-module alpha tensor: the scale comes from the adapter config. On
//! export, `alpha / rank` is folded into `lora_B`, so the file is exact under PEFT's default
//! `lora_alpha = r`; the `lora_adapter_metadata` header (read by diffusers' `load_lora_weights`)
//! says so explicitly, with per-module rank patterns when ranks differ.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::Device;
use serde_json::{Value, json};

use super::{LoadedLora, LoraLayers};
use crate::error::{Error, Result};
use crate::tensor_file::{self, HostTensor, SaveDtype, TensorFile};

/// The header key diffusers reads adapter configs from.
pub const ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// The adapters of `model` as PEFT tensors under `prefix` (`unet` for diffusers pipelines),
/// with the scale folded into `lora_B`.
pub fn peft_tensors<M: LoraLayers>(model: &mut M, prefix: &str) -> Vec<(String, HostTensor)> {
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

/// Writes the adapters of `model` as a diffusers/PEFT LoRA file
/// (`pytorch_lora_weights.safetensors` style), keys prefixed with `prefix`.
pub fn save_peft<M: LoraLayers>(
    model: &mut M,
    path: &Path,
    prefix: &str,
    dtype: SaveDtype,
) -> Result<()> {
    let ranks: BTreeMap<String, usize> = model
        .layers()
        .into_iter()
        .filter_map(|(p, layer)| layer.factors().map(|(down, _, _)| (p, down.shape[0])))
        .collect();
    let Some(&r) = ranks.values().next() else {
        return Err(Error::InvalidLora {
            path: path.to_path_buf(),
            reason: "the model has no adapters to save".into(),
        });
    };
    let tensors = peft_tensors(model, prefix);
    let pattern: serde_json::Map<String, Value> = ranks
        .iter()
        .filter(|(_, rank)| **rank != r)
        .map(|(p, rank)| (p.clone(), json!(rank)))
        .collect();
    let config = json!({
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": pattern,
        "target_modules": ranks.keys().collect::<Vec<_>>(),
        "use_dora": false,
        "lora_bias": false,
    });
    // diffusers packs each component's config with its prefix (`unet.r`, ...).
    let packed: serde_json::Map<String, Value> = config
        .as_object()
        .expect("an object")
        .iter()
        .map(|(k, v)| (super::join(prefix, k), v.clone()))
        .collect();
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
/// Keys may carry `prefix.` (e.g. `unet.`) or not. Every module gets `alpha` when given,
/// otherwise its rank (PEFT's default, and what [`save_peft`] relies on).
pub fn load_peft<M: LoraLayers>(
    model: &mut M,
    path: &Path,
    prefix: &str,
    alpha: Option<f64>,
    device: &Device,
) -> Result<LoadedLora> {
    let file = TensorFile::open(path)?;
    let bad = |reason: String| Error::InvalidLora {
        path: path.to_path_buf(),
        reason,
    };
    let mut entries: BTreeMap<String, (Option<HostTensor>, Option<HostTensor>)> = BTreeMap::new();
    let strip = format!("{prefix}.");
    for key in file.names() {
        let bare = key.strip_prefix(&strip).unwrap_or(&key);
        let (module, is_a) = if let Some(m) = bare.strip_suffix(".lora_A.weight") {
            (m, true)
        } else if let Some(m) = bare.strip_suffix(".lora_B.weight") {
            (m, false)
        } else {
            return Err(bad(format!(
                "key `{key}` is not a PEFT lora_A/lora_B weight"
            )));
        };
        let entry = entries.entry(module.to_string()).or_default();
        let t = Some(file.read(&key)?);
        if is_a { entry.0 = t } else { entry.1 = t }
    }
    let mut modules = Vec::new();
    for (path, mut layer) in model.layers() {
        let Some((a, b)) = entries.remove(&path) else {
            continue;
        };
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad(format!("`{path}` needs both lora_A and lora_B")));
        };
        let rank = a.shape.first().copied().unwrap_or(0);
        let alpha = alpha.unwrap_or(rank as f64);
        layer.set_factors(&path, a, b, alpha, device)?;
        modules.push(path);
    }
    if let Some(module) = entries.keys().next() {
        return Err(bad(format!("`{module}` names no layer of this model")));
    }
    Ok(LoadedLora {
        modules,
        skipped: Vec::new(),
        metadata: file.metadata(),
    })
}
