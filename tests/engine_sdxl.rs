//! An SDXL job on the native engine, end to end: the embedded engine with the real native
//! trainer and sampler on a tiny SDXL-shaped diffusers model (the trainer crate's fixture,
//! installed as the worker's model folder), from creation through review to publication; the
//! published LoRA is a kohya SDXL file.

use crate::common;

use common::native::{copy_dir, publish_native_job, tiny_catalogue, trainer_fixture};
use loraflow::core::catalogue::ParamValue;
use loraflow::executors::native::NativeOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_sdxl_job_runs_to_publication_with_a_kohya_sdxl_file() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    copy_dir(&trainer_fixture("sdxl/pipeline"), &models.join("tiny-sdxl"));
    let native = NativeOptions::new(&models).with_device("cpu");
    assert_eq!(native.installed_models(), ["tiny-sdxl"]);
    // The sizes its two-level UNet and two-level VAE take.
    let catalogue = tiny_catalogue(
        "tiny-sdxl",
        "Tiny SDXL (an SDXL-shaped test model)",
        "sdxl",
        "",
    );
    // bf16 base weights and checkpointing: the memory savers SDXL users reach for, end to end.
    let params = [
        ("text_encoder_lr", ParamValue::Float(1e-4)),
        ("base_weights", ParamValue::Str("bf16".into())),
        ("gradient_checkpointing", ParamValue::Bool(true)),
    ];
    let published = publish_native_job(tmp.path(), catalogue, native, "tiny-sdxl", &params).await;

    let meta = &published.meta;
    assert_eq!(meta["ss_base_model_version"], "sdxl_base_v1-0");
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base/lora"
    );
    let config: serde_json::Value = serde_json::from_str(&meta["loraflow_train_config"]).unwrap();
    assert_eq!(config["model"]["base_weights"], "bf16", "{config}");
    assert_eq!(config["gradient_checkpointing"], true, "{config}");
    let names = &published.names;
    for prefix in [
        "lora_unet_input_blocks_",
        "lora_unet_output_blocks_",
        "lora_te1_",
        "lora_te2_",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "no {prefix}* key in the published file"
        );
    }
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("lora_unet_down_blocks"))
    );
    published.finish().await;
}
