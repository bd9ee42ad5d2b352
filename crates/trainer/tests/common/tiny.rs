//! The tiny fixture UNet (`fixtures/lora_step`) and four latent examples to train it on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use loraflow_trainer::lora::NetworkConfig;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::tensor_file::{HostTensor, TensorFile};
use loraflow_trainer::train::dataset::LatentDataset;
use loraflow_trainer::unet::{UNet2DConditionModel, UNetConfig};
use loraflow_trainer::{NeverCancel, ProgressEvent, TrainConfig, Trainer};

use super::fixture;

/// A fresh folder under the temporary directory, unique to this process.
pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loraflow-train-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Four "images": smooth latents (so there is structure to learn) and random text states.
pub fn dataset() -> LatentDataset {
    let mut rng = SeededRng::new(100, Stream::Noise);
    let mut latents = Vec::new();
    for i in 0..4 {
        for c in 0..4 {
            for y in 0..8 {
                for x in 0..8 {
                    let v = ((x as f32 + i as f32) * 0.7).sin() * ((y + c) as f32 * 0.5).cos();
                    latents.push(v);
                }
            }
        }
    }
    LatentDataset::new(
        HostTensor::new(vec![4, 4, 8, 8], latents),
        HostTensor::new(vec![4, 5, 12], rng.normal(4 * 5 * 12)),
    )
    .unwrap()
}

/// Training settings for the fixture UNet on [`dataset`], writing to `out`.
pub fn config(out: &Path) -> TrainConfig {
    let mut c = TrainConfig::new(fixture("lora_step/config.json"), "in-memory", out, "tiny");
    c.model.unet_weights = Some(fixture("lora_step/diffusion_pytorch_model.safetensors"));
    c.network =
        NetworkConfig::new(4, 4.0).with_targets(&["to_q", "to_k", "to_v", "to_out.0", "conv1"]);
    c.optimizer.learning_rate = 1e-2;
    c.objective.min_snr_gamma = Some(5.0);
    c.objective.noise_offset = 0.05;
    c.batch_size = 2;
    c.epochs = 10;
    c.max_grad_norm = Some(1.0);
    c.seed = 7;
    c
}

/// The fixture UNet with its weights.
pub fn base(device: &Device) -> UNet2DConditionModel {
    UNetConfig::from_file(fixture("lora_step/config.json"))
        .unwrap()
        .init(device)
        .load_diffusers(fixture("lora_step/diffusion_pytorch_model.safetensors"))
        .unwrap()
}

/// Examples `picks` of [`dataset`], in that order (repeating one repeats the example).
pub fn examples(picks: &[usize]) -> LatentDataset {
    let ds = dataset();
    let latents = picks.iter().flat_map(|&i| ds.latent(i).data).collect();
    let states = picks.iter().flat_map(|&i| ds.state(i).data).collect();
    LatentDataset::new(
        HostTensor::new(vec![picks.len(), 4, 8, 8], latents),
        HostTensor::new(vec![picks.len(), 5, 12], states),
    )
    .unwrap()
}

/// Every tensor of a LoRA file.
pub fn adapters(path: &Path) -> BTreeMap<String, HostTensor> {
    let file = TensorFile::open(path).unwrap();
    file.names()
        .into_iter()
        .map(|n| {
            let t = file.read(&n).unwrap();
            (n, t)
        })
        .collect()
}

/// Losses, gradient norms and final adapters of a run on `data`.
pub struct Ran {
    pub losses: Vec<f32>,
    pub grad_norms: Vec<f64>,
    pub adapters: BTreeMap<String, HostTensor>,
}

pub fn train(c: TrainConfig, data: LatentDataset) -> Ran {
    let out = c.output.dir.clone();
    let mut grad_norms = Vec::new();
    let r = Trainer::with_dataset(c, data)
        .unwrap()
        .run(
            &mut |e| {
                if let ProgressEvent::Step(p) = e {
                    grad_norms.push(p.grad_norm);
                }
            },
            &NeverCancel,
        )
        .unwrap();
    let adapters = adapters(&r.lora);
    std::fs::remove_dir_all(&out).ok();
    Ran {
        losses: r.losses,
        grad_norms,
        adapters,
    }
}
