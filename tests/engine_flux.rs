//! A FLUX.1 job on the native engine, end to end: the embedded engine with the real native
//! trainer and sampler on a tiny FLUX.1-dev-shaped diffusers folder (the trainer crate's
//! fixture, installed as the worker's model), from creation through review to publication;
//! the published LoRA is a kohya Flux file that the trainer's Flux loader reads back. The same
//! job runs on the fixture's transformer as a BFL single file registered with the folder of
//! its other parts (`[models.<id>] path`, `config_dir`).

use crate::common;

use std::path::{Path, PathBuf};

use common::native::{copy_dir, publish_native_job, tiny_catalogue, trainer_fixture};
use loraflow::core::catalogue::{Catalogue, ParamValue};
use loraflow::executors::native::{NativeModel, NativeOptions};
use loraflow_trainer::flux::FluxTransformerConfig;
use loraflow_trainer::flux::lora::load_flux_kohya;

/// The built-in catalogue plus `tiny-flux` at the sizes its VAE of two levels and 2×2 packing
/// take, sampled in 4 steps.
fn catalogue() -> Catalogue {
    let steps = "[params.sample_steps.models.tiny-flux]\ndefault = 4\n";
    tiny_catalogue(
        "tiny-flux",
        "Tiny FLUX.1 (a FLUX.1-dev-shaped test model)",
        "flux",
        steps,
    )
}

fn fixture(rel: &str) -> PathBuf {
    trainer_fixture("flux").join(rel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_flux_job_runs_to_publication_with_a_kohya_flux_file() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    copy_dir(&fixture("pipeline"), &models.join("tiny-flux"));
    let native = NativeOptions::new(&models).with_device("cpu");
    assert_eq!(native.installed_models(), ["tiny-flux"]);
    publish_a_flux_job(tmp.path(), native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_flux_job_trains_a_bfl_transformer_file_with_its_parts_folder() {
    // As ComfyUI users keep FLUX.1: `flux1-dev.safetensors` under BFL's names, registered with
    // a diffusers FLUX.1 folder for its text encoders, VAE, configs and tokenizers.
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(
        fixture("single_file/flux1-tiny-dev.safetensors"),
        models.join("flux1-tiny-dev.safetensors"),
    )
    .unwrap();
    let parts = tmp.path().join("flux-parts");
    copy_dir(&fixture("pipeline"), &parts);
    let mut native = NativeOptions::new(&models).with_device("cpu");
    native.models.insert(
        "tiny-flux".into(),
        NativeModel {
            path: "flux1-tiny-dev.safetensors".into(),
            config_dir: Some(parts),
        },
    );
    assert_eq!(native.installed_models(), ["tiny-flux"]);
    publish_a_flux_job(tmp.path(), native).await;
}

/// Runs a `tiny-flux` job on `native` through review to publication and checks the published
/// kohya Flux file.
async fn publish_a_flux_job(tmp: &Path, native: NativeOptions) {
    // sd-scripts' other recommended FLUX.1 setting (a fixed shift), and bf16 base weights.
    let params = [
        ("timestep_sampling", ParamValue::Str("shift".into())),
        ("discrete_flow_shift", ParamValue::Float(3.1582)),
        ("base_weights", ParamValue::Str("bf16".into())),
        ("learning_rate", ParamValue::Float(1e-3)),
        ("unet_lr", ParamValue::Float(1e-3)),
    ];
    let published = publish_native_job(tmp, catalogue(), native, "tiny-flux", &params).await;

    let meta = &published.meta;
    assert_eq!(meta["ss_base_model_version"], "flux1");
    assert_eq!(meta["modelspec.architecture"], "flux-1-dev/lora");
    assert_eq!(meta["ss_timestep_sampling"], "shift");
    assert_eq!(meta["ss_discrete_flow_shift"], "3.1582");
    let config: serde_json::Value = serde_json::from_str(&meta["loraflow_train_config"]).unwrap();
    assert_eq!(config["model"]["base_weights"], "bf16", "{config}");
    let names = &published.names;
    for key in [
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
        "lora_unet_double_blocks_0_txt_mlp_0.lora_up.weight",
        "lora_unet_single_blocks_0_linear1.alpha",
    ] {
        assert!(
            names.iter().any(|n| n == key),
            "no {key} in the published file"
        );
    }
    assert!(
        names.iter().all(|n| n.starts_with("lora_unet_")),
        "{names:?}"
    );

    let device = loraflow_trainer::device::parse_device("cpu").unwrap();
    let dir = fixture("pipeline/transformer");
    let mut transformer = FluxTransformerConfig::from_file(dir.join("config.json"))
        .unwrap()
        .init(&device)
        .load_diffusers(dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    let loaded = load_flux_kohya(&mut transformer, &published.file, 1.0, &device).unwrap();
    assert_eq!(loaded.modules.len(), 17, "{:?}", loaded.modules);
    published.finish().await;
}
