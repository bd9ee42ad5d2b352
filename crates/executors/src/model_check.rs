//! `loraflow models check`: what a base model on disk is, what it lacks, and
//! whether this build's native trainer can train it. Reads configs and
//! safetensors headers only, never whole weight files, so checking a 20 GB
//! checkpoint is instant.
//!
//! - A diffusers folder: `model_index.json` names the pipeline;
//!   `unet/config.json` (or `transformer/config.json`) the architecture;
//!   each component the pipeline lists must have its folder, config and
//!   safetensors weights (tokenizers their vocabulary).
//! - A single-file checkpoint (`.safetensors`): the family from its key
//!   names: SD1.x/SD2.x `model.diffusion_model.*` with a cross-attention
//!   width of 768/1024, SDXL `conditioner.embedders.1.*`, FLUX.1
//!   `double_blocks.*`.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use loraflow_core::catalogue::ModelFamily;
use serde::Serialize;

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// Why a path could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Nothing is there. Fix the path.
    #[error("{} does not exist; give a diffusers folder (with model_index.json) or a .safetensors checkpoint", .0.display())]
    NotFound(PathBuf),
    /// It could not be read (permissions, I/O).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// It is there, but not a base model this check knows.
    #[error("{} is not a base model: {reason}", path.display())]
    NotAModel { path: PathBuf, reason: String },
}

/// How the model is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A diffusers folder (`model_index.json`, one folder per component).
    Diffusers,
    /// One `.safetensors` file with every component's weights (LDM names).
    SingleFile,
}

/// What `loraflow models check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelReport {
    pub path: PathBuf,
    pub layout: Layout,
    pub family: ModelFamily,
    /// How the family was told (`unet/config.json cross_attention_dim 768`).
    pub evidence: String,
    /// Components that are missing or incomplete, each with what to add.
    pub missing: Vec<String>,
    /// Why this build's native trainer cannot train it; `None` when it can.
    pub native_unsupported: Option<String>,
    /// What else the native engine needs to use it (a single file's configs).
    pub notes: Vec<String>,
}

impl ModelReport {
    /// Can the native engine train it as it is?
    pub fn native_trainable(&self) -> bool {
        self.native_unsupported.is_none() && self.missing.is_empty()
    }
}

/// Check the model at `path` (a diffusers folder or a single-file checkpoint).
pub fn check_model(path: &Path) -> Result<ModelReport, CheckError> {
    if !path.exists() {
        return Err(CheckError::NotFound(path.to_path_buf()));
    }
    if path.is_dir() {
        check_folder(path)
    } else {
        check_file(path)
    }
}

fn not_a_model(path: &Path, reason: impl Into<String>) -> CheckError {
    CheckError::NotAModel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| not_a_model(path, format!("it is not valid JSON ({e})")))
}

/// What the native trainer implements (see `loraflow_trainer::pipeline`).
fn native_support(layout: Layout, family: ModelFamily) -> Option<String> {
    match (family, layout) {
        (ModelFamily::Sd15 | ModelFamily::Sdxl | ModelFamily::Flux, _)
        | (ModelFamily::Sd2, Layout::Diffusers) => None,
        (ModelFamily::Sd2, Layout::SingleFile) => Some(
            "the native trainer reads SD2.x as a diffusers folder only; convert the checkpoint \
             (diffusers' convert_original_stable_diffusion_to_diffusers.py) or train with kohya"
                .into(),
        ),
    }
}

// ------------------------------------------------------------ diffusers

fn check_folder(dir: &Path) -> Result<ModelReport, CheckError> {
    let index_path = dir.join("model_index.json");
    let index = if index_path.is_file() {
        Some(read_json(&index_path)?)
    } else {
        None
    };
    let class = index
        .as_ref()
        .and_then(|i| i["_class_name"].as_str())
        .unwrap_or_default()
        .to_owned();
    let unet = dir.join("unet").join("config.json");
    let transformer = dir.join("transformer").join("config.json");
    let (family, evidence) = if class.contains("Flux") || transformer.is_file() {
        let why = if class.is_empty() {
            "transformer/config.json".to_owned()
        } else {
            format!("model_index.json _class_name {class}")
        };
        (ModelFamily::Flux, why)
    } else if unet.is_file() {
        let config = read_json(&unet)?;
        let width = config["cross_attention_dim"].as_u64();
        let text_time = config["addition_embed_type"].as_str() == Some("text_time");
        if class.contains("XL") || text_time {
            (
                ModelFamily::Sdxl,
                "unet/config.json addition_embed_type text_time".to_owned(),
            )
        } else {
            match width {
                Some(1024) => (
                    ModelFamily::Sd2,
                    "unet/config.json cross_attention_dim 1024".to_owned(),
                ),
                Some(768) => (
                    ModelFamily::Sd15,
                    "unet/config.json cross_attention_dim 768".to_owned(),
                ),
                Some(w) => (
                    ModelFamily::Sd15,
                    format!(
                        "unet/config.json cross_attention_dim {w}: an SD1.x-shaped model of another \
                         size (like the demo model tiny-sd)"
                    ),
                ),
                None => {
                    return Err(not_a_model(
                        &unet,
                        "it has no cross_attention_dim: not a text-to-image UNet",
                    ));
                }
            }
        }
    } else if class.contains("XL") {
        (
            ModelFamily::Sdxl,
            format!("model_index.json _class_name {class}"),
        )
    } else if class.starts_with("StableDiffusion") {
        (
            ModelFamily::Sd15,
            format!("model_index.json _class_name {class}"),
        )
    } else if index.is_some() {
        return Err(not_a_model(
            dir,
            format!(
                "model_index.json names pipeline {class:?}, and there is no unet/ or transformer/ \
                 to tell the family from"
            ),
        ));
    } else {
        return Err(not_a_model(
            dir,
            "no model_index.json, unet/config.json or transformer/config.json: not a diffusers \
             folder (a single-file checkpoint is checked by its .safetensors path)",
        ));
    };

    let mut missing = Vec::new();
    if index.is_none() {
        missing.push(
            "model_index.json (the pipeline's component list; copy it from the model's \
             diffusers release)"
                .to_owned(),
        );
    }
    for component in components(index.as_ref(), family) {
        if let Some(problem) = component_problem(dir, &component) {
            missing.push(problem);
        }
    }
    Ok(ModelReport {
        path: dir.to_path_buf(),
        layout: Layout::Diffusers,
        family,
        evidence,
        missing,
        native_unsupported: native_support(Layout::Diffusers, family),
        notes: Vec::new(),
    })
}

/// The components a pipeline needs: those `model_index.json` lists with a
/// class (`[library, class]`, not `[null, null]`), or the family's usual set.
fn components(index: Option<&serde_json::Value>, family: ModelFamily) -> Vec<String> {
    const OPTIONAL: [&str; 3] = ["safety_checker", "feature_extractor", "image_encoder"];
    if let Some(obj) = index.and_then(|i| i.as_object()) {
        let listed: Vec<String> = obj
            .iter()
            .filter(|(k, v)| {
                !k.starts_with('_')
                    && !OPTIONAL.contains(&k.as_str())
                    && v.as_array().is_some_and(|a| a.iter().all(|x| !x.is_null()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !listed.is_empty() {
            return listed;
        }
    }
    let names: &[&str] = match family {
        ModelFamily::Sd15 | ModelFamily::Sd2 => {
            &["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
        }
        ModelFamily::Sdxl => &[
            "unet",
            "vae",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "scheduler",
        ],
        ModelFamily::Flux => &[
            "transformer",
            "vae",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "scheduler",
        ],
    };
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// What is wrong with one component folder, if anything.
fn component_problem(dir: &Path, name: &str) -> Option<String> {
    let folder = dir.join(name);
    if !folder.is_dir() {
        return Some(format!("no {name}/ folder"));
    }
    let files: Vec<String> = std::fs::read_dir(&folder)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let has = |f: &str| files.iter().any(|n| n == f);
    if name.starts_with("tokenizer") {
        let ok = (has("vocab.json") && has("merges.txt"))
            || has("tokenizer.json")
            || has("spiece.model");
        return (!ok).then(|| {
            format!("{name}/ has no vocabulary (vocab.json and merges.txt, or tokenizer.json)")
        });
    }
    if name == "scheduler" {
        return (!has("scheduler_config.json"))
            .then(|| format!("{name}/ has no scheduler_config.json"));
    }
    if !has("config.json") {
        return Some(format!("{name}/ has no config.json"));
    }
    let weights = files
        .iter()
        .any(|f| f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"));
    if !weights {
        let bin = files.iter().any(|f| f.ends_with(".bin"));
        return Some(if bin {
            format!("{name}/ has PyTorch .bin weights only; convert them to .safetensors")
        } else {
            format!("{name}/ has no .safetensors weights")
        });
    }
    None
}

// ------------------------------------------------------------ single file

/// The tensor names and shapes of a safetensors file, from its header alone.
fn read_header(path: &Path) -> Result<safetensors::tensor::Metadata, CheckError> {
    let read_err = |source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut n = [0u8; 8];
    if file.read_exact(&mut n).is_err() {
        return Err(not_a_model(
            path,
            format!("{len} bytes is too short for a safetensors file"),
        ));
    }
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n + 8 > len {
        return Err(not_a_model(
            path,
            "it is not a safetensors file (its first 8 bytes are not a header length)",
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(read_err)?;
    let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|e| not_a_model(path, format!("its safetensors header is invalid ({e})")))?;
    let expected = 8 + n + metadata.data_len() as u64;
    if expected != len {
        return Err(not_a_model(
            path,
            format!(
                "the file is {len} bytes but its header describes {expected}: truncated or corrupt"
            ),
        ));
    }
    Ok(metadata)
}

fn check_file(path: &Path) -> Result<ModelReport, CheckError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.ends_with(".ckpt") || name.ends_with(".pt") || name.ends_with(".bin") {
        return Err(not_a_model(
            path,
            "a pickled PyTorch file; only .safetensors checkpoints are read (convert it, or use \
             the model's .safetensors release)",
        ));
    }
    let metadata = read_header(path)?;
    let tensors = metadata.tensors();
    let names: HashSet<&str> = tensors.keys().map(String::as_str).collect();
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    let contains = |part: &str| names.iter().any(|n| n.contains(part));

    let (family, evidence, mut missing) = if contains("double_blocks.") {
        (
            ModelFamily::Flux,
            "double_blocks.* keys (a FLUX.1 transformer)".to_owned(),
            vec![
                "the VAE (ae.safetensors) is not in this file: put it beside it".to_owned(),
                "the text encoders (clip_l.safetensors, t5xxl) are not in this file: put them beside it"
                    .to_owned(),
            ],
        )
    } else if has("conditioner.embedders.1") {
        let mut missing = Vec::new();
        if !has("conditioner.embedders.0") {
            missing.push("no CLIP-L text encoder (conditioner.embedders.0.*)".to_owned());
        }
        (
            ModelFamily::Sdxl,
            "conditioner.embedders.1.* keys (SDXL's second text encoder)".to_owned(),
            missing,
        )
    } else if has("model.diffusion_model.") {
        let width = tensors
            .iter()
            .filter(|(n, _)| {
                n.starts_with("model.diffusion_model.") && n.ends_with("attn2.to_k.weight")
            })
            .filter_map(|(_, info)| info.shape.get(1).copied())
            .next();
        let mut missing = Vec::new();
        let family = match width {
            Some(1024) => ModelFamily::Sd2,
            Some(768) => ModelFamily::Sd15,
            Some(w) => {
                return Err(not_a_model(
                    path,
                    format!(
                        "a UNet with cross-attention width {w}, neither SD1.x (768) nor SD2.x (1024)"
                    ),
                ));
            }
            None if has("cond_stage_model.model.") => ModelFamily::Sd2,
            None => ModelFamily::Sd15,
        };
        let text_encoder = match family {
            ModelFamily::Sd2 => "cond_stage_model.model.",
            _ => "cond_stage_model.transformer.",
        };
        if !has(text_encoder) {
            missing.push(format!("no text encoder ({text_encoder}*)"));
        }
        let evidence = match width {
            Some(w) => format!("model.diffusion_model.* keys with cross-attention width {w}"),
            None => "model.diffusion_model.* keys".to_owned(),
        };
        (family, evidence, missing)
    } else if contains("lora_unet_") || contains(".lora_down.") || contains("lora_A") {
        return Err(not_a_model(
            path,
            "it holds LoRA weights (lora_* keys); a base model is the checkpoint a LoRA is trained on",
        ));
    } else {
        let mut sample: Vec<&str> = names.iter().copied().collect();
        sample.sort_unstable();
        sample.truncate(3);
        return Err(not_a_model(
            path,
            format!(
                "its {} tensors ({}...) match no known family (SD1.x/SD2.x model.diffusion_model.*, \
                 SDXL conditioner.embedders.*, FLUX.1 double_blocks.*)",
                names.len(),
                sample.join(", ")
            ),
        ));
    };
    if family != ModelFamily::Flux && !has("first_stage_model.") {
        missing.push(
            "no VAE (first_stage_model.*); use a checkpoint with its VAE baked in".to_owned(),
        );
    }
    let native_unsupported = native_support(Layout::SingleFile, family);
    let mut notes = Vec::new();
    if family == ModelFamily::Flux {
        notes.push(
            "a FLUX.1 transformer file trains and samples natively with config_dir, a diffusers \
             FLUX.1 folder whose text encoders (text_encoder/, text_encoder_2/), VAE (vae/), \
             configs, tokenizers and scheduler go with it; its transformer/ weights are not \
             read ([models.<id>] path = \"flux1-dev.safetensors\", config_dir = \"...\")"
                .to_owned(),
        );
    } else if native_unsupported.is_none() {
        notes.push(
            "a single file carries no configs or tokenizer: the native engine needs config_dir, \
             a diffusers folder of the same architecture ([models.<id>] path = \"...\", \
             config_dir = \"...\")"
                .to_owned(),
        );
    }
    Ok(ModelReport {
        path: path.to_path_buf(),
        layout: Layout::SingleFile,
        family,
        evidence,
        missing,
        native_unsupported,
        notes,
    })
}
