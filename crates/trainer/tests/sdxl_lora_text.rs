//! SDXL LoRA files with text-encoder adapters (`lora_te1_*`, `lora_te2_*`), checked against
//! diffusers: `fixtures/sdxl/lora_text_kohya.safetensors` was written by `save_sdxl_kohya`
//! (`examples/make_sdxl_text_lora.rs`: every q/k/v/out projection and fc1/fc2 of both
//! encoders), and `StableDiffusionXLPipeline.load_lora_weights` attached every module of it
//! (`fixtures/check_sdxl_interop.py --text-fixture`, which recorded the attached modules and
//! the encoders' outputs with the LoRA in `lora_text_io.safetensors`).
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::collections::BTreeSet;

use burn::tensor::Device;
use common::sdxl_text_lora::{adapt_text_encoders, save_kohya};
use common::{fixture, max_abs_diff};
use loraflow_trainer::clip::{TE_TARGETS, ids_tensor};
use loraflow_trainer::sdxl::StableDiffusionXl;
use loraflow_trainer::sdxl::lora::{BASE_MODEL_VERSION, load_sdxl_kohya};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};

const FILE: &str = "sdxl/lora_text_kohya.safetensors";
const IO: &str = "sdxl/lora_text_io.safetensors";

fn model(device: &Device) -> StableDiffusionXl {
    StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), device).unwrap()
}

/// The modules diffusers attached for one encoder, as diffusers module paths.
fn attached(io: &TensorFile, key: &str) -> Vec<String> {
    serde_json::from_str(&io.metadata()[key]).unwrap()
}

/// Module names (kohya key stems) of a kohya file.
fn modules(file: &TensorFile) -> BTreeSet<String> {
    file.names()
        .iter()
        .filter_map(|k| k.strip_suffix(".lora_down.weight"))
        .map(str::to_string)
        .collect()
}

#[test]
fn written_text_encoder_keys_are_the_ones_diffusers_attached() {
    let device = Device::flex();
    let io = TensorFile::open(fixture(IO)).unwrap();
    let committed = TensorFile::open(fixture(FILE)).unwrap();

    // Every module of the committed file attached in diffusers: all six projections of all
    // five layers of each encoder.
    let te1 = attached(&io, "attached_te1");
    let te2 = attached(&io, "attached_te2");
    assert_eq!((te1.len(), te2.len()), (30, 30), "{te1:?} {te2:?}");
    for names in [&te1, &te2] {
        let kinds: BTreeSet<&str> = names.iter().filter_map(|n| n.rsplit('.').next()).collect();
        assert_eq!(kinds, TE_TARGETS.iter().copied().collect());
    }
    let from_diffusers: BTreeSet<String> = te1
        .iter()
        .map(|n| format!("lora_te1_{}", n.replace('.', "_")))
        .chain(
            te2.iter()
                .map(|n| format!("lora_te2_{}", n.replace('.', "_"))),
        )
        .collect();
    assert_eq!(modules(&committed), from_diffusers);

    // What `save_sdxl_kohya` writes today for adapters on every text-encoder target has the
    // same keys (down, up, alpha of each module) and header.
    let mut model = model(&device);
    assert_eq!(
        adapt_text_encoders(&mut model, [2.0, 8.0], &device).unwrap(),
        [30, 30]
    );
    let dir = std::env::temp_dir().join(format!("loraflow-xl-te-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ours.safetensors");
    save_kohya(&mut model, &path).unwrap();
    let ours = TensorFile::open(&path).unwrap();
    let mut a = ours.names();
    let mut b = committed.names();
    a.sort();
    b.sort();
    assert_eq!(a, b, "key names differ from the file diffusers attached");
    assert!(a.contains(&"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha".into()));
    assert!(a.contains(&"lora_te2_text_model_encoder_layers_4_mlp_fc2.lora_up.weight".into()));
    assert_eq!(ours.metadata()["ss_base_model_version"], BASE_MODEL_VERSION);
    std::fs::remove_dir_all(&dir).ok();

    // Our loader puts the committed file's adapters on the modules diffusers put them on.
    let mut model = self::model(&device);
    let config = model.config.unet.clone();
    let loaded = load_sdxl_kohya(
        &mut model.unet,
        &config,
        Some(&mut model.text),
        &fixture(FILE),
        1.0,
        &device,
    )
    .unwrap();
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    let ours: BTreeSet<String> = loaded.modules.iter().cloned().collect();
    let theirs: BTreeSet<String> = te1
        .iter()
        .map(|n| format!("lora_te1_{n}"))
        .chain(te2.iter().map(|n| format!("lora_te2_{n}")))
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn text_encoder_lora_outputs_equal_diffusers() {
    let device = Device::flex();
    let io = TensorFile::open(fixture(IO)).unwrap();
    let captions: Vec<String> = serde_json::from_str(&io.metadata()["captions"]).unwrap();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    let base = model(&device);
    let ids = base.tokenizers.encode_batch(&captions);
    let rows = |t: HostTensor| -> Vec<Vec<u32>> {
        t.data
            .chunks(t.shape[1])
            .map(|r| r.iter().map(|&v| v as u32).collect())
            .collect()
    };
    assert_eq!(ids.ids, rows(io.read("te1.input_ids").unwrap()));
    assert_eq!(ids.ids_2, rows(io.read("te2.input_ids").unwrap()));

    let (adapted, loaded) = base.with_lora(&fixture(FILE), 1.0, &device).unwrap();
    assert_eq!(loaded.modules.len(), 60);
    for (model, prefix) in [(&base, "base."), (&adapted, "")] {
        let text = model.text.encode(&ids, &device).unwrap();
        let last_1 = model
            .text
            .text_encoder
            .forward(ids_tensor(&ids.ids, &device), 1)
            .unwrap();
        let last_2 = model
            .text
            .text_encoder_2
            .forward(ids_tensor(&ids.ids_2, &device), &ids.ids_2)
            .unwrap()
            .last_hidden_state;
        for (name, got) in [
            ("context", HostTensor::from_tensor(text.context)),
            ("pooled", HostTensor::from_tensor(text.pooled)),
            ("te1.last_hidden_state", HostTensor::from_tensor(last_1)),
            ("te2.last_hidden_state", HostTensor::from_tensor(last_2)),
        ] {
            let want = io.read(&format!("{prefix}{name}")).unwrap();
            assert_eq!(got.shape, want.shape, "{prefix}{name}");
            let err = max_abs_diff(&got, &want);
            println!("{prefix}{name}: max abs error {err:e} against diffusers");
            assert!(err <= 1e-4, "{prefix}{name} off by {err}");
            if prefix.is_empty() {
                // The adapters matter: the LoRA output is far from the base one.
                let base = io.read(&format!("base.{name}")).unwrap();
                let change = max_abs_diff(&want, &base);
                assert!(
                    change > 1e-2,
                    "{name}: the LoRA changes it by only {change}"
                );
            }
        }
    }
}
