//! Trains a LoRA on the tiny fixture UNet and writes it in kohya and PEFT format, together with
//! the adapted model's output on a fixed input, so that `fixtures/check_interop.py` can check
//! that diffusers loads both files and computes the same output.
//!
//! ```text
//! cargo run -p loraflow-trainer --example export_lora -- /tmp/loraflow-interop
//! /work/venv-ref/bin/python crates/trainer/fixtures/check_interop.py /tmp/loraflow-interop
//! ```

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use loraflow_trainer::lora::{NetworkConfig, load_kohya, targets};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::tensor_file::{self, HostTensor, SaveDtype};
use loraflow_trainer::train::dataset::LatentDataset;
use loraflow_trainer::unet::UNetConfig;
use loraflow_trainer::{NeverCancel, TrainConfig, Trainer};

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .context("usage: export_lora <output dir>")?
        .into();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/lora_step");
    let mut rng = SeededRng::new(1, Stream::Noise);
    let dataset = LatentDataset::new(
        HostTensor::new(vec![4, 4, 8, 8], rng.normal(4 * 256)),
        HostTensor::new(vec![4, 5, 12], rng.normal(4 * 60)),
    )?;
    let mut config = TrainConfig::new(fixtures.join("config.json"), "in-memory", &out, "interop");
    config.model.unet_weights = Some(fixtures.join("diffusion_pytorch_model.safetensors"));
    let mut patterns: Vec<&str> = targets::TRANSFORMER.to_vec();
    patterns.extend(["resnets.*.conv1", "resnets.*.conv2"]);
    config.network = NetworkConfig::new(4, 2.0)
        .with_targets(&patterns)
        .with_conv(2, 1.0);
    config.optimizer.learning_rate = 1e-2;
    config.epochs = 5;
    config.output.peft = true;
    let result = Trainer::with_dataset(config, dataset)?.run(&mut |_| {}, &NeverCancel)?;
    eprintln!(
        "trained {} steps, {} adapted modules; wrote {} and {}",
        result.steps,
        result.adapted_modules.len(),
        result.lora.display(),
        result
            .peft
            .as_ref()
            .map_or("-".into(), |p| p.display().to_string())
    );

    // The adapted model's output on a fixed input.
    let device = Device::flex();
    let mut unet = UNetConfig::from_file(fixtures.join("config.json"))?
        .init(&device)
        .load_diffusers(fixtures.join("diffusion_pytorch_model.safetensors"))?;
    load_kohya(&mut unet, &result.lora, &device)?;
    let sample = HostTensor::new(vec![1, 4, 8, 8], rng.normal(256));
    let context = HostTensor::new(vec![1, 5, 12], rng.normal(60));
    let t = Tensor::<1>::from_data([321.0f32], &device);
    let y = unet.forward(sample.to_tensor(&device), t, context.to_tensor(&device));
    tensor_file::write(
        &out.join("io.safetensors"),
        &[
            ("sample".into(), sample),
            ("encoder_hidden_states".into(), context),
            ("timesteps".into(), HostTensor::new(vec![1], vec![321.0])),
            ("out".into(), HostTensor::from_tensor(y)),
        ],
        Default::default(),
        SaveDtype::F32,
    )?;
    Ok(())
}
