//! A kohya SDXL LoRA with adapters on every text-encoder target (`q_proj`, `k_proj`, `v_proj`,
//! `out_proj`, `fc1`, `fc2`) of both encoders, as `examples/make_sdxl_text_lora.rs` writes the
//! committed fixture and `tests/sdxl_lora_text.rs` writes it again to compare key names. The
//! example includes this file by path; it uses the library only.

use std::path::Path;

use burn::tensor::Device;
use loraflow_trainer::Result;
use loraflow_trainer::clip::TE_TARGETS;
use loraflow_trainer::lora::{KohyaMetadata, NetworkConfig, apply_lora};
use loraflow_trainer::sdxl::StableDiffusionXl;
use loraflow_trainer::sdxl::lora::save_sdxl_kohya;
use loraflow_trainer::tensor_file::SaveDtype;

/// Rank of every adapter.
pub const RANK: usize = 4;

/// Puts rank-[`RANK`] adapters on every target of the first encoder (alpha `alphas[0]`, seed
/// 1) and of the second (alpha `alphas[1]`, seed 2); returns how many of each were adapted.
pub fn adapt_text_encoders(
    model: &mut StableDiffusionXl,
    alphas: [f64; 2],
    device: &Device,
) -> Result<[usize; 2]> {
    let network = |alpha: f64| NetworkConfig::new(RANK, alpha).with_targets(TE_TARGETS);
    let te1 = model.text.text_encoder.clone();
    let (te1, adapted_1) = apply_lora(te1, &network(alphas[0]), 1, device)?;
    let te2 = model.text.text_encoder_2.clone();
    let (te2, adapted_2) = apply_lora(te2, &network(alphas[1]), 2, device)?;
    model.text.text_encoder = te1;
    model.text.text_encoder_2 = te2;
    Ok([adapted_1.len(), adapted_2.len()])
}

/// Writes `model`'s adapters (UNet and both encoders) as a kohya SDXL file in fp32.
pub fn save_kohya(model: &mut StableDiffusionXl, path: &Path) -> Result<()> {
    let config = model.config.unet.clone();
    save_sdxl_kohya(
        &mut model.unet,
        &config,
        Some(&mut model.text),
        path,
        &KohyaMetadata::default(),
        SaveDtype::F32,
    )
}
