//! SDXL LoRA files in kohya's format, as sd-scripts writes them.
//!
//! sd-scripts trains SDXL on its own port of Stability's SGM UNet, so its UNet keys follow the
//! original module tree: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`,
//! `lora_unet_middle_block_1_proj_in`, `lora_unet_output_blocks_3_0_in_layers_2` (rather than
//! the diffusers paths SD1.x LoRAs use). ComfyUI maps these names from the SGM state dict
//! (`comfy/lora.py`, `model_lora_keys_unet`), diffusers converts them back
//! (`_maybe_map_sgm_blocks_to_diffusers`), and A1111 matches them to its own SGM modules, so this
//! is the naming written here. The text encoders are `lora_te1_text_model_encoder_layers_*`
//! (CLIP ViT-L) and `lora_te2_text_model_encoder_layers_*` (OpenCLIP bigG), and the header's
//! `ss_base_model_version` is `sdxl_base_v1-0`. PEFT files use diffusers' component prefixes
//! `unet.`, `text_encoder.` and `text_encoder_2.`.

use std::path::Path;

use burn::tensor::Device;

use super::text::SdxlTextEncoders;
use crate::error::Result;
use crate::lora::kohya::{KohyaMetadata, LoadedLora, Part, load_kohya_parts, save_kohya_parts};
use crate::lora::{
    LayerMut, LoraLayers, PEFT_TEXT_ENCODER, PEFT_UNET, UNET_PREFIX, join, load_peft_parts,
    save_peft_parts,
};
use crate::pipeline::single_file::{UNET_PREFIX as LDM_UNET, unet_key, unet_prefixes};
use crate::tensor_file::SaveDtype;
use crate::unet::{UNet2DConditionModel, UNetConfig};

/// diffusers' component prefix of the second text encoder's adapters in PEFT files.
pub const PEFT_TEXT_ENCODER_2: &str = "text_encoder_2";

/// Key prefix of the first text encoder's modules.
pub const TE1_PREFIX: &str = "lora_te1_";
/// Key prefix of the second text encoder's modules.
pub const TE2_PREFIX: &str = "lora_te2_";
/// sd-scripts' `ss_base_model_version` of SDXL base.
pub const BASE_MODEL_VERSION: &str = "sdxl_base_v1-0";
/// The `modelspec.architecture` sd-scripts writes for SDXL LoRAs.
pub const ARCHITECTURE: &str = "stable-diffusion-xl-v1-base/lora";

/// The UNet's adaptable layers under their SGM module paths.
pub struct SgmNames<'m> {
    unet: &'m mut UNet2DConditionModel,
    prefixes: Vec<(String, String, bool)>,
}

impl<'m> SgmNames<'m> {
    /// Wraps a UNet.
    pub fn new(unet: &'m mut UNet2DConditionModel, config: &UNetConfig) -> Self {
        Self {
            unet,
            prefixes: unet_prefixes(config),
        }
    }
}

/// The SGM module path of a diffusers UNet module path (`down_blocks.1.attentions.0.proj_in` →
/// `input_blocks.4.1.proj_in`), or `None` for a path outside the mapped blocks.
pub fn sgm_path(path: &str, prefixes: &[(String, String, bool)]) -> Option<String> {
    let key = unet_key(&format!("{path}."), prefixes)?;
    Some(
        key.strip_prefix(LDM_UNET)?
            .strip_suffix('.')
            .unwrap_or_default()
            .to_string(),
    )
}

impl LoraLayers for SgmNames<'_> {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        let mut inner = Vec::new();
        self.unet.collect_layers("", &mut inner);
        for (path, layer) in inner {
            let sgm = sgm_path(&path, &self.prefixes).unwrap_or(path);
            out.push((join(prefix, &sgm), layer));
        }
    }
}

/// `metadata` with SDXL's base-model version and architecture.
pub fn sdxl_metadata(metadata: &KohyaMetadata) -> KohyaMetadata {
    let mut m = metadata.clone();
    m.base_model_version = BASE_MODEL_VERSION.into();
    m.v2 = false;
    m.extra
        .insert("modelspec.architecture".into(), ARCHITECTURE.into());
    m
}

/// Writes the adapters of an SDXL UNet (and of its text encoders, when given) as one kohya
/// LoRA file with sd-scripts' SDXL key names and header.
pub fn save_sdxl_kohya(
    unet: &mut UNet2DConditionModel,
    config: &UNetConfig,
    text: Option<&mut SdxlTextEncoders>,
    path: &Path,
    metadata: &KohyaMetadata,
    dtype: SaveDtype,
) -> Result<()> {
    let mut sgm = SgmNames::new(unet, config);
    let metadata = sdxl_metadata(metadata);
    match text {
        None => save_kohya_parts(&mut [(UNET_PREFIX, &mut sgm)], path, &metadata, dtype),
        Some(text) => {
            let mut parts: Vec<Part<'_>> = vec![
                (UNET_PREFIX, &mut sgm),
                (TE1_PREFIX, &mut text.text_encoder),
                (TE2_PREFIX, &mut text.text_encoder_2),
            ];
            save_kohya_parts(&mut parts, path, &metadata, dtype)
        }
    }
}

/// Installs the adapters of an SDXL kohya LoRA file (SGM UNet names), scaled by `strength`;
/// text-encoder keys go to `text` when given and are skipped otherwise.
pub fn load_sdxl_kohya(
    unet: &mut UNet2DConditionModel,
    config: &UNetConfig,
    text: Option<&mut SdxlTextEncoders>,
    path: &Path,
    strength: f64,
    device: &Device,
) -> Result<LoadedLora> {
    let mut sgm = SgmNames::new(unet, config);
    match text {
        None => load_kohya_parts(&mut [(UNET_PREFIX, &mut sgm)], path, strength, device),
        Some(text) => {
            let mut parts: Vec<Part<'_>> = vec![
                (UNET_PREFIX, &mut sgm),
                (TE1_PREFIX, &mut text.text_encoder),
                (TE2_PREFIX, &mut text.text_encoder_2),
            ];
            load_kohya_parts(&mut parts, path, strength, device)
        }
    }
}

impl super::StableDiffusionXl {
    /// A copy of the model with an SDXL kohya LoRA file applied at `strength` (UNet and, when
    /// the file has them, both encoders), as adapters on the base layers.
    pub fn with_lora(
        &self,
        path: &Path,
        strength: f64,
        device: &Device,
    ) -> Result<(super::StableDiffusionXl, LoadedLora)> {
        let mut model = self.clone();
        let config = model.config.unet.clone();
        let loaded = load_sdxl_kohya(
            &mut model.unet,
            &config,
            Some(&mut model.text),
            path,
            strength,
            device,
        )?;
        Ok((model, loaded))
    }
}

/// Writes the adapters as one diffusers/PEFT file, as `StableDiffusionXLPipeline.
/// save_lora_weights(unet_lora_layers=..., text_encoder_lora_layers=...,
/// text_encoder_2_lora_layers=...)` does: `unet.<diffusers path>`,
/// `text_encoder.text_model.*` and `text_encoder_2.text_model.*` keys, each component's adapter
/// config under its prefix in the header.
pub fn save_sdxl_peft(
    unet: &mut UNet2DConditionModel,
    text: Option<&mut SdxlTextEncoders>,
    path: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    match text {
        None => save_peft_parts(&mut [(PEFT_UNET, unet)], path, dtype),
        Some(text) => {
            let mut parts: Vec<Part<'_>> = vec![
                (PEFT_UNET, unet),
                (PEFT_TEXT_ENCODER, &mut text.text_encoder),
                (PEFT_TEXT_ENCODER_2, &mut text.text_encoder_2),
            ];
            save_peft_parts(&mut parts, path, dtype)
        }
    }
}

/// Installs the adapters of an SDXL PEFT file (`unet.`, `text_encoder.`, `text_encoder_2.`);
/// text-encoder keys are skipped and listed when `text` is not given.
pub fn load_sdxl_peft(
    unet: &mut UNet2DConditionModel,
    text: Option<&mut SdxlTextEncoders>,
    path: &Path,
    device: &Device,
) -> Result<LoadedLora> {
    match text {
        None => load_peft_parts(&mut [(PEFT_UNET, unet)], path, None, device),
        Some(text) => {
            let mut parts: Vec<Part<'_>> = vec![
                (PEFT_UNET, unet),
                (PEFT_TEXT_ENCODER, &mut text.text_encoder),
                (PEFT_TEXT_ENCODER_2, &mut text.text_encoder_2),
            ];
            load_peft_parts(&mut parts, path, None, device)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_base_paths_follow_sd_scripts() {
        let prefixes = unet_prefixes(&UNetConfig::sdxl_base());
        let p = |s: &str| sgm_path(s, &prefixes).unwrap();
        assert_eq!(
            p("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
        );
        assert_eq!(
            p("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj"),
            "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj"
        );
        assert_eq!(
            p("mid_block.attentions.0.proj_in"),
            "middle_block.1.proj_in"
        );
        assert_eq!(
            p("up_blocks.0.attentions.2.proj_out"),
            "output_blocks.2.1.proj_out"
        );
        assert_eq!(p("up_blocks.0.upsamplers.0.conv"), "output_blocks.2.2.conv");
        assert_eq!(
            p("up_blocks.1.resnets.0.conv1"),
            "output_blocks.3.0.in_layers.2"
        );
        assert_eq!(
            p("down_blocks.0.downsamplers.0.conv"),
            "input_blocks.3.0.op"
        );
        assert_eq!(p("add_embedding.linear_1"), "label_emb.0.0");
        assert_eq!(p("time_embedding.linear_2"), "time_embed.2");
    }
}
