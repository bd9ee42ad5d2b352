//! kohya and PEFT files (UNet and text encoder): layout, metadata, round trips, merging, and
//! typed errors.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::collections::HashMap;

use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs_diff};
use loraflow_trainer::Error;
use loraflow_trainer::clip::{TE_TARGETS, ids_tensor};
use loraflow_trainer::lora::kohya::{Part, kohya_name};
use loraflow_trainer::lora::{
    KohyaMetadata, LoraLayers, NetworkConfig, PEFT_TEXT_ENCODER, PEFT_UNET, apply_lora, load_kohya,
    load_peft, load_peft_parts, merge_lora, save_kohya, save_peft, save_peft_parts, targets,
};
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::tensor_file::{self, HostTensor, SaveDtype, TensorFile};
use loraflow_trainer::unet::{UNet2DConditionModel, UNetConfig};

fn config() -> UNetConfig {
    UNetConfig::from_file(fixture("lora_step/config.json")).unwrap()
}

fn base(device: &Device) -> UNet2DConditionModel {
    config()
        .init(device)
        .load_diffusers(fixture("lora_step/diffusion_pytorch_model.safetensors"))
        .unwrap()
}

/// A model with attention, projection, feed-forward and 3×3-conv adapters whose up factors
/// are random (fresh adapters have zero up factors and would make every comparison trivial).
fn adapted(device: &Device) -> UNet2DConditionModel {
    let mut patterns: Vec<&str> = targets::TRANSFORMER.to_vec();
    patterns.extend(["resnets.*.conv1", "downsamplers.*.conv"]);
    let network = NetworkConfig::new(4, 2.0)
        .with_targets(&patterns)
        .with_conv(2, 1.0);
    let (mut unet, adapted) = apply_lora(base(device), &network, 3, device).unwrap();
    assert!(adapted.iter().any(|p| p.ends_with("conv1")));
    let mut rng = SeededRng::new(5, Stream::Noise);
    for (path, mut layer) in unet.layers() {
        if let Some((down, up, alpha)) = layer.factors() {
            let up = HostTensor::new(up.shape.clone(), rng.normal(up.data.len()));
            layer.set_factors(&path, down, up, alpha, device).unwrap();
        }
    }
    unet
}

fn run(unet: &UNet2DConditionModel, device: &Device) -> HostTensor {
    let mut rng = SeededRng::new(9, Stream::Noise);
    let x: Tensor<4> = HostTensor::new(vec![1, 4, 8, 8], rng.normal(256)).to_tensor(device);
    let c: Tensor<3> = HostTensor::new(vec![1, 5, 12], rng.normal(60)).to_tensor(device);
    let t = Tensor::<1>::from_data([420.0f32], device);
    HostTensor::from_tensor(unet.forward(x, t, c))
}

fn metadata() -> KohyaMetadata {
    KohyaMetadata {
        base_model_version: "sd_v1".into(),
        network: NetworkConfig::new(4, 2.0).with_conv(2, 1.0),
        learning_rate: 1e-4,
        lr_scheduler: "cosine".into(),
        optimizer: "AdamW".into(),
        num_train_images: 12,
        epoch: 3,
        steps: 36,
        seed: 42,
        training_started_at: 1_700_000_000,
        output_name: "test".into(),
        ..KohyaMetadata::default()
    }
}

#[test]
fn kohya_layout_metadata_and_round_trip() {
    let device = Device::flex();
    let mut unet = adapted(&device);
    let dir = std::env::temp_dir().join(format!("loraflow-kohya-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lora.safetensors");
    save_kohya(&mut unet, &path, &metadata(), SaveDtype::F32).unwrap();

    let file = TensorFile::open(&path).unwrap();
    let q = kohya_name("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    assert_eq!(
        q,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    );
    assert_eq!(
        file.shape(&format!("{q}.lora_down.weight")),
        Some(&[4, 8][..])
    );
    assert_eq!(
        file.shape(&format!("{q}.lora_up.weight")),
        Some(&[8, 4][..])
    );
    assert_eq!(file.shape(&format!("{q}.alpha")), Some(&[][..]));
    let conv = kohya_name("down_blocks.0.resnets.0.conv1");
    assert_eq!(
        file.shape(&format!("{conv}.lora_down.weight")),
        Some(&[2, 8, 3, 3][..])
    );
    assert_eq!(
        file.shape(&format!("{conv}.lora_up.weight")),
        Some(&[8, 2, 1, 1][..])
    );
    assert_eq!(file.read(&format!("{conv}.alpha")).unwrap().data, vec![1.0]);
    // SD1's proj_in is a 1×1 convolution: 4-D factors, like sd-scripts writes them.
    let proj = kohya_name("down_blocks.0.attentions.0.proj_in");
    assert_eq!(
        file.shape(&format!("{proj}.lora_down.weight")),
        Some(&[4, 8, 1, 1][..])
    );

    let meta = file.metadata();
    for (k, v) in [
        ("ss_network_module", "networks.lora"),
        ("ss_network_dim", "4"),
        ("ss_network_alpha", "2.0"),
        ("ss_base_model_version", "sd_v1"),
        ("ss_learning_rate", "0.0001"),
        ("ss_num_train_images", "12"),
        ("ss_epoch", "3"),
        ("ss_steps", "36"),
        ("ss_seed", "42"),
        ("ss_training_started_at", "1700000000"),
        ("ss_v2", "False"),
    ] {
        assert_eq!(meta.get(k).map(String::as_str), Some(v), "{k}");
    }
    let args: serde_json::Value = serde_json::from_str(&meta["ss_network_args"]).unwrap();
    assert_eq!(args["conv_dim"], "2");
    assert_eq!(meta["sshs_model_hash"].len(), 64);

    let mut fresh = base(&device);
    let loaded = load_kohya(&mut fresh, &path, &device).unwrap();
    assert_eq!(
        loaded.modules.len(),
        unet.layers()
            .iter()
            .filter(|(_, l)| l.has_adapter())
            .count()
    );
    let a: Vec<_> = unet.layers().iter().map(|(_, l)| l.factors()).collect();
    let b: Vec<_> = fresh.layers().iter().map(|(_, l)| l.factors()).collect();
    assert_eq!(a, b, "f32 round trip is exact");
    assert!(max_abs_diff(&run(&unet, &device), &run(&fresh, &device)) == 0.0);

    // fp16 files load to within fp16 rounding.
    let half = dir.join("lora16.safetensors");
    save_kohya(&mut unet, &half, &metadata(), SaveDtype::F16).unwrap();
    let mut fresh16 = base(&device);
    load_kohya(&mut fresh16, &half, &device).unwrap();
    assert!(max_abs_diff(&run(&unet, &device), &run(&fresh16, &device)) < 1e-2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn merging_equals_running_with_the_adapter() {
    let device = Device::flex();
    let mut unet = adapted(&device);
    let with_adapter = run(&unet, &device);
    let plain = run(&base(&device), &device);
    assert!(
        max_abs_diff(&with_adapter, &plain) > 1e-2,
        "adapters must matter"
    );
    merge_lora(&mut unet);
    assert!(unet.layers().iter().all(|(_, l)| !l.has_adapter()));
    let merged = run(&unet, &device);
    let err = max_abs_diff(&with_adapter, &merged);
    assert!(err <= 1e-5, "merged output differs by {err}");
}

#[test]
fn peft_export_folds_the_scale_and_reloads() {
    let device = Device::flex();
    let mut unet = adapted(&device);
    let dir = std::env::temp_dir().join(format!("loraflow-peft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pytorch_lora_weights.safetensors");
    save_peft(&mut unet, &path, "unet", SaveDtype::F32).unwrap();
    let file = TensorFile::open(&path).unwrap();
    let key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight";
    assert_eq!(file.shape(key), Some(&[4, 8][..]));
    let meta: serde_json::Value =
        serde_json::from_str(&file.metadata()["lora_adapter_metadata"]).unwrap();
    assert_eq!(meta["unet.r"], 4);
    assert_eq!(meta["unet.lora_alpha"], 4);
    assert_eq!(
        meta["unet.rank_pattern"]["down_blocks.0.resnets.0.conv1"],
        2
    );

    // Loaded with PEFT's default alpha = r, the output is the original one.
    let mut fresh = base(&device);
    load_peft(&mut fresh, &path, "unet", None, &device).unwrap();
    let err = max_abs_diff(&run(&unet, &device), &run(&fresh, &device));
    assert!(err <= 1e-5, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_lora_files_are_named() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("loraflow-badlora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, tensors: Vec<(String, HostTensor)>| {
        let p = dir.join(name);
        tensor_file::write(&p, &tensors, HashMap::new(), SaveDtype::F32).unwrap();
        p
    };
    let z = |shape: Vec<usize>| {
        let n = shape.iter().product();
        HostTensor::new(shape, vec![0.0; n])
    };
    let unknown = write(
        "unknown.safetensors",
        vec![
            ("lora_unet_nowhere.lora_down.weight".into(), z(vec![2, 8])),
            ("lora_unet_nowhere.lora_up.weight".into(), z(vec![8, 2])),
        ],
    );
    let err = load_kohya(&mut base(&device), &unknown, &device).unwrap_err();
    assert!(matches!(err, Error::InvalidLora { .. }));
    assert!(
        err.to_string()
            .contains("`lora_unet_nowhere` names no layer"),
        "{err}"
    );

    let q = kohya_name("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
    let misshaped = write(
        "misshaped.safetensors",
        vec![
            (format!("{q}.lora_down.weight"), z(vec![2, 9])),
            (format!("{q}.lora_up.weight"), z(vec![8, 2])),
        ],
    );
    let err = load_kohya(&mut base(&device), &misshaped, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("down [2, 9]") && err.contains("expected down [2, 8]"),
        "{err}"
    );

    let loha = write(
        "loha.safetensors",
        vec![(format!("{q}.hada_w1_a"), z(vec![2, 8]))],
    );
    let err = load_kohya(&mut base(&device), &loha, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hada_w1_a") && err.contains("not plain LoRA"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_or_misshaped_base_tensors_are_named() {
    let device = Device::flex();
    let file = TensorFile::open(fixture("lora_step/diffusion_pytorch_model.safetensors")).unwrap();
    let dir = std::env::temp_dir().join(format!("loraflow-badbase-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let victim = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let mut tensors: Vec<(String, HostTensor)> = file
        .names()
        .into_iter()
        .filter(|n| n != victim)
        .map(|n| {
            let t = file.read(&n).unwrap();
            (n, t)
        })
        .collect();
    let missing = dir.join("missing.safetensors");
    tensor_file::write(&missing, &tensors, HashMap::new(), SaveDtype::F16).unwrap();
    let err = config().init(&device).load_diffusers(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == victim),
        "{err}"
    );

    // Several missing: the first in model order is named, not the first in the file (whose
    // keys are sorted) nor the first removed.
    let gone = [
        "up_blocks.1.resnets.0.conv1.weight",
        "conv_out.weight",
        victim,
        "time_embedding.linear_1.weight",
        "down_blocks.1.resnets.0.time_emb_proj.weight",
    ];
    let order = config().init(&device).diffusers_keys();
    let first = order
        .iter()
        .find(|k| gone.contains(&k.as_str()))
        .expect("the removed tensors are parameters");
    let alphabetical = gone.iter().min().unwrap();
    assert_ne!(
        first.as_str(),
        *alphabetical,
        "the case must tell the orders apart"
    );
    assert_ne!(first.as_str(), gone[0]);
    let several: Vec<(String, HostTensor)> = tensors
        .iter()
        .filter(|(n, _)| !gone.contains(&n.as_str()))
        .cloned()
        .collect();
    let path = dir.join("several-missing.safetensors");
    tensor_file::write(&path, &several, HashMap::new(), SaveDtype::F32).unwrap();
    let err = config().init(&device).load_diffusers(&path).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == first),
        "expected {first} to be named: {err}"
    );
    assert!(err.to_string().contains(first.as_str()), "{err}");

    tensors.push((
        victim.to_string(),
        HostTensor::new(vec![16, 13], vec![0.0; 208]),
    ));
    let misshaped = dir.join("misshaped.safetensors");
    tensor_file::write(&misshaped, &tensors, HashMap::new(), SaveDtype::F32).unwrap();
    let err = config()
        .init(&device)
        .load_diffusers(&misshaped)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(victim) && err.contains("[16, 13]") && err.contains("expected [16, 12]"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn adapter_paths_are_diffusers_module_paths() {
    // Every adaptable layer's path + ".weight" is a key of a real diffusers checkpoint, so
    // target patterns and kohya names use diffusers' module names.
    let device = Device::flex();
    let file =
        TensorFile::open(fixture("unet_c/diffusion_pytorch_model.bf16.safetensors")).unwrap();
    let c = UNetConfig::from_file(fixture("unet_c/config.json")).unwrap();
    let mut unet = c.init(&device);
    let keys: std::collections::HashSet<String> = file.names().into_iter().collect();
    let ours: std::collections::HashSet<String> = unet.diffusers_keys().into_iter().collect();
    assert_eq!(
        ours, keys,
        "the model has exactly the checkpoint's parameters"
    );
    for (path, _) in unet.layers() {
        assert!(keys.contains(&format!("{path}.weight")), "{path}");
    }
}

#[test]
fn typo_in_targets_is_reported() {
    let device = Device::flex();
    let network = NetworkConfig::new(4, 4.0).with_targets(&["to_q", "attn3.to_k"]);
    let err = apply_lora(base(&device), &network, 0, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"attn3.to_k\"") && err.contains("matches no layer"),
        "{err}"
    );
}

/// The fixture pipeline with random-up adapters on the UNet's attention and the text
/// encoder's attention and MLP (kohya's text-encoder targets).
fn adapted_pipeline(device: &Device) -> StableDiffusion {
    let mut sd = StableDiffusion::load(fixture("pipeline"), None, device).unwrap();
    let (unet, _) = apply_lora(sd.unet, &NetworkConfig::new(4, 2.0), 1, device).unwrap();
    let te_network = NetworkConfig::new(2, 1.0).with_targets(TE_TARGETS);
    let (te, _) = apply_lora(sd.text_encoder, &te_network, 2, device).unwrap();
    sd.unet = unet;
    sd.text_encoder = te;
    let mut rng = SeededRng::new(6, Stream::Noise);
    let mut parts: [Part<'_>; 2] = [("", &mut sd.unet), ("", &mut sd.text_encoder)];
    for (_, model) in parts.iter_mut() {
        for (path, mut layer) in model.layers() {
            if let Some((down, up, alpha)) = layer.factors() {
                let up = HostTensor::new(up.shape.clone(), rng.normal(up.data.len()));
                layer.set_factors(&path, down, up, alpha, device).unwrap();
            }
        }
    }
    sd
}

/// Text states and a UNet output of `sd` on fixed inputs.
fn pipeline_outputs(sd: &StableDiffusion, device: &Device) -> (HostTensor, HostTensor) {
    let ids = ids_tensor(&[sd.tokenizer.encode_padded("a red circle")], device);
    let context = sd.text_encoder.forward(ids, 1).unwrap();
    let mut rng = SeededRng::new(8, Stream::Noise);
    let x: Tensor<4> = HostTensor::new(vec![1, 4, 8, 8], rng.normal(256)).to_tensor(device);
    let t = Tensor::<1>::from_data([300.0f32], device);
    (
        HostTensor::from_tensor(context.clone()),
        HostTensor::from_tensor(sd.unet.forward(x, t, context)),
    )
}

#[test]
fn peft_export_holds_the_text_encoder_like_diffusers_save_lora_weights() {
    let device = Device::flex();
    let mut sd = adapted_pipeline(&device);
    let dir = std::env::temp_dir().join(format!("loraflow-peft-te-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pytorch_lora_weights.safetensors");
    save_peft_parts(
        &mut [
            (PEFT_UNET, &mut sd.unet as &mut dyn LoraLayers),
            (PEFT_TEXT_ENCODER, &mut sd.text_encoder),
        ],
        &path,
        SaveDtype::F32,
    )
    .unwrap();

    // One file: `unet.` and `text_encoder.` keys (transformers module paths under the
    // latter), each component's PEFT config packed under its prefix.
    let file = TensorFile::open(&path).unwrap();
    let names = file.names();
    let q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
    assert_eq!(
        file.shape(&format!("{q}.lora_A.weight")),
        Some(&[2, 32][..])
    );
    assert_eq!(
        file.shape(&format!("{q}.lora_B.weight")),
        Some(&[32, 2][..])
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("text_encoder.") && n.contains("mlp.fc2"))
    );
    let unet_keys = names.iter().filter(|n| n.starts_with("unet.")).count();
    let te_keys = names
        .iter()
        .filter(|n| n.starts_with("text_encoder."))
        .count();
    assert_eq!(unet_keys + te_keys, names.len());
    assert!(unet_keys > 0 && te_keys > 0);
    let meta: serde_json::Value =
        serde_json::from_str(&file.metadata()["lora_adapter_metadata"]).unwrap();
    assert_eq!(meta["unet.r"], 4);
    assert_eq!(meta["text_encoder.r"], 2);
    assert_eq!(meta["text_encoder.lora_alpha"], 2);
    assert!(
        meta["text_encoder.target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "text_model.encoder.layers.1.mlp.fc1")
    );

    // Both load back into a fresh pipeline and reproduce its text states and UNet output.
    let (want_text, want_unet) = pipeline_outputs(&sd, &device);
    let base = StableDiffusion::load(fixture("pipeline"), None, &device).unwrap();
    let (base_text, _) = pipeline_outputs(&base, &device);
    assert!(
        max_abs_diff(&want_text, &base_text) > 1e-3,
        "adapters must matter"
    );
    let mut fresh = base.clone();
    let loaded = load_peft_parts(
        &mut [
            (PEFT_UNET, &mut fresh.unet as &mut dyn LoraLayers),
            (PEFT_TEXT_ENCODER, &mut fresh.text_encoder),
        ],
        &path,
        None,
        &device,
    )
    .unwrap();
    assert_eq!(loaded.modules.len() * 2, names.len());
    assert!(loaded.modules.iter().any(|m| m == q));
    assert!(loaded.skipped.is_empty());
    let (text, unet) = pipeline_outputs(&fresh, &device);
    assert!(max_abs_diff(&text, &want_text) <= 1e-5);
    assert!(max_abs_diff(&unet, &want_unet) <= 1e-5);

    // Loading the UNet alone leaves the text encoder's keys, listed.
    let mut unet_only = base.unet.clone();
    let loaded = load_peft(&mut unet_only, &path, PEFT_UNET, None, &device).unwrap();
    assert_eq!(loaded.modules.len() * 2, unet_keys);
    assert_eq!(loaded.skipped.len(), te_keys);
    assert!(
        loaded
            .skipped
            .iter()
            .all(|k| k.starts_with("text_encoder."))
    );
    std::fs::remove_dir_all(&dir).ok();
}
