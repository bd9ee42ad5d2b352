//! Writes `fixtures/sdxl/lora_text_kohya.safetensors`: a kohya SDXL LoRA file, written by
//! [`save_sdxl_kohya`], with adapters on every attention projection (`q_proj`, `k_proj`,
//! `v_proj`, `out_proj`) and MLP layer (`fc1`, `fc2`) of both text encoders of the tiny SDXL
//! fixture model — rank 4, alpha 2 on the first encoder and 8 on the second, seeded non-zero
//! factors — so that `fixtures/check_sdxl_interop.py --text-fixture` can load it into
//! `StableDiffusionXLPipeline`, record which modules diffusers attached and what the encoders
//! compute with it (`lora_text_io.safetensors`), for `tests/sdxl_lora_text.rs`.
//!
//! ```text
//! cargo run -p loraflow-trainer --example make_sdxl_text_lora
//! /work/venv-ref/bin/python crates/trainer/fixtures/check_sdxl_interop.py --text-fixture
//! ```

use std::path::PathBuf;

use burn::tensor::Device;
use loraflow_trainer::clip::TE_TARGETS;
use loraflow_trainer::lora::{KohyaMetadata, LoraLayers, NetworkConfig, apply_lora};
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::sdxl::StableDiffusionXl;
use loraflow_trainer::sdxl::lora::save_sdxl_kohya;
use loraflow_trainer::tensor_file::{HostTensor, SaveDtype};

/// Rank of every adapter.
const RANK: usize = 4;

/// Replaces every adapter's factors with seeded normal values (× 0.2), keeping `alpha`.
fn randomise(model: &mut impl LoraLayers, alpha: f64, seed: u64, device: &Device) {
    let mut rng = SeededRng::new(seed, Stream::LoraInit);
    for (name, mut layer) in model.layers() {
        let Some((down, up, _)) = layer.factors() else {
            continue;
        };
        let scaled = |t: &HostTensor, rng: &mut SeededRng| {
            let values = rng
                .normal(t.data.len())
                .into_iter()
                .map(|v| 0.2 * v)
                .collect();
            HostTensor::new(t.shape.clone(), values)
        };
        let down = scaled(&down, &mut rng);
        let up = scaled(&up, &mut rng);
        layer
            .set_factors(&name, down, up, alpha, device)
            .expect("same shapes");
    }
}

fn main() -> anyhow::Result<()> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/sdxl");
    let device = Device::flex();
    let mut model = StableDiffusionXl::load_diffusers(here.join("pipeline"), &device)?;
    let network = |alpha: f64| NetworkConfig::new(RANK, alpha).with_targets(TE_TARGETS);

    let (mut te1, adapted_1) = apply_lora(model.text.text_encoder, &network(2.0), 1, &device)?;
    randomise(&mut te1, 2.0, 1, &device);
    let (mut te2, adapted_2) = apply_lora(model.text.text_encoder_2, &network(8.0), 2, &device)?;
    randomise(&mut te2, 8.0, 2, &device);
    model.text.text_encoder = te1;
    model.text.text_encoder_2 = te2;

    let path = here.join("lora_text_kohya.safetensors");
    let config = model.config.unet.clone();
    save_sdxl_kohya(
        &mut model.unet,
        &config,
        Some(&mut model.text),
        &path,
        &KohyaMetadata::default(),
        SaveDtype::F32,
    )?;
    eprintln!(
        "wrote {} ({} + {} text-encoder modules)",
        path.display(),
        adapted_1.len(),
        adapted_2.len()
    );
    Ok(())
}
