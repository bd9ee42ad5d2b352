//! Flux LoRA files: diffusers/PEFT (what ai-toolkit and diffusers' Flux scripts write) and
//! kohya's format as sd-scripts' `networks/lora_flux.py` writes it.
//!
//! PEFT files key the transformer's adapters `transformer.<diffusers path>.lora_A.weight` /
//! `.lora_B.weight`, with the adapter config under `transformer.` in the header.
//!
//! kohya files name modules after BFL's original module tree (`lora_unet_double_blocks_0_img_attn_qkv`,
//! `lora_unet_single_blocks_3_linear1`, ...), in which the image and text q/k/v projections of a
//! double block are one fused linear and a single block's q/k/v and MLP input projection are
//! one (`linear1`). A fused module's adapter is written as sd-scripts' `split_qkv` mode writes
//! it: the parts' `lora_down` concatenated (`[Σ rᵢ, in]`) and `lora_up` block-diagonal
//! (`[Σ outᵢ, Σ rᵢ]`), so that its product is exactly the parts' deltas stacked. Readers
//! (diffusers' `_convert_kohya_flux_lora_to_diffusers`, ComfyUI, sd-scripts without
//! `split_qkv`) scale a fused module by `alpha / Σ rᵢ`, so the written alpha is the parts'
//! common scale times `Σ rᵢ`; parts of different scales have theirs folded into their `lora_up`
//! block (alpha = `Σ rᵢ`). The final layer's modules (`final_layer_linear`, and
//! `final_layer_adaLN_modulation_1`, diffusers' `norm_out.linear`, whose `lora_up` halves are
//! swapped since BFL orders its output shift-then-scale) are written with the scale folded
//! into `lora_up` and alpha = rank, since diffusers' converter ignores their alpha.
//!
//! On loading, a fused adapter whose `lora_up` is block-diagonal with equal blocks is split
//! back into per-projection adapters of rank `R / n`; any other fused adapter (a dense one
//! trained fused, or parts of different ranks) gives every part the whole `lora_down` and its
//! rows of `lora_up` (rank `R`), which is the same delta. So files round-trip exactly in effect;
//! factors round-trip exactly when every fused part has the same rank and all parts of a fused
//! module are adapted (an unadapted part is written as zero rows of `lora_up` and comes back as
//! a zero adapter).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::Device;

use super::FluxTransformer2DModel;
use crate::clip::ClipTextModel;
use crate::error::{Error, Result};
use crate::lora::kohya::{
    KohyaMetadata, LoadedLora, Part, addnet_hash, addnet_legacy_hash, load_kohya_parts,
};
use crate::lora::{LayerMut, LoraLayers, load_peft_parts, save_peft_parts};
use crate::t5::T5EncoderModel;
use crate::tensor_file::{self, HostTensor, SaveDtype, TensorFile};

/// diffusers' component prefix of the transformer's adapters in PEFT files.
pub const PEFT_TRANSFORMER: &str = "transformer";
/// Key prefix of the transformer's modules in kohya files.
pub const KOHYA_PREFIX: &str = "lora_unet_";
/// Key prefix of CLIP-L's modules in kohya Flux files (sd-scripts' `lora_te1`, written when
/// the text encoder is trained): `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`.
pub const TE1_PREFIX: &str = "lora_te1_";
/// Key prefix of T5's modules in kohya Flux files (sd-scripts' `lora_te3`, ComfyUI's name
/// for T5): `lora_te3_encoder_block_0_layer_0_SelfAttention_q`.
pub const TE3_PREFIX: &str = "lora_te3_";
/// diffusers' component name of CLIP in PEFT files (`text_encoder.text_model...`), and the
/// prefix of CLIP's modules in a [`LoadedLora`] report.
pub const PEFT_TEXT_ENCODER: &str = "text_encoder";
/// The prefix of T5's modules in a [`LoadedLora`] report (diffusers' `text_encoder_2`).
pub const T5_COMPONENT: &str = "text_encoder_2";
/// sd-scripts' `ss_base_model_version` of FLUX.1.
pub const BASE_MODEL_VERSION: &str = "flux1";
/// The `modelspec.architecture` sd-scripts writes for FLUX.1 [dev] LoRAs.
pub const ARCHITECTURE_DEV: &str = "flux-1-dev/lora";
/// The `modelspec.architecture` sd-scripts writes for FLUX.1 [schnell] LoRAs.
pub const ARCHITECTURE_SCHNELL: &str = "flux-1-schnell/lora";

/// The layers a Flux LoRA adapts by default, as sd-scripts' `networks/lora_flux.py` chooses
/// them: every linear of the double- and single-stream blocks (image and text q/k/v and
/// output projections, both feed-forwards; a single block's q/k/v, `proj_mlp` and `proj_out`,
/// BFL's `linear1` and `linear2`) except the modulation layers, which sd-scripts leaves out
/// by default.
pub const FLUX_TARGETS: &[&str] = &[
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "single_transformer_blocks.*.proj_mlp",
    "single_transformer_blocks.*.proj_out",
];

const FINAL_ADALN: &str = "final_layer_adaLN_modulation_1";

/// Where a diffusers module lives in BFL's tree: the module name (without `lora_unet_`), the
/// part index within a fused module, and the number of parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BflSlot {
    /// BFL module name with `_` separators, e.g. `double_blocks_0_img_attn_qkv`.
    pub module: String,
    /// Index of this projection within the fused module (0 when not fused).
    pub part: usize,
    /// Number of projections of the fused module (1 when not fused).
    pub parts: usize,
}

/// The BFL slot of a diffusers Flux transformer module path, or `None` for a path BFL's tree
/// has no module for.
pub fn bfl_slot(path: &str) -> Option<BflSlot> {
    let one = |m: String| {
        Some(BflSlot {
            module: m,
            part: 0,
            parts: 1,
        })
    };
    let fused = |m: String, part: usize, parts: usize| {
        Some(BflSlot {
            module: m,
            part,
            parts,
        })
    };
    if let Some(rest) = path.strip_prefix("transformer_blocks.") {
        let (i, sub) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let b = format!("double_blocks_{i}");
        return match sub {
            "attn.to_q" => fused(format!("{b}_img_attn_qkv"), 0, 3),
            "attn.to_k" => fused(format!("{b}_img_attn_qkv"), 1, 3),
            "attn.to_v" => fused(format!("{b}_img_attn_qkv"), 2, 3),
            "attn.to_out.0" => one(format!("{b}_img_attn_proj")),
            "attn.add_q_proj" => fused(format!("{b}_txt_attn_qkv"), 0, 3),
            "attn.add_k_proj" => fused(format!("{b}_txt_attn_qkv"), 1, 3),
            "attn.add_v_proj" => fused(format!("{b}_txt_attn_qkv"), 2, 3),
            "attn.to_add_out" => one(format!("{b}_txt_attn_proj")),
            "ff.net.0.proj" => one(format!("{b}_img_mlp_0")),
            "ff.net.2" => one(format!("{b}_img_mlp_2")),
            "ff_context.net.0.proj" => one(format!("{b}_txt_mlp_0")),
            "ff_context.net.2" => one(format!("{b}_txt_mlp_2")),
            "norm1.linear" => one(format!("{b}_img_mod_lin")),
            "norm1_context.linear" => one(format!("{b}_txt_mod_lin")),
            _ => None,
        };
    }
    if let Some(rest) = path.strip_prefix("single_transformer_blocks.") {
        let (i, sub) = rest.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let b = format!("single_blocks_{i}");
        return match sub {
            "attn.to_q" => fused(format!("{b}_linear1"), 0, 4),
            "attn.to_k" => fused(format!("{b}_linear1"), 1, 4),
            "attn.to_v" => fused(format!("{b}_linear1"), 2, 4),
            "proj_mlp" => fused(format!("{b}_linear1"), 3, 4),
            "proj_out" => one(format!("{b}_linear2")),
            "norm.linear" => one(format!("{b}_modulation_lin")),
            _ => None,
        };
    }
    let m = match path {
        "x_embedder" => "img_in",
        "context_embedder" => "txt_in",
        "time_text_embed.timestep_embedder.linear_1" => "time_in_in_layer",
        "time_text_embed.timestep_embedder.linear_2" => "time_in_out_layer",
        "time_text_embed.guidance_embedder.linear_1" => "guidance_in_in_layer",
        "time_text_embed.guidance_embedder.linear_2" => "guidance_in_out_layer",
        "time_text_embed.text_embedder.linear_1" => "vector_in_in_layer",
        "time_text_embed.text_embedder.linear_2" => "vector_in_out_layer",
        "norm_out.linear" => FINAL_ADALN,
        "proj_out" => "final_layer_linear",
        _ => return None,
    };
    one(m.to_string())
}

/// Swaps the two halves of the rows of `t` (BFL's shift/scale order ↔ diffusers' scale/shift).
fn swap_halves(t: &HostTensor) -> HostTensor {
    let rows = t.shape[0];
    let cols: usize = t.shape[1..].iter().product();
    let half = rows / 2 * cols;
    let mut data = Vec::with_capacity(t.data.len());
    data.extend_from_slice(&t.data[half..]);
    data.extend_from_slice(&t.data[..half]);
    HostTensor::new(t.shape.clone(), data)
}

fn scaled(mut t: HostTensor, s: f32) -> HostTensor {
    t.data.iter_mut().for_each(|v| *v *= s);
    t
}

/// One adapted projection of a fused module, as collected for writing.
struct PartFactors {
    part: usize,
    down: HostTensor,
    up: HostTensor,
    alpha: f64,
}

/// The transformer's adapters as kohya tensors under BFL's module names, in model order.
pub fn flux_kohya_tensors(model: &mut FluxTransformer2DModel) -> Result<Vec<(String, HostTensor)>> {
    // module → (parts, output widths of every part, adapted parts)
    let mut fused: BTreeMap<String, (usize, Vec<usize>, Vec<PartFactors>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (path, layer) in model.layers() {
        let Some(slot) = bfl_slot(&path) else {
            if layer.has_adapter() {
                return Err(Error::invalid(
                    "lora",
                    &path,
                    "has no module in BFL's Flux tree, so kohya files cannot hold its adapter",
                ));
            }
            continue;
        };
        let out_dim = match &layer {
            LayerMut::Linear(l) => l.d_output(),
            LayerMut::Conv(_) => 0,
        };
        if slot.parts > 1 {
            let entry = fused
                .entry(slot.module.clone())
                .or_insert_with(|| (slot.parts, vec![0; slot.parts], Vec::new()));
            entry.1[slot.part] = out_dim;
            if let Some((down, up, alpha)) = layer.factors() {
                entry.2.push(PartFactors {
                    part: slot.part,
                    down,
                    up,
                    alpha,
                });
                if !order.contains(&slot.module) {
                    order.push(slot.module.clone());
                }
            }
            continue;
        }
        let Some((down, up, alpha)) = layer.factors() else {
            continue;
        };
        let name = format!("{KOHYA_PREFIX}{}", slot.module);
        if slot.module.starts_with("final_layer_") {
            let rank = down.shape[0];
            let up = scaled(up, (alpha / rank as f64) as f32);
            let up = if slot.module == FINAL_ADALN {
                swap_halves(&up)
            } else {
                up
            };
            out.push((format!("{name}.lora_down.weight"), down));
            out.push((format!("{name}.lora_up.weight"), up));
            out.push((format!("{name}.alpha"), HostTensor::scalar(rank as f32)));
        } else {
            out.push((format!("{name}.lora_down.weight"), down));
            out.push((format!("{name}.lora_up.weight"), up));
            out.push((format!("{name}.alpha"), HostTensor::scalar(alpha as f32)));
        }
    }
    for module in order {
        let (_, widths, parts) = fused.remove(&module).expect("collected");
        out.extend(fuse(&module, &widths, parts));
    }
    Ok(out)
}

/// sd-scripts' fused form of the adapted parts of one module: `lora_down` concatenated,
/// `lora_up` block-diagonal, alpha = the common scale × total rank.
fn fuse(module: &str, widths: &[usize], mut parts: Vec<PartFactors>) -> Vec<(String, HostTensor)> {
    // Blocks go in BFL's order (q, k, v, mlp), whatever the model's layer order.
    parts.sort_by_key(|p| p.part);
    let d_in = parts[0].down.shape[1];
    let total_rank: usize = parts.iter().map(|p| p.down.shape[0]).sum();
    let scales: Vec<f64> = parts
        .iter()
        .map(|p| p.alpha / p.down.shape[0] as f64)
        .collect();
    let common = scales.iter().all(|s| *s == scales[0]);
    let out_total: usize = widths.iter().sum();
    let mut down = Vec::with_capacity(total_rank * d_in);
    let mut up = vec![0f32; out_total * total_rank];
    let mut col = 0;
    for (p, scale) in parts.iter().zip(&scales) {
        let r = p.down.shape[0];
        down.extend_from_slice(&p.down.data);
        let row0: usize = widths[..p.part].iter().sum();
        let fold = if common { 1.0 } else { *scale as f32 };
        for row in 0..widths[p.part] {
            for j in 0..r {
                up[(row0 + row) * total_rank + col + j] = p.up.data[row * r + j] * fold;
            }
        }
        col += r;
    }
    let alpha = if common {
        scales[0] * total_rank as f64
    } else {
        total_rank as f64
    };
    let name = format!("{KOHYA_PREFIX}{module}");
    vec![
        (
            format!("{name}.lora_down.weight"),
            HostTensor::new(vec![total_rank, d_in], down),
        ),
        (
            format!("{name}.lora_up.weight"),
            HostTensor::new(vec![out_total, total_rank], up),
        ),
        (format!("{name}.alpha"), HostTensor::scalar(alpha as f32)),
    ]
}

/// `metadata` with FLUX.1's base-model version and architecture (`dev` when the model has
/// guidance embeddings, `schnell` otherwise).
pub fn flux_metadata(metadata: &KohyaMetadata, guidance: bool) -> KohyaMetadata {
    let mut m = metadata.clone();
    m.base_model_version = BASE_MODEL_VERSION.into();
    m.v2 = false;
    let arch = if guidance {
        ARCHITECTURE_DEV
    } else {
        ARCHITECTURE_SCHNELL
    };
    m.extra.insert("modelspec.architecture".into(), arch.into());
    m
}

/// Writes the transformer's adapters as a kohya Flux LoRA file, with sd-scripts' BFL key names,
/// fused q/k/v (and `linear1`) modules and `ss_*` header.
pub fn save_flux_kohya(
    model: &mut FluxTransformer2DModel,
    path: &Path,
    metadata: &KohyaMetadata,
    dtype: SaveDtype,
) -> Result<()> {
    let tensors = flux_kohya_tensors(model)?;
    if tensors.is_empty() {
        return Err(Error::InvalidLora {
            path: path.to_path_buf(),
            reason: "the model has no adapters to save".into(),
        });
    }
    let mut map = flux_metadata(metadata, model.has_guidance_embeds()).to_map();
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

#[derive(Default)]
struct Entry {
    down: Option<HostTensor>,
    up: Option<HostTensor>,
    alpha: Option<f64>,
}

/// Splits a fused adapter into its parts: `(down, up)` per part, both un-scaled.
fn split(down: &HostTensor, up: &HostTensor, widths: &[usize]) -> Vec<(HostTensor, HostTensor)> {
    let n = widths.len();
    let rank = down.shape[0];
    let d_in = down.shape[1];
    let block_sparse = rank.is_multiple_of(n) && {
        let r = rank / n;
        let mut row0 = 0;
        let mut ok = true;
        for (j, w) in widths.iter().enumerate() {
            for row in row0..row0 + w {
                for c in 0..rank {
                    if c / r != j && up.data[row * rank + c] != 0.0 {
                        ok = false;
                    }
                }
            }
            row0 += w;
        }
        ok
    };
    let mut out = Vec::with_capacity(n);
    let mut row0 = 0;
    for (j, w) in widths.iter().enumerate() {
        let (c0, r) = if block_sparse {
            (j * (rank / n), rank / n)
        } else {
            (0, rank)
        };
        let d = HostTensor::new(
            vec![r, d_in],
            down.data[c0 * d_in..(c0 + r) * d_in].to_vec(),
        );
        let mut u = Vec::with_capacity(w * r);
        for row in row0..row0 + w {
            u.extend_from_slice(&up.data[row * rank + c0..row * rank + c0 + r]);
        }
        out.push((d, HostTensor::new(vec![*w, r], u)));
        row0 += w;
    }
    out
}

/// Installs the adapters of a kohya Flux LoRA file (BFL module names, fused q/k/v) into the
/// transformer, scaled by `strength`. Text-encoder keys (`lora_te1_` for CLIP, `lora_te3_` for
/// T5; [`load_flux_kohya_text`] reads them) are skipped and listed; another `lora_te*` prefix,
/// a key that is not a plain LoRA tensor, a module BFL's tree or this model lacks, or factors
/// that do not fit are errors naming the key. Modules come back as diffusers paths, in model
/// order. A missing or zero `.alpha` means `alpha = rank`.
pub fn load_flux_kohya(
    model: &mut FluxTransformer2DModel,
    path: &Path,
    strength: f64,
    device: &Device,
) -> Result<LoadedLora> {
    let file = TensorFile::open(path)?;
    let bad = |reason: String| Error::InvalidLora {
        path: path.to_path_buf(),
        reason,
    };
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut skipped = Vec::new();
    for key in file.names() {
        if key.starts_with(TE1_PREFIX) || key.starts_with(TE3_PREFIX) {
            skipped.push(key);
            continue;
        }
        let Some(rest) = key.strip_prefix(KOHYA_PREFIX) else {
            return Err(bad(format!(
                "key `{key}` is not a kohya Flux key (expected `{KOHYA_PREFIX}` for the \
                 transformer, `{TE1_PREFIX}` for CLIP-L or `{TE3_PREFIX}` for T5)"
            )));
        };
        let (module, kind) = rest
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

    // Group the model's layers by BFL module, keeping model order.
    let mut layers: Vec<(String, BflSlot, LayerMut<'_>)> = model
        .layers()
        .into_iter()
        .filter_map(|(p, l)| bfl_slot(&p).map(|s| (p, s, l)))
        .collect();
    let mut widths: HashMap<String, Vec<usize>> = HashMap::new();
    for (_, slot, layer) in &layers {
        if let LayerMut::Linear(l) = layer {
            widths
                .entry(slot.module.clone())
                .or_insert_with(|| vec![0; slot.parts])[slot.part] = l.d_output();
        }
    }
    let mut split_cache: HashMap<String, (Vec<(HostTensor, HostTensor)>, f64)> = HashMap::new();
    let mut modules = Vec::new();
    for (module_path, slot, layer) in layers.iter_mut() {
        let name = format!("{KOHYA_PREFIX}{}", slot.module);
        if slot.parts == 1 {
            let Some(entry) = entries.remove(&slot.module) else {
                continue;
            };
            let (Some(down), Some(mut up)) = (entry.down, entry.up) else {
                return Err(bad(format!(
                    "`{name}` needs both lora_down.weight and lora_up.weight"
                )));
            };
            let rank = down.shape.first().copied().unwrap_or(0);
            let alpha = match entry.alpha {
                Some(a) if a != 0.0 => a,
                _ => rank as f64,
            };
            if slot.module == FINAL_ADALN {
                if up.shape.first().is_none_or(|r| !r.is_multiple_of(2)) {
                    return Err(bad(format!(
                        "`{name}.lora_up.weight` has shape {:?}, expected an even number of rows",
                        up.shape
                    )));
                }
                up = swap_halves(&up);
            }
            layer.set_factors(&name, down, up, alpha * strength, device)?;
            modules.push(module_path.clone());
            continue;
        }
        if !split_cache.contains_key(&slot.module) {
            let Some(entry) = entries.remove(&slot.module) else {
                continue;
            };
            let (Some(down), Some(up)) = (entry.down, entry.up) else {
                return Err(bad(format!(
                    "`{name}` needs both lora_down.weight and lora_up.weight"
                )));
            };
            let w = &widths[&slot.module];
            let total: usize = w.iter().sum();
            let rank = down.shape.first().copied().unwrap_or(0);
            if down.shape.len() != 2 || up.shape != [total, rank] {
                return Err(bad(format!(
                    "`{name}` has lora_down {:?} and lora_up {:?}; lora_up must be [{total}, {rank}] (the fused widths {w:?})",
                    down.shape, up.shape
                )));
            }
            let alpha = match entry.alpha {
                Some(a) if a != 0.0 => a,
                _ => rank as f64,
            };
            // The fused scale alpha / R, carried by each part as alpha' / r.
            split_cache.insert(
                slot.module.clone(),
                (split(&down, &up, w), alpha / rank as f64),
            );
        }
        let (parts, scale) = &split_cache[&slot.module];
        let (down, up) = parts[slot.part].clone();
        let r = down.shape[0] as f64;
        layer.set_factors(
            &format!("{name}[{}]", slot.part),
            down,
            up,
            scale * r * strength,
            device,
        )?;
        modules.push(module_path.clone());
    }
    if let Some(name) = entries.keys().next() {
        return Err(bad(format!(
            "`{KOHYA_PREFIX}{name}` names no layer of this model"
        )));
    }
    Ok(LoadedLora {
        modules,
        skipped,
        metadata: file.metadata(),
    })
}

/// Installs the text-encoder adapters of a kohya Flux LoRA file, scaled by `strength`:
/// `lora_te1_*` keys into CLIP (whose pooled output conditions the transformer) and
/// `lora_te3_*` keys into T5, under the module names sd-scripts' `lora_flux.py` gives them
/// (transformers' paths with `_` for `.`). The transformer's keys are skipped and listed
/// ([`load_flux_kohya`] reads them). A text-encoder key that is not a plain LoRA tensor, names
/// no layer of the encoder, or has factors that do not fit is an error naming it. Modules come
/// back as `text_encoder.<path>` (CLIP) and `text_encoder_2.<path>` (T5), in model order.
pub fn load_flux_kohya_text(
    clip: &mut ClipTextModel,
    t5: &mut T5EncoderModel,
    path: &Path,
    strength: f64,
    device: &Device,
) -> Result<LoadedLora> {
    let mut parts: Vec<Part<'_>> = vec![(TE1_PREFIX, clip), (TE3_PREFIX, t5)];
    let mut loaded = load_kohya_parts(&mut parts, path, strength, device)?;
    for m in &mut loaded.modules {
        if let Some(rest) = m.strip_prefix(TE1_PREFIX) {
            *m = format!("{PEFT_TEXT_ENCODER}.{rest}");
        } else if let Some(rest) = m.strip_prefix(TE3_PREFIX) {
            *m = format!("{T5_COMPONENT}.{rest}");
        }
    }
    Ok(loaded)
}

/// Writes the transformer's adapters as a diffusers/PEFT file, as
/// `FluxPipeline.save_lora_weights(transformer_lora_layers=...)` (and ai-toolkit) write it:
/// `transformer.<diffusers path>.lora_A.weight`/`.lora_B.weight`, the scale folded into
/// `lora_B`, the adapter config under `transformer.` in the header.
pub fn save_flux_peft(
    model: &mut FluxTransformer2DModel,
    path: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    save_peft_parts(&mut [(PEFT_TRANSFORMER, model)], path, dtype)
}

/// Installs the adapters of a Flux PEFT file (`transformer.` keys, or bare diffusers paths);
/// every module gets `alpha` when given, otherwise its rank (PEFT's default). Text-encoder keys
/// are skipped and listed.
pub fn load_flux_peft(
    model: &mut FluxTransformer2DModel,
    path: &Path,
    alpha: Option<f64>,
    device: &Device,
) -> Result<LoadedLora> {
    let mut loaded = load_peft_parts(&mut [(PEFT_TRANSFORMER, model)], path, alpha, device)?;
    // Modules of parts other than `unet` come back prefixed; Flux has only the transformer.
    for m in &mut loaded.modules {
        if let Some(rest) = m.strip_prefix("transformer.") {
            *m = rest.to_string();
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfl_names_follow_sd_scripts() {
        let s = |p: &str| bfl_slot(p).unwrap();
        assert_eq!(
            s("transformer_blocks.3.attn.to_k").module,
            "double_blocks_3_img_attn_qkv"
        );
        assert_eq!(s("transformer_blocks.3.attn.to_k").part, 1);
        assert_eq!(s("transformer_blocks.0.attn.add_v_proj").part, 2);
        assert_eq!(
            s("transformer_blocks.0.ff_context.net.2").module,
            "double_blocks_0_txt_mlp_2"
        );
        assert_eq!(
            s("single_transformer_blocks.7.proj_mlp").module,
            "single_blocks_7_linear1"
        );
        assert_eq!(s("single_transformer_blocks.7.proj_mlp").parts, 4);
        assert_eq!(
            s("single_transformer_blocks.7.proj_out").module,
            "single_blocks_7_linear2"
        );
        assert_eq!(s("norm_out.linear").module, FINAL_ADALN);
        assert_eq!(s("proj_out").module, "final_layer_linear");
        assert!(bfl_slot("transformer_blocks.0.attn.norm_q").is_none());
    }

    #[test]
    fn block_diagonal_splits_back_to_parts_and_dense_keeps_the_product() {
        let down = HostTensor::new(vec![4, 2], (0..8).map(|v| v as f32).collect());
        // widths [1, 2], rank 2 per part, block-diagonal.
        let up = HostTensor::new(
            vec![3, 4],
            vec![1., 2., 0., 0., 0., 0., 3., 4., 0., 0., 5., 6.],
        );
        let parts = split(&down, &up, &[1, 2]);
        assert_eq!(parts[0].0.shape, vec![2, 2]);
        assert_eq!(parts[1].1.data, vec![3., 4., 5., 6.]);
        let dense = HostTensor::new(vec![3, 4], vec![1.; 12]);
        let parts = split(&down, &dense, &[1, 2]);
        assert_eq!(parts[1].0.shape, vec![4, 2]);
        assert_eq!(parts[1].1.shape, vec![2, 4]);
    }
}
