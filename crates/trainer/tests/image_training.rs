//! Training from a folder of images and captions on the tiny fixture pipeline: buckets, repeat
//! folders, text-encoder adapters (in kohya and PEFT files), kohya metadata, the model's
//! prediction type, caches, progress, `save_now`/`sample_now`, and resuming a killed run to the
//! same weights.
// These tests run on the CPU backend.
#![cfg(feature = "cpu")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use common::{fixture, max_abs_diff};
use image::{ImageFormat, Rgb, RgbImage};
use loraflow_trainer::clip::ids_tensor;
use loraflow_trainer::data::{CaptionOptions, ImageDatasetConfig};
use loraflow_trainer::lora::kohya::Part;
use loraflow_trainer::lora::{PEFT_TEXT_ENCODER, PEFT_UNET, load_peft_parts};
use loraflow_trainer::pipeline::StableDiffusion;
use loraflow_trainer::sample::png::read_png_text;
use loraflow_trainer::sample::scheduler::SamplerKind;
use loraflow_trainer::sample::{Pipeline, SampleSettings};
use loraflow_trainer::schedule::Prediction;
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::train::config::{SampleConfig, TextEncoderTraining};
use loraflow_trainer::{Controls, Error, ProgressEvent, SaveReason, TrainConfig, Trainer};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-img-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn picture(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let inside = (x as i32 - w as i32 / 2).pow(2) + (y as i32 - h as i32 / 2).pow(2)
            < (w.min(h) as i32 / 3).pow(2);
        if inside {
            Rgb([200, seed.wrapping_mul(40), 30])
        } else {
            Rgb([240, 240, 250 - seed])
        }
    })
}

/// `2_shapes/` (two captioned images, repeated twice) and a root image without a caption.
fn dataset(root: &Path) {
    let shapes = root.join("2_shapes");
    std::fs::create_dir_all(&shapes).unwrap();
    picture(32, 32, 1).save(shapes.join("a.png")).unwrap();
    std::fs::write(shapes.join("a.txt"), "red circle, white background\n").unwrap();
    picture(48, 32, 2)
        .save_with_format(shapes.join("b.webp"), ImageFormat::WebP)
        .unwrap();
    std::fs::write(shapes.join("b.caption"), "blue square, white background").unwrap();
    picture(32, 48, 3).save(root.join("c.jpg")).unwrap();
    std::fs::write(root.join("notes.md"), "not an image").unwrap();
}

fn config(data: &Path, out: &Path) -> TrainConfig {
    let mut images = ImageDatasetConfig::new(data, 32);
    images.trigger_word = Some("sks".into());
    let mut c = TrainConfig::for_images(fixture("pipeline"), images, out, "tiny");
    c.network.rank = 2;
    c.network.alpha = 2.0;
    c.text_encoder = Some(TextEncoderTraining::new(1e-3));
    c.optimizer.learning_rate = 1e-3;
    c.batch_size = 2;
    c.epochs = 3;
    c.output.save_every_n_epochs = Some(1);
    c.max_grad_norm = Some(1.0);
    c.seed = 11;
    c
}

fn adapters(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let file = TensorFile::open(path).unwrap();
    file.names()
        .into_iter()
        .map(|n| {
            let t = file.read(&n).unwrap();
            (n, t.data)
        })
        .collect()
}

#[test]
fn images_train_with_buckets_text_encoder_and_kohya_metadata() {
    let root = tmp("meta");
    let data = root.join("data");
    dataset(&data);
    let out = root.join("out");
    let mut c = config(&data, &out);
    c.sample = Some(SampleConfig {
        prompts: vec!["sks, red circle".into()],
        negative_prompt: String::new(),
        steps: 2,
        guidance_scale: 3.0,
        sampler: Default::default(),
        seed: 5,
        size: None,
        height: None,
        every_n_epochs: None,
    });
    c.output.peft = true;
    let trainer = Trainer::new(c.clone()).unwrap();
    // The fixture's scheduler config says epsilon; asking for v contradicts it.
    assert_eq!(trainer.objective().prediction, Prediction::Epsilon);
    let mut v = c.clone();
    v.objective.prediction = Some(Prediction::VPrediction);
    let err = Trainer::new(v).unwrap_err().to_string();
    assert!(err.contains("says prediction_type epsilon"), "{err}");
    assert_eq!(trainer.images().len(), 3);
    let c_entry = trainer.images().iter().find(|e| e.name == "c.jpg").unwrap();
    assert_eq!((c_entry.caption.as_str(), c_entry.repeats), ("sks", 1));
    // 2_shapes: a (square) and b (wide) twice each, c (tall) once: three buckets, 3 batches.
    assert_eq!(trainer.plan(), (3, 9));

    let controls = Arc::new(Controls::default());
    let remote = controls.clone();
    let mut events = Vec::new();
    let result = trainer
        .run(
            &mut |e: ProgressEvent| {
                if matches!(&e, ProgressEvent::Step(p) if p.step == 2) {
                    remote.request_sample();
                    remote.request_save();
                }
                events.push(e);
            },
            &controls,
        )
        .unwrap();
    assert_eq!(result.steps, 9);
    assert_eq!(result.epoch_losses.len(), 3);
    assert_eq!(result.examples_per_epoch, 5);
    assert!(
        result
            .adapted_modules
            .iter()
            .any(|m| m.starts_with("text_encoder."))
    );

    // Progress: every step reported with rates and an estimate.
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Step(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 9);
    assert!(steps.iter().all(|p| p.loss.is_finite()
        && p.smoothed_loss.is_finite()
        && p.samples_per_sec > 0.0
        && p.total_epochs == 3));
    assert!(events.iter().any(|e| matches!(
        e,
        ProgressEvent::Preparing {
            stage: "latents",
            done: 3,
            total: 3
        }
    )));

    // save_now and sample_now were honoured at the next step boundary (before step 3).
    let requested: Vec<_> = result
        .saved
        .iter()
        .filter(|s| s.reason == SaveReason::Requested)
        .collect();
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0].step, 2);
    assert_eq!(result.samples.len(), 1);
    assert_eq!(result.samples[0].step, 2);
    let text = read_png_text(&result.samples[0].paths[0]).unwrap();
    assert!(
        text.iter()
            .any(|(k, v)| k == "prompt" && v == "sks, red circle")
    );
    assert!(text.iter().any(|(k, v)| k == "seed" && v == "5"));

    // Two epoch files and the final one, each with a training state.
    let epochs: Vec<_> = result
        .saved
        .iter()
        .filter(|s| s.reason != SaveReason::Requested)
        .map(|s| {
            (
                s.epoch,
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
            )
        })
        .collect();
    assert_eq!(
        epochs,
        vec![
            (1, "tiny-000001.safetensors".to_string()),
            (2, "tiny-000002.safetensors".to_string()),
            (3, "tiny.safetensors".to_string()),
        ]
    );
    assert!(
        result
            .saved
            .iter()
            .all(|s| s.state.as_ref().unwrap().join("state.json").is_file())
    );

    // The kohya file: UNet and text-encoder keys, sd-scripts' dataset metadata.
    let file = TensorFile::open(&result.lora).unwrap();
    let names = file.names();
    assert!(names.iter().any(|n| n.starts_with("lora_unet_")));
    assert!(names.contains(
        &"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight".to_string()
    ));
    let meta = file.metadata();
    let tags: serde_json::Value = serde_json::from_str(&meta["ss_tag_frequency"]).unwrap();
    assert_eq!(tags["2_shapes"]["sks"], 2);
    assert_eq!(tags["2_shapes"]["white background"], 2);
    assert_eq!(tags["data"]["sks"], 1);
    let dirs: serde_json::Value = serde_json::from_str(&meta["ss_dataset_dirs"]).unwrap();
    assert_eq!(dirs["2_shapes"]["n_repeats"], 2);
    assert_eq!(dirs["2_shapes"]["img_count"], 2);
    assert_eq!(dirs["data"]["n_repeats"], 1);
    assert_eq!(meta["ss_num_train_images"], "5");
    assert_eq!(meta["ss_network_train_unet_only"], "False");
    assert_eq!(meta["ss_text_encoder_lr"], "0.001");
    assert_eq!(meta["ss_resolution"], "(32, 32)");
    assert_eq!(meta["ss_epoch"], "3");

    // It loads back into the pipeline, text encoder included.
    let device = Device::flex();
    let base = StableDiffusion::load(fixture("pipeline"), None, &device).unwrap();
    let (adapted, loaded) = base.with_lora(&result.lora, 1.0, &device).unwrap();
    assert_eq!(loaded.modules.len(), result.adapted_modules.len());
    assert!(loaded.skipped.is_empty());

    // The PEFT file has the text encoder's adapters too (diffusers' `text_encoder.` keys) and
    // loads to the same models as the kohya file.
    let peft = result.peft.as_ref().unwrap();
    let names = TensorFile::open(peft).unwrap().names();
    assert!(names.contains(
        &"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight".to_string()
    ));
    let mut from_peft = base.clone();
    let mut parts: [Part<'_>; 2] = [
        (PEFT_UNET, &mut from_peft.unet),
        (PEFT_TEXT_ENCODER, &mut from_peft.text_encoder),
    ];
    let loaded_peft = load_peft_parts(&mut parts, peft, None, &device).unwrap();
    assert_eq!(loaded_peft.modules, result.adapted_modules);
    let ids = ids_tensor(&[base.tokenizer.encode_padded("sks, red circle")], &device);
    let text = |m: &StableDiffusion| {
        HostTensor::from_tensor(m.text_encoder.forward(ids.clone(), 1).unwrap())
    };
    assert!(max_abs_diff(&text(&adapted), &text(&base)) > 0.0);
    assert!(max_abs_diff(&text(&from_peft), &text(&adapted)) <= 1e-5);
    let x: Tensor<4> = Tensor::ones([1, 4, 4, 4], &device);
    let t = Tensor::<1>::from_data([500.0f32], &device);
    let unet = |m: &StableDiffusion| {
        HostTensor::from_tensor(m.unet.forward(
            x.clone(),
            t.clone(),
            text(&adapted).to_tensor(&device),
        ))
    };
    assert!(max_abs_diff(&unet(&from_peft), &unet(&adapted)) <= 1e-5);
    // Strength 0 renders the base model; strength 1 changes the image.
    let settings = SampleSettings {
        prompt: "sks, red circle".into(),
        negative_prompt: String::new(),
        width: 32,
        height: 32,
        steps: 3,
        guidance_scale: 5.0,
        seed: 2,
        sampler: SamplerKind::Euler,
        clip_skip: 1,
    };
    let (off, _) = base.with_lora(&result.lora, 0.0, &device).unwrap();
    let render = |m: &StableDiffusion| Pipeline::new(m).render(&settings, &device).unwrap();
    assert_eq!(render(&off), render(&base));
    assert_ne!(render(&adapted), render(&base));

    // A second run reuses the cached latents and text states and trains identically.
    let cache = out.join("cache");
    let stamp = |dir: &Path| -> Vec<_> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().modified().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = stamp(&cache.join("latents"));
    assert_eq!(before.len(), 3);
    let mut again = config(&data, &root.join("out2"));
    again.images.as_mut().unwrap().cache_dir = Some(cache.clone());
    let second = Trainer::new(again)
        .unwrap()
        .run(&mut |_| {}, &Controls::default())
        .unwrap();
    assert_eq!(
        stamp(&cache.join("latents")),
        before,
        "latents were not encoded again"
    );
    assert_eq!(adapters(&second.lora), adapters(&result.lora));
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let root = tmp("resume");
    let data = root.join("data");
    dataset(&data);
    let with_captions = |out: &Path| {
        let mut c = config(&data, out);
        // Shuffled tags and dropout draw from the caption stream, which must resume too.
        c.images.as_mut().unwrap().captions = CaptionOptions {
            shuffle_tags: true,
            keep_tokens: 1,
            dropout: 0.2,
        };
        c.gradient_accumulation_steps = 1;
        c
    };

    let full = Trainer::new(with_captions(&root.join("full")))
        .unwrap()
        .run(&mut |_| {}, &Controls::default())
        .unwrap();

    // Killed in epoch 2 after step 5: resumed from the epoch-1 state.
    let out = root.join("killed");
    let controls = Arc::new(Controls::default());
    let remote = controls.clone();
    let err = Trainer::new(with_captions(&out))
        .unwrap()
        .run(
            &mut |e: ProgressEvent| {
                if matches!(&e, ProgressEvent::Step(p) if p.step == 5) {
                    remote.cancel();
                }
            },
            &controls,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled { completed_steps: 5 }),
        "{err}"
    );
    let mut resumed = with_captions(&out);
    resumed.resume = Some(out.join("tiny-000001.state"));
    let mut events = Vec::new();
    let result = Trainer::new(resumed)
        .unwrap()
        .run(&mut |e| events.push(e), &Controls::default())
        .unwrap();
    assert_eq!(result.resumed_from, Some(3));
    assert!(events.contains(&ProgressEvent::Resumed { step: 3, epoch: 2 }));
    assert_eq!(result.losses, full.losses);
    assert_eq!(adapters(&result.lora), adapters(&full.lora));

    // Saved mid-epoch on request (after step 4), killed later, resumed from that state.
    let out = root.join("requested");
    let controls = Arc::new(Controls::default());
    let remote = controls.clone();
    let err = Trainer::new(with_captions(&out))
        .unwrap()
        .run(
            &mut |e: ProgressEvent| match &e {
                ProgressEvent::Step(p) if p.step == 4 => remote.request_save(),
                ProgressEvent::Step(p) if p.step == 7 => remote.cancel(),
                _ => {}
            },
            &controls,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }));
    let mut resumed = with_captions(&out);
    resumed.resume = Some(out.join("tiny-step00000004.state"));
    let result = Trainer::new(resumed)
        .unwrap()
        .run(&mut |_| {}, &Controls::default())
        .unwrap();
    assert_eq!(result.resumed_from, Some(4));
    assert_eq!(adapters(&result.lora), adapters(&full.lora));

    // A state from other settings is refused.
    let mut other = with_captions(&root.join("other"));
    other.seed = 12;
    other.resume = Some(out.join("tiny-step00000004.state"));
    let err = Trainer::new(other)
        .unwrap()
        .run(&mut |_| {}, &Controls::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("other training settings"), "{err}");
    std::fs::remove_dir_all(root).ok();
}
