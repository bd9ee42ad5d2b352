//! The [`Trainer`] on the tiny SDXL fixture model: an image folder encoded through both text
//! encoders and the SDXL VAE, sd-scripts' per-image micro-conditioning, caption dropout,
//! adapters on the UNet and both encoders, samples through the SDXL pipeline, and epoch files in kohya's SDXL format that load back
//! and lower the loss of the image they were trained on; a killed run resumes to the same
//! weights.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use common::fixture;
use image::{Rgb, RgbImage};
use loraflow_trainer::data::ImageDatasetConfig;
use loraflow_trainer::data::bucket::fit_to_bucket;
use loraflow_trainer::lora::{NetworkConfig, targets};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::schedule::Prediction;
use loraflow_trainer::sdxl::lora::BASE_MODEL_VERSION;
use loraflow_trainer::sdxl::{SizeConditioning, StableDiffusionXl, time_ids_tensor};
use loraflow_trainer::tensor_file::TensorFile;
use loraflow_trainer::train::config::{SampleConfig, TextEncoderTraining};
use loraflow_trainer::train::step::{Objective, StepNoise, diffusion_loss_added};
use loraflow_trainer::train::validation::ValidationConfig;
use loraflow_trainer::unet::AddedConditions;
use loraflow_trainer::{Controls, Error, ProgressEvent, SaveReason, TrainConfig, Trainer};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-xl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let inside = (x as i32 - w as i32 / 2).pow(2) + (y as i32 - h as i32 / 2).pow(2)
            < (w.min(h) as i32 / 3).pow(2);
        if inside {
            Rgb([200, 40, 30])
        } else {
            Rgb([240, 240, 250])
        }
    })
}

const CAPTION: &str = "red circle, white background";

/// The mean loss of the model on `image` over eight fixed noise draws and timesteps.
fn fixed_loss(model: &StableDiffusionXl, image: &RgbImage, device: &Device) -> f32 {
    let n = 8;
    let pixels: Tensor<4> = fit_to_bucket(image, (32, 32))
        .to_tensor::<3>(device)
        .unsqueeze_dim(0);
    let latents = model.vae.encode_latents(pixels).repeat_dim(0, n);
    let captions = vec![CAPTION; n];
    let text = model
        .text
        .encode(&model.tokenizers.encode_batch(&captions), device)
        .unwrap();
    let size = SizeConditioning::for_bucket((48, 48), (32, 32), false);
    let added = AddedConditions {
        text_embeds: text.pooled,
        time_ids: time_ids_tensor(&vec![size; n], device),
    };
    let mut rng = SeededRng::new(99, Stream::Noise);
    let noise = StepNoise::sample(&mut rng, latents.dims(), 1000);
    let objective = Objective {
        prediction: Prediction::Epsilon,
        noise_offset: 0.0,
        min_snr_gamma: None,
    };
    let schedule = model.config.scheduler.noise_schedule().unwrap();
    diffusion_loss_added(
        &model.unet,
        &schedule,
        &objective,
        latents,
        text.context,
        Some(&added),
        &noise,
    )
    .unwrap()
    .into_scalar::<f32>()
}

fn config(data: &Path, out: &Path) -> TrainConfig {
    let mut images = ImageDatasetConfig::new(data, 32);
    images.captions.dropout = 0.1;
    let mut c = TrainConfig::for_images(fixture("sdxl/pipeline"), images, out, "tinyxl");
    // The tiny UNet has 2–4 channels per level: adapt its convolutions too.
    let all: Vec<&str> = targets::TRANSFORMER
        .iter()
        .chain(targets::CONV)
        .copied()
        .collect();
    c.network = NetworkConfig::new(4, 4.0).with_targets(&all);
    c.text_encoder = Some(TextEncoderTraining::new(1e-3));
    c.optimizer.learning_rate = 2e-2;
    c.batch_size = 1;
    c.epochs = 4;
    c.output.save_every_n_epochs = Some(2);
    c.max_grad_norm = Some(1.0);
    c.seed = 5;
    c
}

#[test]
fn sdxl_images_train_to_kohya_sdxl_epoch_files_that_lower_the_loss() {
    let root = tmp("train");
    let data = root.join("data").join("10_circle");
    std::fs::create_dir_all(&data).unwrap();
    // 48×48 in a 32×32 bucket: original size 48, no crop, target 32.
    let image = picture(48, 48);
    image.save(data.join("a.png")).unwrap();
    std::fs::write(data.join("a.txt"), CAPTION).unwrap();
    let out = root.join("out");
    let mut c = config(&root.join("data"), &out);
    // Samples of the final adapters, through the SDXL pipeline.
    c.sample = Some(SampleConfig {
        prompts: vec![CAPTION.into()],
        negative_prompt: String::new(),
        steps: 2,
        guidance_scale: 3.0,
        sampler: Default::default(),
        seed: 5,
        size: None,
        height: None,
        every_n_epochs: Some(4),
    });
    let mut skip = config(&root.join("data"), &out);
    skip.clip_skip = 2;
    let err = Trainer::new(skip).unwrap_err().to_string();
    assert!(err.contains("clip_skip"), "{err}");
    let trainer = Trainer::new(c).unwrap();
    assert_eq!(trainer.plan(), (10, 40));

    let mut events = Vec::new();
    let result = trainer
        .run(
            &mut |e: ProgressEvent| events.push(e),
            &loraflow_trainer::NeverCancel,
        )
        .unwrap();
    assert_eq!(result.steps, 40);
    assert_eq!(result.samples.len(), 1, "{:?}", result.samples);
    let sample = image::open(&result.samples[0].paths[0]).unwrap();
    assert_eq!((sample.width(), sample.height()), (32, 32));
    assert!(result.losses.iter().all(|l| l.is_finite()));
    assert!(
        result
            .adapted_modules
            .iter()
            .any(|m| m.starts_with("text_encoder_2.")),
        "{:?}",
        result.adapted_modules
    );
    let epochs: Vec<&PathBuf> = result
        .saved
        .iter()
        .filter(|s| s.reason == SaveReason::Epoch)
        .map(|s| &s.path)
        .collect();
    assert_eq!(epochs.len(), 1, "{:?}", result.saved);
    assert!(epochs[0].ends_with("tinyxl-000002.safetensors"));

    let device = Device::flex();
    let model = StableDiffusionXl::load_diffusers(fixture("sdxl/pipeline"), &device).unwrap();
    for path in epochs.into_iter().chain([&result.lora]) {
        let file = TensorFile::open(path).unwrap();
        let meta = file.metadata();
        assert_eq!(meta["ss_base_model_version"], BASE_MODEL_VERSION);
        assert_eq!(meta["ss_network_module"], "networks.lora");
        assert_eq!(meta["ss_caption_dropout_rate"], "0.1");
        let names = file.names();
        for prefix in [
            "lora_unet_input_blocks_",
            "lora_unet_middle_block_",
            "lora_te1_",
            "lora_te2_",
        ] {
            assert!(
                names.iter().any(|n| n.starts_with(prefix)),
                "no {prefix}* key in {}",
                path.display()
            );
        }
        // Every key of the file finds its module.
        let (_, loaded) = model.with_lora(path, 1.0, &device).unwrap();
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        assert_eq!(loaded.modules.len() * 2, names.len() - alphas(&names));
    }

    let base = fixed_loss(&model, &image, &device);
    let (trained, _) = model.with_lora(&result.lora, 1.0, &device).unwrap();
    let after = fixed_loss(&trained, &image, &device);
    println!("fixed-batch loss: base {base}, trained {after}");
    assert!(after < 0.9 * base, "loss did not fall: {base} → {after}");
}

#[test]
fn sdxl_validation_loss_uses_pooled_text_and_sizes_and_falls_as_the_model_fits() {
    let root = tmp("validation");
    let data = root.join("data").join("10_circle");
    std::fs::create_dir_all(&data).unwrap();
    picture(48, 48).save(data.join("a.png")).unwrap();
    std::fs::write(data.join("a.txt"), CAPTION).unwrap();
    // A held-out picture of the same subject at another size (its own size values).
    let held = root.join("held");
    std::fs::create_dir_all(&held).unwrap();
    picture(40, 40).save(held.join("b.png")).unwrap();
    std::fs::write(held.join("b.txt"), CAPTION).unwrap();
    let mut c = config(&root.join("data"), &root.join("out"));
    let mut v = ValidationConfig::split(0.0);
    v.dir = Some(held);
    v.seed = Some(7);
    c.validation = Some(v);
    let run = |c: TrainConfig| {
        let mut events = Vec::new();
        let result = Trainer::new(c)
            .unwrap()
            .run(
                &mut |e: ProgressEvent| events.push(e),
                &loraflow_trainer::NeverCancel,
            )
            .unwrap();
        let reported = events
            .iter()
            .filter(|e| matches!(e, ProgressEvent::Validated(_)))
            .count();
        (result, reported)
    };
    let (a, reported) = run(c.clone());
    assert_eq!(a.validation_images, vec!["b.png".to_string()]);
    let epochs: Vec<usize> = a.validation.iter().map(|p| p.epoch).collect();
    assert_eq!(epochs, vec![0, 2, 4], "{:?}", a.validation);
    assert_eq!(reported, 3);
    assert!(a.validation.iter().all(|p| p.loss.is_finite()));
    let (base, last) = (a.validation[0].loss, a.validation[2].loss);
    println!("SDXL validation loss: base {base}, epoch 4 {last}");
    assert!(last < base, "validation loss did not fall: {base} → {last}");
    // The base model's measurement depends on the validation seed only.
    let mut other = c;
    other.seed = 6;
    other.output.dir = root.join("other");
    let (b, _) = run(other);
    assert_eq!(b.validation[0], a.validation[0]);
    let _ = std::fs::remove_dir_all(&root);
}

/// The number of `.alpha` keys.
fn alphas(names: &[String]) -> usize {
    names.iter().filter(|n| n.ends_with(".alpha")).count()
}

#[test]
fn a_killed_sdxl_run_resumes_to_the_same_weights() {
    let root = tmp("resume");
    let data = root.join("data").join("2_circle");
    std::fs::create_dir_all(&data).unwrap();
    picture(40, 32).save(data.join("a.png")).unwrap();
    std::fs::write(data.join("a.txt"), CAPTION).unwrap();
    let config = |out: &Path| {
        let mut c = config(&root.join("data"), out);
        c.epochs = 3;
        c.output.save_every_n_epochs = Some(1);
        c.output.save_state = true;
        c
    };
    let full = Trainer::new(config(&root.join("full")))
        .unwrap()
        .run(&mut |_| {}, &loraflow_trainer::NeverCancel)
        .unwrap();
    assert_eq!(full.steps, 6);

    // Killed in epoch 2 after step 3: resumed from the epoch-1 state.
    let out = root.join("killed");
    let controls = Arc::new(Controls::default());
    let remote = controls.clone();
    let err = Trainer::new(config(&out))
        .unwrap()
        .run(
            &mut |e: ProgressEvent| {
                if matches!(&e, ProgressEvent::Step(p) if p.step == 3) {
                    remote.cancel();
                }
            },
            &controls,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { completed_steps: 3 }),
        "{err}"
    );
    let mut resumed = config(&out);
    resumed.resume = Some(out.join("tinyxl-000001.state"));
    let result = Trainer::new(resumed)
        .unwrap()
        .run(&mut |_| {}, &loraflow_trainer::NeverCancel)
        .unwrap();
    assert_eq!(result.resumed_from, Some(2));
    assert_eq!(result.losses, full.losses);
    let tensors = |p: &Path| {
        let f = TensorFile::open(p).unwrap();
        f.names()
            .into_iter()
            .map(|n| (n.clone(), f.read(&n).unwrap().data))
            .collect::<Vec<_>>()
    };
    assert_eq!(tensors(&result.lora), tensors(&full.lora));
}
