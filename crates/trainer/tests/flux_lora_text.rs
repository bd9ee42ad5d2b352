//! Text-encoder adapters in Flux LoRA files: kohya's `lora_te1_*` (CLIP-L) and `lora_te3_*`
//! (T5) keys, as sd-scripts' `networks/lora_flux.py` writes them when the text encoder is
//! trained, and PEFT's `text_encoder.*` keys, applied by `FluxModel::with_lora` change the
//! prompt encoding exactly as merging each delta `strength · alpha/r · up·down` into the
//! encoder's weights does. Unknown text-encoder keys are refused by name.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use common::{assert_finite, fixture, max_abs, max_abs_diff};
use loraflow_trainer::Error;
use loraflow_trainer::flux::FluxModel;
use loraflow_trainer::flux::lora::{TE1_PREFIX, TE3_PREFIX};
use loraflow_trainer::lora::{LayerMut, LoraLayers};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::tensor_file::{HostTensor, SaveDtype, TensorFile, write};
use loraflow_trainer::weights::torch_tensors;

const RANK: usize = 2;
const ALPHA: f32 = 4.0;
const STRENGTH: f64 = 0.75;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-flux-te-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Random factors for every adaptable layer of `model`: module path → (down `[r, in]`, up
/// `[out, r]`).
fn factors(model: &mut dyn LoraLayers, seed: u64) -> Vec<(String, HostTensor, HostTensor)> {
    let mut rng = SeededRng::new(seed, Stream::Noise);
    let mut out = Vec::new();
    for (path, layer) in model.layers() {
        let LayerMut::Linear(l) = layer else {
            continue;
        };
        let (d_in, d_out) = (l.d_input(), l.d_output());
        let down = HostTensor::new(vec![RANK, d_in], rng.normal(RANK * d_in));
        let up = HostTensor::new(
            vec![d_out, RANK],
            rng.normal(d_out * RANK).iter().map(|v| v * 0.3).collect(),
        );
        out.push((path, down, up));
    }
    assert!(out.len() >= 6, "{} layers", out.len());
    out
}

/// The encoder's weights (transformers names) with `scale · up·down` added to each adapted
/// layer's weight.
fn merged(
    base: Vec<(String, HostTensor)>,
    adapters: &[(String, HostTensor, HostTensor)],
    scale: f32,
) -> Vec<(String, HostTensor)> {
    let deltas: HashMap<String, &(String, HostTensor, HostTensor)> = adapters
        .iter()
        .map(|a| (format!("{}.weight", a.0), a))
        .collect();
    let mut hit = 0;
    let out = base
        .into_iter()
        .map(|(name, mut w)| {
            if let Some((_, down, up)) = deltas.get(&name) {
                let (rows, cols) = (w.shape[0], w.shape[1]);
                for i in 0..rows {
                    for j in 0..cols {
                        let d: f32 = (0..RANK)
                            .map(|k| up.data[i * RANK + k] * down.data[k * cols + j])
                            .sum();
                        w.data[i * cols + j] += scale * d;
                    }
                }
                hit += 1;
            }
            (name, w)
        })
        .collect();
    assert_eq!(hit, adapters.len(), "every adapted layer has a weight");
    out
}

/// kohya tensors of `adapters` under `prefix` (the module path with `_` for `.`).
fn kohya_tensors(
    prefix: &str,
    adapters: &[(String, HostTensor, HostTensor)],
) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    for (path, down, up) in adapters {
        let name = format!("{prefix}{}", path.replace('.', "_"));
        out.push((format!("{name}.lora_down.weight"), down.clone()));
        out.push((format!("{name}.lora_up.weight"), up.clone()));
        out.push((format!("{name}.alpha"), HostTensor::scalar(ALPHA)));
    }
    out
}

/// Every tensor of a fixture file (the transformer's adapters).
fn all_tensors(rel: &str) -> Vec<(String, HostTensor)> {
    let file = TensorFile::open(fixture(rel)).unwrap();
    file.names()
        .into_iter()
        .map(|n| {
            let t = file.read(&n).unwrap();
            (n, t)
        })
        .collect()
}

fn save(path: &Path, tensors: &[(String, HostTensor)]) {
    write(path, tensors, HashMap::new(), SaveDtype::F32).unwrap();
}

/// The prompt's T5 states and CLIP pooled output.
fn encode(model: &FluxModel, device: &Device) -> (HostTensor, HostTensor) {
    let (states, pooled) = model.encode_prompt("a red disc on white", device).unwrap();
    let (states, pooled) = (
        HostTensor::from_tensor(states),
        HostTensor::from_tensor(pooled),
    );
    assert_finite(&states, "T5 states");
    assert_finite(&pooled, "pooled");
    (states, pooled)
}

fn relative(a: &HostTensor, b: &HostTensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b).max(1e-12)
}

/// `model` with CLIP and T5 replaced by the given weights.
fn with_encoders(
    base: &FluxModel,
    clip: &[(String, HostTensor)],
    t5: &[(String, HostTensor)],
    dir: &Path,
    device: &Device,
) -> FluxModel {
    let mut model = base.clone();
    let clip_file = dir.join("clip-merged.safetensors");
    save(&clip_file, clip);
    model.clip = base
        .config
        .text_encoder
        .init(device)
        .load_weights(&TensorFile::open(&clip_file).unwrap())
        .unwrap();
    let t5_file = dir.join("t5-merged.safetensors");
    save(&t5_file, t5);
    model.t5 = base
        .config
        .text_encoder_2
        .init(device)
        .load_weights(&TensorFile::open(&t5_file).unwrap())
        .unwrap();
    model
}

#[test]
fn kohya_te1_and_te3_keys_change_the_encoding_as_merged_weights_do() {
    let device = Device::flex();
    let dir = temp("kohya");
    let base = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    let clip_adapters = factors(&mut base.clip.clone(), 1);
    let t5_adapters = factors(&mut base.t5.clone(), 2);
    let scale = STRENGTH as f32 * ALPHA / RANK as f32;
    let clip_merged = merged(torch_tensors(&base.clip, ""), &clip_adapters, scale);
    let t5_merged = merged(torch_tensors(&base.t5, ""), &t5_adapters, scale);
    let (base_states, base_pooled) = encode(&base, &device);

    // CLIP alone: only the pooled output moves, exactly as with CLIP's merged weights.
    let te1 = dir.join("te1.safetensors");
    save(&te1, &kohya_tensors(TE1_PREFIX, &clip_adapters));
    let (adapted, report) = base.with_lora(&te1, STRENGTH, &device).unwrap();
    assert_eq!(report.modules.len(), clip_adapters.len());
    assert_eq!(
        report.modules[0],
        format!("text_encoder.{}", clip_adapters[0].0)
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let (states, pooled) = encode(&adapted, &device);
    let reference = with_encoders(
        &base,
        &clip_merged,
        &torch_tensors(&base.t5, ""),
        &dir,
        &device,
    );
    let (_, merged_pooled) = encode(&reference, &device);
    let moved = relative(&pooled, &base_pooled);
    assert!(
        moved > 1e-2,
        "the adapters moved the pooled output by {moved:e} only"
    );
    let err = relative(&pooled, &merged_pooled);
    println!("te1: pooled moved {moved:e}, differs from merged by {err:e}");
    assert!(err <= 1e-5, "pooled vs merged: {err:e}");
    assert_eq!(
        states, base_states,
        "CLIP adapters must not touch T5's states"
    );

    // Transformer, CLIP and T5 keys in one file: each part gets its adapters.
    let all = dir.join("all.safetensors");
    let mut tensors = kohya_tensors(TE1_PREFIX, &clip_adapters);
    tensors.extend(kohya_tensors(TE3_PREFIX, &t5_adapters));
    tensors.extend(all_tensors("flux/lora_files/kohya.safetensors"));
    save(&all, &tensors);
    let (adapted, report) = base.with_lora(&all, STRENGTH, &device).unwrap();
    let count = |p: &str| report.modules.iter().filter(|m| m.starts_with(p)).count();
    assert_eq!(count("text_encoder."), clip_adapters.len());
    assert_eq!(count("text_encoder_2."), t5_adapters.len());
    assert!(report.modules.len() > clip_adapters.len() + t5_adapters.len());
    let (states, pooled) = encode(&adapted, &device);
    let reference = with_encoders(&base, &clip_merged, &t5_merged, &dir, &device);
    let (merged_states, merged_pooled) = encode(&reference, &device);
    let moved = relative(&states, &base_states);
    assert!(
        moved > 1e-2,
        "the adapters moved T5's states by {moved:e} only"
    );
    let (e_states, e_pooled) = (
        relative(&states, &merged_states),
        relative(&pooled, &merged_pooled),
    );
    println!("te1+te3: states differ from merged by {e_states:e}, pooled by {e_pooled:e}");
    assert!(e_states <= 1e-5 && e_pooled <= 1e-5);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn peft_text_encoder_keys_change_the_pooled_output_as_merged_weights_do() {
    let device = Device::flex();
    let dir = temp("peft");
    let base = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    let clip_adapters = factors(&mut base.clip.clone(), 3);
    let mut tensors = Vec::new();
    for (path, down, up) in &clip_adapters {
        tensors.push((format!("text_encoder.{path}.lora_A.weight"), down.clone()));
        tensors.push((format!("text_encoder.{path}.lora_B.weight"), up.clone()));
    }
    tensors.extend(all_tensors("flux/lora_files/peft.safetensors"));
    let file = dir.join("peft.safetensors");
    save(&file, &tensors);
    let (adapted, report) = base.with_lora(&file, STRENGTH, &device).unwrap();
    assert_eq!(
        report
            .modules
            .iter()
            .filter(|m| m.starts_with("text_encoder."))
            .count(),
        clip_adapters.len()
    );
    // PEFT's default alpha is the rank: the delta is strength · up·down.
    let clip_merged = merged(
        torch_tensors(&base.clip, ""),
        &clip_adapters,
        STRENGTH as f32,
    );
    let reference = with_encoders(
        &base,
        &clip_merged,
        &torch_tensors(&base.t5, ""),
        &dir,
        &device,
    );
    let (_, pooled) = encode(&adapted, &device);
    let (_, merged_pooled) = encode(&reference, &device);
    let (_, base_pooled) = encode(&base, &device);
    assert!(relative(&pooled, &base_pooled) > 1e-2);
    let err = relative(&pooled, &merged_pooled);
    assert!(err <= 1e-5, "pooled vs merged: {err:e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_text_encoder_keys_are_refused_by_name() {
    let device = Device::flex();
    let dir = temp("refused");
    let base = FluxModel::load_diffusers(&fixture("flux/pipeline"), &device).unwrap();
    let clip_adapters = factors(&mut base.clip.clone(), 4);
    let refused = |prefix: &str, path: &str, says: &str| {
        let mut one = clip_adapters[0].clone();
        one.0 = path.to_string();
        let file = dir.join("bad.safetensors");
        save(&file, &kohya_tensors(prefix, &[one]));
        let err = base.with_lora(&file, 1.0, &device).unwrap_err();
        let name = format!("{prefix}{}", path.replace('.', "_"));
        assert!(matches!(err, Error::InvalidLora { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&name) && text.contains(says), "{text}");
    };
    // A layer CLIP does not have (the tiny CLIP has two layers).
    refused(
        TE1_PREFIX,
        "text_model.encoder.layers.9.self_attn.q_proj",
        "names no layer",
    );
    // SDXL's second encoder: FLUX.1 has none.
    refused(
        "lora_te2_",
        "text_model.encoder.layers.0.self_attn.q_proj",
        "lora_te3_",
    );
    std::fs::remove_dir_all(dir).unwrap();
}
