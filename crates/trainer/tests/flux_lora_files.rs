//! Flux LoRA files: diffusers/PEFT (`transformer.` keys) and kohya's BFL names with fused
//! q/k/v as sd-scripts' `networks/lora_flux.py` writes them. Adapters on every linear of the
//! tiny dev-shaped transformer (`fixtures/flux/dev`) are written and read back in both formats;
//! the outputs with the read-back adapters (and merged) equal the original's.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::{fixture, max_abs, max_abs_diff};
use loraflow_trainer::flux::lora::{
    BASE_MODEL_VERSION, bfl_slot, load_flux_kohya, load_flux_peft, save_flux_kohya, save_flux_peft,
};
use loraflow_trainer::flux::{FluxInputs, FluxTransformer2DModel, FluxTransformerConfig};
use loraflow_trainer::lora::{KohyaMetadata, LoraLayers, merge_lora};
use loraflow_trainer::tensor_file::{HostTensor, SaveDtype, TensorFile};

fn model(device: &Device) -> FluxTransformer2DModel {
    FluxTransformerConfig::from_file(fixture("flux/dev/config.json"))
        .unwrap()
        .init(device)
        .load_diffusers(fixture("flux/dev/diffusion_pytorch_model.safetensors"))
        .unwrap()
        .no_grad()
}

fn inputs(device: &Device) -> FluxInputs {
    let file = TensorFile::open(fixture("flux/dev/io.safetensors")).unwrap();
    let read = |key: &str| file.read(key).unwrap();
    FluxInputs {
        hidden_states: read("hidden_states").to_tensor(device),
        encoder_hidden_states: read("encoder_hidden_states").to_tensor(device),
        pooled_projections: read("pooled_projections").to_tensor(device),
        timestep: read("timestep").to_tensor(device),
        img_ids: read("img_ids"),
        txt_ids: read("txt_ids"),
        guidance: Some(read("guidance").to_tensor(device)),
    }
}

fn run(model: &FluxTransformer2DModel, device: &Device) -> HostTensor {
    HostTensor::from_tensor(model.forward(inputs(device)).unwrap())
}

/// Deterministic values in [-0.25, 0.25).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
        })
        .collect()
}

/// The model with adapters (rank 2, alpha 3, non-zero factors) on every linear BFL's tree has.
fn adapted(device: &Device) -> (FluxTransformer2DModel, Vec<String>) {
    let mut m = model(device);
    let mut paths = Vec::new();
    for (i, (path, mut layer)) in m.layers().into_iter().enumerate() {
        if bfl_slot(&path).is_none() {
            continue;
        }
        let loraflow_trainer::lora::LayerMut::Linear(l) = &layer else {
            continue;
        };
        let (d_in, d_out) = (l.d_input(), l.d_output());
        let down = HostTensor::new(vec![2, d_in], values(2 * d_in, 2 * i as u64));
        let up = HostTensor::new(vec![d_out, 2], values(2 * d_out, 2 * i as u64 + 1));
        layer.set_factors(&path, down, up, 3.0, device).unwrap();
        paths.push(path);
    }
    (m, paths)
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-flux-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn every_linear_of_the_tiny_model_has_a_bfl_module() {
    let device = Device::flex();
    let (_, paths) = adapted(&device);
    // 14 per double block, 6 per single block, 10 outside the blocks (dev has guidance).
    assert_eq!(paths.len(), 14 + 6 + 10, "{paths:?}");
}

fn round_trip(kohya: bool) {
    let device = Device::flex();
    let (mut ours, paths) = adapted(&device);
    let expected = run(&ours, &device);
    let base = run(&model(&device), &device);
    let moved = max_abs_diff(&expected, &base);
    assert!(moved > 1e-2, "adapters must move the output, moved {moved}");
    let path = temp(if kohya {
        "kohya.safetensors"
    } else {
        "peft.safetensors"
    });
    let mut fresh = model(&device);
    let loaded = if kohya {
        save_flux_kohya(&mut ours, &path, &KohyaMetadata::default(), SaveDtype::F32).unwrap();
        load_flux_kohya(&mut fresh, &path, 1.0, &device).unwrap()
    } else {
        save_flux_peft(&mut ours, &path, SaveDtype::F32).unwrap();
        load_flux_peft(&mut fresh, &path, None, &device).unwrap()
    };
    assert_eq!(loaded.modules, paths);
    let out = run(&fresh, &device);
    let err = max_abs_diff(&out, &expected);
    println!(
        "flux {} round trip: max abs error {err:e} (output scale {}, adapters move it {moved})",
        if kohya { "kohya" } else { "peft" },
        max_abs(&expected)
    );
    assert!(err <= 1e-5, "max abs error {err}");
    merge_lora(&mut fresh);
    let merged = run(&fresh, &device);
    let err = max_abs_diff(&merged, &expected);
    println!("  merged: max abs error {err:e}");
    assert!(err <= 1e-4, "merged: max abs error {err}");
    // The same factors come back (equal ranks split back exactly).
    let mut a = ours.layers();
    let mut b = fresh_factors(&path, kohya, &device);
    for ((pa, la), (pb, fb)) in a.iter_mut().zip(b.iter_mut()) {
        assert_eq!(pa, pb);
        if let (Some((da, ua, aa)), Some((db, ub, ab))) = (la.factors(), fb.take()) {
            let sa = aa as f32 / da.shape[0] as f32;
            let sb = ab as f32 / db.shape[0] as f32;
            let delta = |d: &HostTensor, u: &HostTensor, s: f32| {
                let (r, i) = (d.shape[0], d.shape[1]);
                let o = u.shape[0];
                let mut w = vec![0f32; o * i];
                for y in 0..o {
                    for k in 0..r {
                        for x in 0..i {
                            w[y * i + x] += s * u.data[y * r + k] * d.data[k * i + x];
                        }
                    }
                }
                HostTensor::new(vec![o, i], w)
            };
            let e = max_abs_diff(&delta(&da, &ua, sa), &delta(&db, &ub, sb));
            assert!(e <= 1e-6, "{pa}: delta differs by {e}");
            assert_eq!(da.shape, db.shape, "{pa}: rank changed");
        }
    }
}

type Factors = Option<(HostTensor, HostTensor, f64)>;

fn fresh_factors(path: &std::path::Path, kohya: bool, device: &Device) -> Vec<(String, Factors)> {
    let mut m = model(device);
    if kohya {
        load_flux_kohya(&mut m, path, 1.0, device).unwrap();
    } else {
        load_flux_peft(&mut m, path, None, device).unwrap();
    }
    m.layers()
        .into_iter()
        .map(|(p, l)| (p, l.factors()))
        .collect()
}

#[test]
fn peft_file_round_trips() {
    round_trip(false);
}

#[test]
fn kohya_file_round_trips_through_fused_qkv() {
    round_trip(true);
}

#[test]
fn kohya_file_has_sd_scripts_names_fused_shapes_and_header() {
    let device = Device::flex();
    let (mut ours, _) = adapted(&device);
    let path = temp("names.safetensors");
    save_flux_kohya(&mut ours, &path, &KohyaMetadata::default(), SaveDtype::F32).unwrap();
    let file = TensorFile::open(&path).unwrap();
    let shape = |k: &str| {
        file.shape(k)
            .unwrap_or_else(|| panic!("{k} missing"))
            .to_vec()
    };
    // q/k/v of width 32 fused: rank 3·2, out 3·32.
    assert_eq!(
        shape("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"),
        [6, 32]
    );
    assert_eq!(
        shape("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"),
        [96, 6]
    );
    assert_eq!(
        shape("lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight"),
        [96, 6]
    );
    // linear1: q, k, v and the 4·32 MLP input.
    assert_eq!(
        shape("lora_unet_single_blocks_0_linear1.lora_up.weight"),
        [224, 8]
    );
    assert_eq!(
        file.read("lora_unet_single_blocks_0_linear1.alpha")
            .unwrap()
            .data,
        [12.0]
    );
    assert_eq!(
        file.read("lora_unet_double_blocks_0_img_mlp_0.alpha")
            .unwrap()
            .data,
        [3.0]
    );
    for k in [
        "lora_unet_double_blocks_0_img_attn_proj.alpha",
        "lora_unet_double_blocks_0_txt_mod_lin.alpha",
        "lora_unet_single_blocks_0_linear2.alpha",
        "lora_unet_single_blocks_0_modulation_lin.alpha",
        "lora_unet_img_in.alpha",
        "lora_unet_txt_in.alpha",
        "lora_unet_guidance_in_in_layer.alpha",
        "lora_unet_vector_in_out_layer.alpha",
        "lora_unet_time_in_out_layer.alpha",
        "lora_unet_final_layer_linear.alpha",
        "lora_unet_final_layer_adaLN_modulation_1.alpha",
    ] {
        assert!(file.contains(k), "{k} missing");
    }
    // Off-diagonal blocks of a fused lora_up are zero.
    let up = file
        .read("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight")
        .unwrap();
    assert!((0..32).all(|row| up.data[row * 6 + 2..row * 6 + 6].iter().all(|v| *v == 0.0)));
    let meta = file.metadata();
    assert_eq!(meta["ss_base_model_version"], BASE_MODEL_VERSION);
    assert_eq!(meta["modelspec.architecture"], "flux-1-dev/lora");
    assert!(meta.contains_key("sshs_model_hash"));
}

#[test]
fn kohya_file_of_another_width_is_refused_naming_the_module() {
    let device = Device::flex();
    let path = temp("bad.safetensors");
    let tensors = vec![
        (
            "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight".to_string(),
            HostTensor::new(vec![6, 32], vec![0.1; 192]),
        ),
        (
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight".to_string(),
            HostTensor::new(vec![9216, 6], vec![0.0; 9216 * 6]),
        ),
    ];
    loraflow_trainer::tensor_file::write(&path, &tensors, Default::default(), SaveDtype::F32)
        .unwrap();
    let err = load_flux_kohya(&mut model(&device), &path, 1.0, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora_unet_double_blocks_0_img_attn_qkv"),
        "{err}"
    );
    assert!(err.contains("[96, 6]"), "{err}");
}

/// diffusers' outputs for `fixtures/flux/lora_files` and the modules it attached from `fmt`.
fn diffusers_record(fmt: &str) -> (TensorFile, Vec<String>) {
    let file = TensorFile::open(fixture("flux/lora_files/expected.safetensors")).unwrap();
    let attached = serde_json::from_str(&file.metadata()[&format!("attached_{fmt}")]).unwrap();
    (file, attached)
}

fn matches_diffusers(fmt: &str) {
    let device = Device::flex();
    let (expected, attached) = diffusers_record(fmt);
    let path = fixture(&format!("flux/lora_files/{fmt}.safetensors"));
    let mut m = model(&device);
    let loaded = if fmt.starts_with("kohya") {
        load_flux_kohya(&mut m, &path, 1.0, &device).unwrap()
    } else {
        load_flux_peft(&mut m, &path, None, &device).unwrap()
    };
    let mut modules = loaded.modules.clone();
    modules.sort();
    assert_eq!(
        modules, attached,
        "{fmt}: modules differ from what diffusers attached"
    );
    let want = expected.read(fmt).unwrap();
    let err = max_abs_diff(&run(&m, &device), &want);
    let moved = max_abs_diff(&want, &run(&model(&device), &device));
    println!(
        "flux {fmt} file vs diffusers: {} modules, max abs error {err:e} (output scale {}, adapters move it {moved})",
        modules.len(),
        max_abs(&want)
    );
    assert!(
        moved > 1e-2,
        "the adapters must move the output, moved {moved}"
    );
    assert!(err <= 1e-4, "{fmt}: max abs error {err}");
    merge_lora(&mut m);
    let want = expected.read(&format!("{fmt}_merged")).unwrap();
    let err = max_abs_diff(&run(&m, &device), &want);
    println!("  merged: max abs error {err:e}");
    assert!(err <= 1e-4, "{fmt} merged: max abs error {err}");
}

#[test]
fn peft_file_attaches_what_diffusers_attached_with_its_output() {
    matches_diffusers("peft");
}

#[test]
fn kohya_file_attaches_what_diffusers_attached_with_its_output() {
    matches_diffusers("kohya");
}

/// sd-scripts' default layout: each fused q/k/v one dense adapter; every part gets the whole
/// `lora_down` and its rows of `lora_up`.
#[test]
fn dense_fused_kohya_file_matches_diffusers() {
    matches_diffusers("kohya_dense");
    let device = Device::flex();
    let mut m = model(&device);
    load_flux_kohya(
        &mut m,
        &fixture("flux/lora_files/kohya_dense.safetensors"),
        1.0,
        &device,
    )
    .unwrap();
    for (path, layer) in m.layers() {
        if path.starts_with("transformer_blocks.0.attn.to_") && !path.ends_with("out.0") {
            let (down, up, alpha) = layer.factors().unwrap();
            assert_eq!((down.shape[0], up.shape[0], alpha), (2, 32, 4.0), "{path}");
        }
    }
}

/// Our files written from the fixture's adapters (read from its kohya file, which keeps their
/// alphas) have the fixture files' keys and tensors.
#[test]
fn written_files_equal_the_fixture_files() {
    let device = Device::flex();
    let mut m = model(&device);
    load_flux_kohya(
        &mut m,
        &fixture("flux/lora_files/kohya.safetensors"),
        1.0,
        &device,
    )
    .unwrap();
    for (fmt, path) in [
        ("peft", temp("w-peft.safetensors")),
        ("kohya", temp("w-kohya.safetensors")),
    ] {
        if fmt == "kohya" {
            save_flux_kohya(&mut m, &path, &KohyaMetadata::default(), SaveDtype::F32).unwrap();
        } else {
            save_flux_peft(&mut m, &path, SaveDtype::F32).unwrap();
        }
        let ours = TensorFile::open(&path).unwrap();
        let reference =
            TensorFile::open(fixture(&format!("flux/lora_files/{fmt}.safetensors"))).unwrap();
        let (mut a, mut b) = (ours.names(), reference.names());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{fmt}: key names differ from the fixture's");
        let mut worst = 0f32;
        for k in &a {
            let (x, y) = (ours.read(k).unwrap(), reference.read(k).unwrap());
            assert_eq!(x.shape, y.shape, "{fmt} {k}");
            worst = worst.max(max_abs_diff(&x, &y));
        }
        println!(
            "flux {fmt}: {} tensors, max abs difference {worst:e}",
            a.len()
        );
        assert!(worst <= 1e-6, "{fmt}: tensors differ by {worst}");
    }
}
