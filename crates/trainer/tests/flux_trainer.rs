//! The [`Trainer`] on the tiny FLUX.1 fixture folder: images encoded once by the Flux VAE,
//! captions once by T5 and CLIP, the flow-matching objective on the transformer's adapters,
//! a validation loss at fixed σ, and per-epoch files in kohya's Flux format that
//! `load_flux_kohya` reads back; samples through the Flux sampler; `save_now`, `sample_now`
//! and cancel between steps; resuming; and the settings a Flux run cannot honour refused by
//! name.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::Device;
use common::fixture;
use image::{Rgb, RgbImage};
use loraflow_trainer::data::ImageDatasetConfig;
use loraflow_trainer::flux::lora::{BASE_MODEL_VERSION, FLUX_TARGETS, load_flux_kohya};
use loraflow_trainer::flux::{FluxTransformer2DModel, FluxTransformerConfig};
use loraflow_trainer::lora::NetworkConfig;
use loraflow_trainer::tensor_file::TensorFile;
use loraflow_trainer::train::config::{SampleConfig, TextEncoderTraining};
use loraflow_trainer::train::flow::FlowObjective;
use loraflow_trainer::train::validation::ValidationConfig;
use loraflow_trainer::{Controls, Error, ProgressEvent, SaveReason, TrainConfig, Trainer};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-flux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A disc of `colour` on white.
fn picture(size: u32, colour: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        let (cx, cy, r) = (size as i32 / 2, size as i32 / 2, size as i32 / 3);
        if (x as i32 - cx).pow(2) + (y as i32 - cy).pow(2) < r * r {
            Rgb(colour)
        } else {
            Rgb([245, 245, 250])
        }
    })
}

/// Three captioned pictures in `dir`.
fn dataset(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, colour, caption) in [
        ("red", [200, 40, 30], "a red disc on white"),
        ("green", [30, 180, 60], "a green disc on white"),
        ("blue", [30, 60, 200], "a blue disc on white"),
    ] {
        picture(32, colour)
            .save(dir.join(format!("{name}.png")))
            .unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), caption).unwrap();
    }
}

fn config(data: &Path, out: &Path) -> TrainConfig {
    let mut images = ImageDatasetConfig::new(data, 32);
    images.captions.dropout = 0.2;
    let mut c = TrainConfig::for_images(fixture("flux/pipeline"), images, out, "tinyflux");
    c.network = NetworkConfig::new(4, 4.0).with_targets(FLUX_TARGETS);
    c.optimizer.learning_rate = 1e-2;
    c.epochs = 3;
    c.output.save_every_n_epochs = Some(1);
    c.max_grad_norm = Some(1.0);
    c.seed = 7;
    c
}

/// Two steps of the Flux sampler at 32 px.
fn samples(prompt: &str, every_n_epochs: Option<usize>) -> SampleConfig {
    SampleConfig {
        prompts: vec![prompt.to_string()],
        negative_prompt: String::new(),
        steps: 2,
        guidance_scale: 3.5,
        sampler: Default::default(),
        seed: 1,
        size: Some(32),
        height: None,
        every_n_epochs,
    }
}

fn base_transformer(device: &Device) -> FluxTransformer2DModel {
    FluxTransformerConfig::from_file(fixture("flux/pipeline/transformer/config.json"))
        .unwrap()
        .init(device)
        .load_diffusers(fixture(
            "flux/pipeline/transformer/diffusion_pytorch_model.safetensors",
        ))
        .unwrap()
}

#[test]
fn flux_images_train_to_kohya_flux_epoch_files() {
    let root = tmp("train");
    let data = root.join("data");
    dataset(&data);
    let out = root.join("out");
    let mut c = config(&data, &out);
    let mut v = ValidationConfig::split(0.0);
    v.count = Some(1);
    c.validation = Some(v);
    // Rendered after the last epoch, from the prompt's states cached before training.
    c.sample = Some(samples("a disc", Some(3)));
    let trainer = Trainer::new(c).unwrap();
    assert_eq!(trainer.flow_objective(), Some(&FlowObjective::default()));
    assert_eq!(trainer.validation_images().len(), 1);
    let (per_epoch, total) = trainer.plan();
    assert_eq!((per_epoch, total), (2, 6));

    let mut events = Vec::new();
    let output = trainer
        .run(&mut |e: ProgressEvent| events.push(e), &Controls::default())
        .unwrap();
    assert_eq!(output.steps, 6);
    assert!(
        output.losses.iter().all(|l| l.is_finite()),
        "{:?}",
        output.losses
    );
    assert!(output.trainable_params > 0);
    // The double block: 8 attention projections and 4 feed-forward layers; the single
    // block: q, k, v, proj_mlp and proj_out.
    assert_eq!(
        output.adapted_modules.len(),
        17,
        "{:?}",
        output.adapted_modules
    );
    // Every distinct caption (and the empty one, for dropout) was encoded once.
    let text_items = events
        .iter()
        .filter(|e| matches!(e, ProgressEvent::Preparing { stage: "text", .. }))
        .count();
    // ... and the sample prompt.
    assert_eq!(text_items, 5);
    assert_eq!(output.samples.len(), 1);
    assert_eq!((output.samples[0].epoch, output.samples[0].step), (3, 6));
    let png = image::open(&output.samples[0].paths[0]).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (32, 32));

    // Epochs 1 and 2, then the final file (epoch 3).
    let epochs: Vec<(usize, SaveReason)> =
        output.saved.iter().map(|s| (s.epoch, s.reason)).collect();
    assert_eq!(
        epochs,
        [
            (1, SaveReason::Epoch),
            (2, SaveReason::Epoch),
            (3, SaveReason::Final)
        ]
    );
    // The base model's validation loss, then one per file.
    assert_eq!(output.validation.len(), 4);
    assert_eq!(output.validation[0].epoch, 0);
    assert!(output.validation.iter().all(|v| v.loss.is_finite()));
    assert!(output.saved.iter().all(|s| s.validation_loss.is_some()));

    let device = Device::flex();
    for saved in &output.saved {
        assert!(saved.state.as_ref().unwrap().join("state.json").is_file());
        let file = TensorFile::open(&saved.path).unwrap();
        let meta = file.metadata();
        assert_eq!(meta["ss_base_model_version"], BASE_MODEL_VERSION);
        assert_eq!(meta["modelspec.architecture"], "flux-1-dev/lora");
        assert_eq!(meta["ss_timestep_sampling"], "flux_shift");
        assert_eq!(meta["ss_model_prediction_type"], "raw");
        assert_eq!(meta["ss_guidance_scale"], "1");
        assert_eq!(meta["ss_epoch"], saved.epoch.to_string());
        let names = file.names();
        for key in [
            "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
            "lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight",
            "lora_unet_double_blocks_0_img_mlp_0.alpha",
            "lora_unet_single_blocks_0_linear1.lora_up.weight",
            "lora_unet_single_blocks_0_linear2.lora_down.weight",
        ] {
            assert!(names.iter().any(|n| n == key), "{key} missing: {names:?}");
        }
        // Trained: the up factors (zero at the start) have moved.
        let up = file
            .read("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight")
            .unwrap();
        assert!(up.data.iter().any(|v| *v != 0.0), "epoch {}", saved.epoch);
        let mut model = base_transformer(&device);
        let loaded = load_flux_kohya(&mut model, &saved.path, 1.0, &device).unwrap();
        assert_eq!(loaded.modules.len(), 17, "{:?}", loaded.modules);
    }
    // Later epochs moved further from the start.
    let up = |i: usize| {
        TensorFile::open(&output.saved[i].path)
            .unwrap()
            .read("lora_unet_single_blocks_0_linear2.lora_up.weight")
            .unwrap()
    };
    assert_ne!(up(0).data, up(2).data);
    assert_eq!(output.lora, output.saved[2].path);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_resumed_flux_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let root = tmp("resume");
    let data = root.join("data");
    dataset(&data);
    let mut c = config(&data, &root.join("whole"));
    c.epochs = 2;
    let whole = Trainer::new(c.clone())
        .unwrap()
        .run(&mut |_: ProgressEvent| {}, &Controls::default())
        .unwrap();
    assert_eq!(whole.saved[0].epoch, 1);
    // The same run, continued from the state written after its first epoch.
    c.output.dir = root.join("resumed");
    c.resume = whole.saved[0].state.clone();
    let resumed = Trainer::new(c)
        .unwrap()
        .run(&mut |_: ProgressEvent| {}, &Controls::default())
        .unwrap();
    assert_eq!(resumed.resumed_from, Some(3));
    assert_eq!(resumed.losses, whole.losses);
    let (a, b) = (
        TensorFile::open(&whole.lora).unwrap(),
        TensorFile::open(&resumed.lora).unwrap(),
    );
    for name in a.names() {
        assert_eq!(a.read(&name).unwrap(), b.read(&name).unwrap(), "{name}");
    }
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn an_epochs_short_last_flux_group_is_divided_by_the_configured_accumulation() {
    // Three micro-batches per epoch. Accumulating 4 leaves one group of 3 whose summed
    // gradient is divided by 4 (accelerate's rule, as the UNet run does: sd-scripts' last group
    // of an epoch weighs k/N); accumulating 3 divides the same sum by 3. Same initial weights,
    // shuffle, captions and draws: the gradient norms before clipping are exactly 3:4.
    let root = tmp("short-group");
    let data = root.join("data");
    dataset(&data);
    let first_norm = |accumulation: usize| {
        let mut c = config(&data, &root.join(format!("acc{accumulation}")));
        c.batch_size = 1;
        c.gradient_accumulation_steps = accumulation;
        c.epochs = 1;
        c.images.as_mut().unwrap().captions.dropout = 0.0;
        let trainer = Trainer::new(c).unwrap();
        assert_eq!(trainer.plan(), (1, 1));
        let mut norms = Vec::new();
        trainer
            .run(
                &mut |e: ProgressEvent| {
                    if let ProgressEvent::Step(p) = e {
                        norms.push(p.grad_norm);
                    }
                },
                &Controls::default(),
            )
            .unwrap();
        assert_eq!(norms.len(), 1);
        norms[0]
    };
    let full = first_norm(3);
    let short = first_norm(4);
    assert!(full > 0.0);
    let ratio = short / full;
    assert!((ratio - 0.75).abs() <= 1e-6, "{short} / {full} = {ratio}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_bfl_transformer_file_trains_as_its_diffusers_folder() {
    // ComfyUI users' `flux1-dev.safetensors` (BFL names) with a diffusers FLUX.1 folder for
    // the text encoders, VAE, configs and tokenizers (`model.config_dir`), as the sample step
    // takes it. The fixture file holds the folder's transformer exactly, so the run is the
    // folder's, loss for loss and factor for factor.
    let root = tmp("single-file");
    let data = root.join("data");
    dataset(&data);
    let mut c = config(&data, &root.join("folder"));
    c.epochs = 2;
    let folder = Trainer::new(c.clone())
        .unwrap()
        .run(&mut |_: ProgressEvent| {}, &Controls::default())
        .unwrap();

    let file = fixture("flux/single_file/flux1-tiny-dev.safetensors");
    c.model.path = Some(file.clone());
    c.output.dir = root.join("file");
    // Without its parts the file is not taken for a whole model.
    let mut alone = c.clone();
    alone.model.config_dir = None;
    let err = Trainer::new(alone).unwrap_err().to_string();
    assert!(err.contains("model.config_dir"), "{err}");

    c.model.config_dir = Some(fixture("flux/pipeline"));
    let trainer = Trainer::new(c).unwrap();
    assert_eq!(trainer.flow_objective(), Some(&FlowObjective::default()));
    let single = trainer
        .run(&mut |_: ProgressEvent| {}, &Controls::default())
        .unwrap();
    assert_eq!(single.losses, folder.losses);
    assert_eq!(single.adapted_modules, folder.adapted_modules);
    let (a, b) = (
        TensorFile::open(&folder.lora).unwrap(),
        TensorFile::open(&single.lora).unwrap(),
    );
    assert_eq!(a.names(), b.names());
    for name in a.names() {
        assert_eq!(a.read(&name).unwrap(), b.read(&name).unwrap(), "{name}");
    }
    assert_eq!(
        b.metadata()["ss_sd_model_name"],
        "flux1-tiny-dev.safetensors"
    );
    assert_eq!(b.metadata()["ss_base_model_version"], BASE_MODEL_VERSION);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn save_now_and_cancel_act_between_flux_steps() {
    let root = tmp("cancel");
    let data = root.join("data");
    dataset(&data);
    let out = root.join("out");
    let mut c = config(&data, &out);
    c.epochs = 5;
    let trainer = Trainer::new(c).unwrap();
    let controls = Arc::new(Controls::default());
    controls.request_save();
    // A prompt the run did not encode before dropping its text encoders.
    controls.request_sample_with(samples("a yellow square", None));
    let remote = controls.clone();
    let mut steps = 0;
    let mut saved = Vec::new();
    let mut sampled = Vec::new();
    let err = trainer
        .run(
            &mut |e: ProgressEvent| match e {
                ProgressEvent::Step(p) => {
                    steps = p.step;
                    if p.step == 2 {
                        remote.cancel();
                    }
                }
                ProgressEvent::Saved(s) => saved.push(s),
                ProgressEvent::Sampled(s) => sampled.push(s),
                _ => {}
            },
            &controls,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { completed_steps: 2 }),
        "{err:?}"
    );
    assert_eq!(steps, 2);
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].reason, SaveReason::Requested);
    assert_eq!(saved[0].step, 0);
    assert!(saved[0].path.is_file());
    assert_eq!(sampled.len(), 1);
    assert_eq!(sampled[0].step, 0);
    assert!(sampled[0].paths[0].is_file());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn what_a_flux_run_cannot_do_is_refused_by_name() {
    let root = tmp("refuse");
    let data = root.join("data");
    dataset(&data);
    let out = root.join("out");
    let refused = |edit: &dyn Fn(&mut TrainConfig), field: &str, says: &str| {
        let mut c = config(&data, &out);
        edit(&mut c);
        let err = Trainer::new(c).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{field}`")) && err.contains(says),
            "{field}: {err}"
        );
    };
    // The fixture's VAE halves, and latents are packed 2×2: sides are multiples of 4.
    refused(
        &|c| c.images.as_mut().unwrap().resolution = 30,
        "dataset.resolution",
        "multiple of 4",
    );
    // (2048 / 4)² image tokens is beyond what the transformer takes.
    refused(
        &|c| c.images.as_mut().unwrap().resolution = 2048,
        "dataset.resolution",
        "the largest resolution for this model is 1024",
    );
    refused(
        &|c| c.text_encoder = Some(TextEncoderTraining::new(1e-4)),
        "text_encoder",
        "not trained",
    );
    refused(
        &|c| c.images.as_mut().unwrap().captions.shuffle_tags = true,
        "dataset.captions.shuffle_tags",
        "cached",
    );
    refused(
        &|c| c.objective.min_snr_gamma = Some(5.0),
        "objective.min_snr_gamma",
        "flow matching",
    );
    refused(&|c| c.clip_skip = 2, "clip_skip", "T5");
    refused(
        &|c| {
            c.objective.flow = Some(FlowObjective {
                guidance: -1.0,
                ..FlowObjective::default()
            })
        },
        "objective.flow.guidance",
        "-1",
    );
    // The flow objective belongs to FLUX.1.
    let mut c = TrainConfig::for_images(
        fixture("pipeline"),
        ImageDatasetConfig::new(&data, 32),
        &out,
        "sd",
    );
    c.objective.flow = Some(FlowObjective::default());
    let err = Trainer::new(c).unwrap_err().to_string();
    assert!(err.contains("`objective.flow`"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}
