//! Trains an SDXL LoRA on the tiny fixture model, with adapters on the UNet and both text
//! encoders, and writes it in kohya's SDXL format together with what the adapted model
//! computes for a fixed prompt (both encoders' states, the pooled vector) and a fixed UNet
//! input, so that `fixtures/check_sdxl_interop.py` can check that diffusers'
//! `StableDiffusionXLPipeline.load_lora_weights` attaches every module of the file, the text
//! encoders' ones included, and computes the same outputs.
//!
//! ```text
//! cargo run -p loraflow-trainer --example export_sdxl_lora -- /tmp/loraflow-xl-interop
//! /work/venv-ref/bin/python crates/trainer/fixtures/check_sdxl_interop.py /tmp/loraflow-xl-interop
//! ```

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::{Device, Tensor};
use image::{Rgb, RgbImage};
use loraflow_trainer::data::ImageDatasetConfig;
use loraflow_trainer::lora::{NetworkConfig, targets};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::sdxl::{SizeConditioning, StableDiffusionXl, time_ids_tensor};
use loraflow_trainer::tensor_file::{self, HostTensor, SaveDtype};
use loraflow_trainer::train::config::TextEncoderTraining;
use loraflow_trainer::unet::AddedConditions;
use loraflow_trainer::{NeverCancel, TrainConfig, Trainer};

const PROMPT: &str = "a red circle on a white background";

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .context("usage: export_sdxl_lora <output dir>")?
        .into();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/sdxl/pipeline");
    let data = out.join("data").join("10_circle");
    std::fs::create_dir_all(&data)?;
    RgbImage::from_fn(32, 32, |x, y| {
        if (x as i32 - 16).pow(2) + (y as i32 - 16).pow(2) < 100 {
            Rgb([200, 40, 30])
        } else {
            Rgb([240, 240, 250])
        }
    })
    .save(data.join("a.png"))?;
    std::fs::write(data.join("a.txt"), PROMPT)?;

    let images = ImageDatasetConfig::new(out.join("data"), 32);
    let mut config = TrainConfig::for_images(&fixture, images, &out, "interop");
    config.network = NetworkConfig::new(4, 2.0).with_targets(targets::TRANSFORMER);
    config.text_encoder = Some(TextEncoderTraining::new(5e-3));
    config.optimizer.learning_rate = 2e-2;
    config.batch_size = 1;
    config.epochs = 2;
    config.seed = 3;
    let result = Trainer::new(config)?.run(&mut |_| {}, &NeverCancel)?;
    eprintln!(
        "trained {} steps, {} adapted modules; wrote {}",
        result.steps,
        result.adapted_modules.len(),
        result.lora.display()
    );

    let device = Device::flex();
    let model = StableDiffusionXl::load_diffusers(&fixture, &device)?;
    let (adapted, loaded) = model.with_lora(&result.lora, 1.0, &device)?;
    anyhow::ensure!(
        loaded.skipped.is_empty(),
        "keys left alone: {:?}",
        loaded.skipped
    );
    let ids = adapted.tokenizers.encode_batch(&[PROMPT]);
    let text = adapted.text.encode(&ids, &device)?;
    let base = model.text.encode(&ids, &device)?;

    // The adapted UNet on a fixed input.
    let mut rng = SeededRng::new(11, Stream::Noise);
    let [c, h, w] = [4, 4, 4];
    let sample = HostTensor::new(vec![1, c, h, w], rng.normal(c * h * w));
    let size = SizeConditioning::for_bucket((32, 32), (32, 32), false);
    let added = AddedConditions {
        text_embeds: text.pooled.clone(),
        time_ids: time_ids_tensor(&[size], &device),
    };
    let t = Tensor::<1>::from_data([321.0f32], &device);
    let y = adapted.unet.forward_added(
        sample.to_tensor(&device),
        t,
        text.context.clone(),
        Some(&added),
    )?;
    let ids_row =
        |row: &[u32]| HostTensor::new(vec![1, row.len()], row.iter().map(|&i| i as f32).collect());
    tensor_file::write(
        &out.join("io.safetensors"),
        &[
            ("te1.input_ids".into(), ids_row(&ids.ids[0])),
            ("te2.input_ids".into(), ids_row(&ids.ids_2[0])),
            ("context".into(), HostTensor::from_tensor(text.context)),
            ("pooled".into(), HostTensor::from_tensor(text.pooled)),
            ("base_context".into(), HostTensor::from_tensor(base.context)),
            ("sample".into(), sample),
            ("time_ids".into(), HostTensor::from_tensor(added.time_ids)),
            ("out".into(), HostTensor::from_tensor(y)),
        ],
        [(
            "modules".to_string(),
            serde_json::to_string(&loaded.modules)?,
        )]
        .into_iter()
        .collect(),
        SaveDtype::F32,
    )?;
    eprintln!("{} modules adapted on load", loaded.modules.len());
    Ok(())
}
