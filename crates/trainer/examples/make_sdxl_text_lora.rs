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
use loraflow_trainer::lora::LoraLayers;
use loraflow_trainer::rng::{SeededRng, Stream};
use loraflow_trainer::sdxl::StableDiffusionXl;
use loraflow_trainer::tensor_file::HostTensor;

#[path = "../tests/common/sdxl_text_lora.rs"]
mod sdxl_text_lora;

use sdxl_text_lora::{adapt_text_encoders, save_kohya};

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
    let [adapted_1, adapted_2] = adapt_text_encoders(&mut model, [2.0, 8.0], &device)?;
    randomise(&mut model.text.text_encoder, 2.0, 1, &device);
    randomise(&mut model.text.text_encoder_2, 8.0, 2, &device);

    let path = here.join("lora_text_kohya.safetensors");
    save_kohya(&mut model, &path)?;
    eprintln!(
        "wrote {} ({adapted_1} + {adapted_2} text-encoder modules)",
        path.display()
    );
    Ok(())
}
