//! End-to-end LoRA training of the demo model (`assets/tiny-sd`) on the demo dataset
//! (`assets/demo-dataset`): encoding the images, training, saving every epoch, rendering a
//! sample. Prints images per second and time per epoch.
//!
//! ```text
//! cargo bench -p loraflow-trainer --bench train_images
//! LORAFLOW_BENCH_DEVICE=vulkan cargo bench -p loraflow-trainer --features vulkan --bench train_images
//! LORAFLOW_BENCH_EPOCHS=10 LORAFLOW_BENCH_TE=1 cargo bench -p loraflow-trainer --bench train_images
//! ```
//!
//! Settings follow the catalogue's `tiny-sd` defaults: resolution 64, rank 4, alpha 4,
//! learning rate 1e-3, batch 2, one repeat; the text encoder trains too when
//! `LORAFLOW_BENCH_TE` is set.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use loraflow_trainer::data::ImageDatasetConfig;
use loraflow_trainer::train::config::{SampleConfig, TextEncoderTraining};
use loraflow_trainer::{NeverCancel, ProgressEvent, TrainConfig, Trainer};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let out = std::env::temp_dir().join(format!("loraflow-bench-images-{}", std::process::id()));
    let epochs = env("LORAFLOW_BENCH_EPOCHS", 4);
    let mut images = ImageDatasetConfig::new(assets.join("demo-dataset"), 64);
    images.trigger_word = Some("sks".into());
    let mut c = TrainConfig::for_images(assets.join("tiny-sd"), images, &out, "bench");
    c.device = std::env::var("LORAFLOW_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    c.network.rank = 4;
    c.network.alpha = 4.0;
    c.optimizer.learning_rate = 1e-3;
    c.batch_size = 2;
    c.epochs = epochs;
    c.max_grad_norm = Some(1.0);
    c.objective.min_snr_gamma = Some(5.0);
    c.output.save_every_n_epochs = Some(1);
    c.seed = 42;
    if std::env::var_os("LORAFLOW_BENCH_TE").is_some() {
        c.text_encoder = Some(TextEncoderTraining::new(5e-4));
    }
    c.sample = Some(SampleConfig {
        prompts: vec!["sks, a red circle, white background".into()],
        negative_prompt: String::new(),
        steps: 20,
        guidance_scale: 7.5,
        sampler: Default::default(),
        seed: 1,
        size: None,
        height: None,
        every_n_epochs: Some(epochs),
    });

    let start = Instant::now();
    let trainer = Trainer::new(c).context("configuring")?;
    let (per_epoch, total) = trainer.plan();
    let mut prepared_at = None;
    let mut epoch_marks = vec![];
    let mut sampled_for = None;
    let mut step_images = 0usize;
    let mut step_time = 0.0f64;
    let out_run = trainer.run(
        &mut |e: ProgressEvent| match e {
            ProgressEvent::Started { .. } => prepared_at = Some(start.elapsed()),
            ProgressEvent::Step(p) => {
                step_time += p.step_time.as_secs_f64();
                step_images += 2;
            }
            ProgressEvent::EpochEnd { epoch, mean_loss } => {
                epoch_marks.push((epoch, start.elapsed(), mean_loss))
            }
            ProgressEvent::Sampled(_) => {
                sampled_for = Some(
                    start.elapsed() - epoch_marks.last().map_or_else(Default::default, |m| m.1),
                )
            }
            _ => {}
        },
        &NeverCancel,
    )?;
    let total_time = start.elapsed();
    let prepared = prepared_at.unwrap_or_default();
    println!(
        "demo model on the demo dataset: {} images ({} with repeats) per epoch, {epochs} epochs, {per_epoch} steps per epoch, {total} steps",
        trainer.images().len(),
        out_run.examples_per_epoch
    );
    println!(
        "load + encode dataset: {:.2} s; training: {:.2} s",
        prepared.as_secs_f64(),
        (total_time - prepared).as_secs_f64()
    );
    let mut last = prepared;
    for (epoch, at, loss) in &epoch_marks {
        println!(
            "epoch {epoch}: {:.3} s (incl. saving), mean loss {loss:.4}",
            (*at - last).as_secs_f64()
        );
        last = *at;
    }
    println!(
        "optimiser steps: {:.1} ms/step, {:.1} images/s (step time only); {:.1} images/s over the training phase",
        step_time * 1e3 / total as f64,
        step_images as f64 / step_time,
        (out_run.examples_per_epoch * epochs) as f64 / (total_time - prepared).as_secs_f64()
    );
    if let Some(s) = sampled_for {
        println!(
            "sample (20 DDIM steps, guidance 7.5, 64 px) with saving: {:.2} s",
            s.as_secs_f64()
        );
    }
    println!("total: {:.2} s", total_time.as_secs_f64());
    std::fs::remove_dir_all(out).ok();
    Ok(())
}
