//! SDXL LoRA files: kohya's SDXL key names (SGM UNet paths) as sd-scripts writes them, checked
//! against a file diffusers' `StableDiffusionXLPipeline.load_lora_weights` attached completely,
//! and our output with it (adapters and merged) against diffusers'. Fixtures from
//! `fixtures/make_sdxl_fixtures.py`.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::sdxl::{forward_host as run, pipeline_unet, unet_config as config};
use common::{fixture, max_abs_diff};
use loraflow_trainer::lora::{KohyaMetadata, load_peft, merge_lora};
use loraflow_trainer::sdxl::lora::{BASE_MODEL_VERSION, load_sdxl_kohya, save_sdxl_kohya};
use loraflow_trainer::tensor_file::{HostTensor, SaveDtype, TensorFile};
use loraflow_trainer::unet::UNet2DConditionModel;

fn unet(device: &Device) -> UNet2DConditionModel {
    pipeline_unet(device).no_grad()
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

    // The same through the whole model, as samples are rendered with a LoRA.
    let model = loraflow_trainer::sdxl::StableDiffusionXl::load_diffusers(
        fixture("sdxl/pipeline"),
        &device,
    )
    .unwrap();
    let (adapted, loaded) = model
        .with_lora(&fixture("sdxl/lora_kohya.safetensors"), 1.0, &device)
        .unwrap();
    assert_eq!(loaded.modules.len(), 156);
    assert!(max_abs_diff(&run(&adapted.unet, &device), &want) <= 1e-4);
    // Strength 0 is the base model.
    let (zero, _) = model
        .with_lora(&fixture("sdxl/lora_kohya.safetensors"), 0.0, &device)
        .unwrap();
    let plain_out = expected.read("plain").unwrap();
    assert!(max_abs_diff(&run(&zero.unet, &device), &plain_out) <= 1e-4);
}

#[test]
fn unet_and_both_encoders_round_trip_through_kohya_and_peft_files() {
    use loraflow_trainer::clip::TE_TARGETS;
    use loraflow_trainer::lora::LoraLayers;
    use loraflow_trainer::sdxl::StableDiffusionXl;
    use loraflow_trainer::sdxl::lora::{load_sdxl_peft, save_sdxl_peft};

    let device = Device::flex();
    let base = StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), &device).unwrap();
    let te_network = loraflow_trainer::lora::NetworkConfig::new(2, 1.0).with_targets(TE_TARGETS);
    let (mut unet, _) = loraflow_trainer::lora::apply_lora(
        base.unet.clone(),
        &loraflow_trainer::lora::NetworkConfig::new(4, 2.0),
        1,
        &device,
    )
    .unwrap();
    let mut text = base.text.clone();
    let (te1, _) =
        loraflow_trainer::lora::apply_lora(text.text_encoder, &te_network, 2, &device).unwrap();
    let (te2, _) =
        loraflow_trainer::lora::apply_lora(text.text_encoder_2, &te_network, 3, &device).unwrap();
    // Non-zero up factors, so that a mix-up between encoders would show.
    text.text_encoder = te1;
    text.text_encoder_2 = te2;
    for (_, mut layer) in text.layers() {
        let (down, mut up, alpha) = layer.factors().unwrap();
        up.data
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 * 0.37).sin() * 0.1);
        layer.set_factors("test", down, up, alpha, &device).unwrap();
    }
    let factors = |u: &mut UNet2DConditionModel,
                   t: &mut loraflow_trainer::sdxl::SdxlTextEncoders| {
        let mut all: Vec<_> = u
            .layers()
            .iter()
            .map(|(p, l)| (p.clone(), l.factors()))
            .collect();
        all.extend(t.layers().iter().map(|(p, l)| (p.clone(), l.factors())));
        all
    };
    let want = factors(&mut unet, &mut text);

    let dir = std::env::temp_dir().join(format!("loraflow-sdxl-parts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kohya = dir.join("kohya.safetensors");
    save_sdxl_kohya(
        &mut unet,
        &config(),
        Some(&mut text),
        &kohya,
        &KohyaMetadata::default(),
        SaveDtype::F32,
    )
    .unwrap();
    let names = TensorFile::open(&kohya).unwrap().names();
    for prefix in [
        "lora_unet_input_blocks_",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_4_mlp_fc2",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "no {prefix}* key"
        );
    }
    let (mut u2, mut t2) = (base.unet.clone(), base.text.clone());
    let loaded = load_sdxl_kohya(&mut u2, &config(), Some(&mut t2), &kohya, 1.0, &device).unwrap();
    assert!(loaded.skipped.is_empty());
    assert_eq!(factors(&mut u2, &mut t2), want);

    let peft = dir.join("peft.safetensors");
    save_sdxl_peft(&mut unet, Some(&mut text), &peft, SaveDtype::F32).unwrap();
    let names = TensorFile::open(&peft).unwrap().names();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("unet.down_blocks.1.attentions.0."))
    );
    assert!(
        names
            .iter()
            .any(|n| n
                == "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight")
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("text_encoder.text_model."))
    );
    let (mut u3, mut t3) = (base.unet.clone(), base.text.clone());
    load_sdxl_peft(&mut u3, Some(&mut t3), &peft, &device).unwrap();
    // PEFT folds alpha/rank into lora_B, so compare outputs rather than factors.
    let ids = base.tokenizers.encode_batch(&["a red circle"]);
    let a = HostTensor::from_tensor(text.encode(&ids, &device).unwrap().context);
    let b = HostTensor::from_tensor(t3.encode(&ids, &device).unwrap().context);
    let plain = HostTensor::from_tensor(base.text.encode(&ids, &device).unwrap().context);
    assert!(max_abs_diff(&a, &b) <= 1e-5);
    assert!(
        max_abs_diff(&a, &plain) > 1e-3,
        "the encoder adapters change the context"
    );
    assert!(max_abs_diff(&run(&unet, &device), &run(&u3, &device)) <= 1e-5);
    std::fs::remove_dir_all(&dir).ok();
}
