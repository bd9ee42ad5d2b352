//! SDXL LoRA files: kohya's SDXL key names (SGM UNet paths) as sd-scripts writes them, checked
//! against a file diffusers' `StableDiffusionXLPipeline.load_lora_weights` attached completely,
//! and our output with it (adapters and merged) against diffusers'. Fixtures from
//! `fixtures/make_sdxl_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::{fixture, max_abs_diff};
use loraflow_trainer::lora::{KohyaMetadata, load_peft, merge_lora};
use loraflow_trainer::sdxl::lora::{BASE_MODEL_VERSION, load_sdxl_kohya, save_sdxl_kohya};
use loraflow_trainer::tensor_file::{HostTensor, SaveDtype, TensorFile};
use loraflow_trainer::unet::{AddedConditions, UNet2DConditionModel, UNetConfig};

fn config() -> UNetConfig {
    UNetConfig::from_file(fixture("sdxl/pipeline/unet/config.json")).unwrap()
}

fn unet(device: &Device) -> UNet2DConditionModel {
    config()
        .init(device)
        .load_diffusers(fixture(
            "sdxl/pipeline/unet/diffusion_pytorch_model.safetensors",
        ))
        .unwrap()
        .no_grad()
}

fn run(unet: &UNet2DConditionModel, device: &Device) -> HostTensor {
    let io = TensorFile::open(fixture("sdxl/unet_io.safetensors")).unwrap();
    let t: Vec<f32> = io
        .read_i64("timesteps")
        .unwrap()
        .into_iter()
        .map(|t| t as f32)
        .collect();
    let n = t.len();
    let added = AddedConditions {
        text_embeds: io.read("text_embeds").unwrap().to_tensor(device),
        time_ids: io.read("time_ids").unwrap().to_tensor(device),
    };
    HostTensor::from_tensor(
        unet.forward_added(
            io.read("sample").unwrap().to_tensor(device),
            Tensor::from_data(TensorData::new(t, [n]), device),
            io.read("encoder_hidden_states").unwrap().to_tensor(device),
            Some(&added),
        )
        .unwrap(),
    )
}

#[test]
fn written_kohya_sdxl_file_has_the_names_diffusers_attached() {
    let device = Device::flex();
    let mut unet = unet(&device);
    load_peft(
        &mut unet,
        &fixture("sdxl/lora_step/lora_init.safetensors"),
        "unet",
        Some(8.0),
        &device,
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("loraflow-sdxl-kohya-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ours.safetensors");
    save_sdxl_kohya(
        &mut unet,
        &config(),
        None,
        &path,
        &KohyaMetadata::default(),
        SaveDtype::F32,
    )
    .unwrap();
    let ours = TensorFile::open(&path).unwrap();
    let reference = TensorFile::open(fixture("sdxl/lora_kohya.safetensors")).unwrap();
    let mut a = ours.names();
    let mut b = reference.names();
    a.sort();
    b.sort();
    assert_eq!(a, b, "key names differ from what diffusers attached");
    assert!(
        a.iter()
            .any(|k| k.starts_with("lora_unet_input_blocks_4_1_"))
    );
    assert!(
        a.iter()
            .any(|k| k.starts_with("lora_unet_output_blocks_0_0_in_layers_2"))
    );
    for name in &a {
        let err = max_abs_diff(&ours.read(name).unwrap(), &reference.read(name).unwrap());
        assert!(err <= 1e-7, "{name} differs by {err}");
    }
    let meta = ours.metadata();
    assert_eq!(meta["ss_base_model_version"], BASE_MODEL_VERSION);
    assert_eq!(meta["ss_v2"], "False");
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base/lora"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kohya_sdxl_file_gives_diffusers_lora_output_with_adapters_and_merged() {
    let device = Device::flex();
    let expected = TensorFile::open(fixture("sdxl/lora_io.safetensors")).unwrap();
    let plain = unet(&device);
    let err = max_abs_diff(&run(&plain, &device), &expected.read("plain").unwrap());
    assert!(err <= 1e-4, "plain output off by {err}");

    let mut unet = unet(&device);
    let loaded = load_sdxl_kohya(
        &mut unet,
        &config(),
        None,
        &fixture("sdxl/lora_kohya.safetensors"),
        1.0,
        &device,
    )
    .unwrap();
    assert_eq!(loaded.modules.len(), 156);
    assert_eq!(
        expected.metadata()["attached_modules"],
        loaded.modules.len().to_string()
    );
    let want = expected.read("out").unwrap();
    let err = max_abs_diff(&run(&unet, &device), &want);
    println!("sdxl kohya LoRA: max abs error {err:e} against diffusers");
    assert!(err <= 1e-4, "LoRA output off by {err}");
    merge_lora(&mut unet);
    let err = max_abs_diff(&run(&unet, &device), &want);
    println!("sdxl kohya LoRA merged: max abs error {err:e} against diffusers");
    assert!(err <= 1e-4, "merged output off by {err}");
}
