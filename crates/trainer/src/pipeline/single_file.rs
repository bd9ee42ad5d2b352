//! SD1.x single-file checkpoints (the `.safetensors` files model sites distribute), in the
//! original LDM layout:
//!
//! - UNet under `model.diffusion_model.`: `time_embed.{0,2}`, `input_blocks.N.{0,1}` (resnets
//!   with `in_layers`/`emb_layers`/`out_layers`/`skip_connection`, transformers, and
//!   `input_blocks.N.0.op` downsamplers), `middle_block.{0,1,2}`, `output_blocks.N.{0,1,2}`
//!   (the upsampler after the last resnet of a level) and `out.{0,2}`;
//! - VAE under `first_stage_model.`: `encoder.down.I.block.J`, `downsample`, `mid.block_1`,
//!   `mid.attn_1.{norm,q,k,v,proj_out}` (1×1 convolutions), `decoder.up.(n−1−I)...`,
//!   `nin_shortcut`, `norm_out`;
//! - text encoder under `cond_stage_model.transformer.` (transformers names).
//!
//! The mapping is computed from the component configs, for any number of levels and resnets,
//! by generating the LDM key of every parameter the models have. Keys the models do not use
//! (EMA weights, `alphas_cumprod`, `position_ids`) are ignored.

use std::collections::HashMap;

use crate::clip::ClipTextModel;
use crate::error::{Error, Result};
use crate::tensor_file::TensorFile;
use crate::unet::{UNet2DConditionModel, UNetConfig, UpBlockKind};
use crate::vae::AutoencoderKL;
use crate::weights::{Renamed, torch_keys};

/// LDM prefix of the UNet.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// LDM prefix of the VAE.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// LDM prefix of the SD1.x text encoder.
pub const TEXT_PREFIX: &str = "cond_stage_model.transformer.";

/// The three components' weights, under diffusers names.
#[derive(Debug)]
pub struct LdmViews<'f> {
    /// UNet weights.
    pub unet: Renamed<'f>,
    /// VAE weights.
    pub vae: Renamed<'f>,
    /// Text-encoder weights.
    pub text_encoder: Renamed<'f>,
}

/// `(diffusers prefix, LDM prefix, is a resnet)` of every UNet block (SDXL's `add_embedding`
/// is the SGM `label_emb.0`).
pub fn unet_prefixes(config: &UNetConfig) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = vec![
        (
            "add_embedding.linear_1.".into(),
            "label_emb.0.0.".into(),
            false,
        ),
        (
            "add_embedding.linear_2.".into(),
            "label_emb.0.2.".into(),
            false,
        ),
        (
            "time_embedding.linear_1.".into(),
            "time_embed.0.".into(),
            false,
        ),
        (
            "time_embedding.linear_2.".into(),
            "time_embed.2.".into(),
            false,
        ),
        ("conv_in.".into(), "input_blocks.0.0.".into(), false),
        ("conv_norm_out.".into(), "out.0.".into(), false),
        ("conv_out.".into(), "out.2.".into(), false),
        (
            "mid_block.resnets.0.".into(),
            "middle_block.0.".into(),
            true,
        ),
        (
            "mid_block.attentions.0.".into(),
            "middle_block.1.".into(),
            false,
        ),
        (
            "mid_block.resnets.1.".into(),
            "middle_block.2.".into(),
            true,
        ),
    ];
    let n = config.block_out_channels.len();
    let mut input = 1;
    for i in 0..n {
        for j in 0..config.layers_per_block[i] {
            out.push((
                format!("down_blocks.{i}.resnets.{j}."),
                format!("input_blocks.{input}.0."),
                true,
            ));
            out.push((
                format!("down_blocks.{i}.attentions.{j}."),
                format!("input_blocks.{input}.1."),
                false,
            ));
            input += 1;
        }
        if i + 1 < n {
            out.push((
                format!("down_blocks.{i}.downsamplers.0.conv."),
                format!("input_blocks.{input}.0.op."),
                false,
            ));
            input += 1;
        }
    }
    let mut output = 0;
    for i in 0..n {
        let level = n - 1 - i;
        let resnets = config.layers_per_block[level] + 1;
        for j in 0..resnets {
            out.push((
                format!("up_blocks.{i}.resnets.{j}."),
                format!("output_blocks.{output}.0."),
                true,
            ));
            out.push((
                format!("up_blocks.{i}.attentions.{j}."),
                format!("output_blocks.{output}.1."),
                false,
            ));
            if j + 1 == resnets && i + 1 < n {
                let slot = if config.up_block_types[i] == UpBlockKind::CrossAttnUpBlock2D {
                    2
                } else {
                    1
                };
                out.push((
                    format!("up_blocks.{i}.upsamplers.0."),
                    format!("output_blocks.{output}.{slot}."),
                    false,
                ));
            }
            output += 1;
        }
    }
    out
}

const RESNET_PARTS: [(&str, &str); 6] = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
];

/// The LDM key of a diffusers UNet key.
pub fn unet_key(key: &str, prefixes: &[(String, String, bool)]) -> Option<String> {
    prefixes.iter().find_map(|(hf, ldm, resnet)| {
        let rest = key.strip_prefix(hf.as_str())?;
        let rest = if *resnet {
            RESNET_PARTS
                .iter()
                .find_map(|(a, b)| rest.strip_prefix(a).map(|r| format!("{b}{r}")))?
        } else {
            rest.to_string()
        };
        Some(format!("{UNET_PREFIX}{ldm}{rest}"))
    })
}

/// The LDM key of a diffusers VAE key, for a VAE with `levels` levels.
pub fn vae_key(key: &str, levels: usize) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        let next = parts.get(i + 1).copied();
        let next2 = parts.get(i + 2).copied();
        match (p, next, next2) {
            ("down_blocks", Some(level), Some("resnets")) => {
                out.extend(["down".into(), level.into(), "block".into()]);
                i += 3;
            }
            ("down_blocks", Some(level), Some("downsamplers")) => {
                out.extend(["down".into(), level.into(), "downsample".into()]);
                i += 4; // skips the `0` of `downsamplers.0`
            }
            ("up_blocks", Some(level), Some(kind @ ("resnets" | "upsamplers"))) => {
                let l: usize = level.parse().unwrap_or(0);
                let ldm_level = (levels - 1 - l).to_string();
                if kind == "resnets" {
                    out.extend(["up".into(), ldm_level, "block".into()]);
                    i += 3;
                } else {
                    out.extend(["up".into(), ldm_level, "upsample".into()]);
                    i += 4;
                }
            }
            ("mid_block", Some("resnets"), Some(j)) => {
                let n: usize = j.parse().unwrap_or(0);
                out.extend(["mid".into(), format!("block_{}", n + 1)]);
                i += 3;
            }
            ("mid_block", Some("attentions"), Some(_)) => {
                out.extend(["mid".into(), "attn_1".into()]);
                i += 3;
                let renamed = match (parts.get(i).copied(), parts.get(i + 1).copied()) {
                    (Some("group_norm"), _) => ("norm", 1),
                    (Some("to_q"), _) => ("q", 1),
                    (Some("to_k"), _) => ("k", 1),
                    (Some("to_v"), _) => ("v", 1),
                    (Some("to_out"), Some("0")) => ("proj_out", 2),
                    _ => ("", 0),
                };
                if renamed.1 > 0 {
                    out.push(renamed.0.into());
                    i += renamed.1;
                }
            }
            ("conv_norm_out", _, _) => {
                out.push("norm_out".into());
                i += 1;
            }
            ("conv_shortcut", _, _) => {
                out.push("nin_shortcut".into());
                i += 1;
            }
            _ => {
                out.push(p.into());
                i += 1;
            }
        }
    }
    format!("{VAE_PREFIX}{}", out.join("."))
}

fn refuse_other_layouts(file: &TensorFile) -> Result<()> {
    let names = file.names();
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    let unsupported = |what: &str| Error::Unsupported {
        field: "checkpoint layout".into(),
        value: file.path().display().to_string(),
        hint: format!(
            "{what}; only SD1.x single-file checkpoints are implemented (use a diffusers folder for SD2.x)"
        ),
    };
    if has("conditioner.embedders.") {
        return Err(unsupported(
            "an SDXL checkpoint (load it with StableDiffusionXl::load_single_file)",
        ));
    }
    if has("cond_stage_model.model.") {
        return Err(unsupported("an SD2.x (OpenCLIP) checkpoint"));
    }
    if !has(UNET_PREFIX) {
        return Err(Error::Parse {
            path: file.path().to_path_buf(),
            reason: format!(
                "no `{UNET_PREFIX}*` keys: not an LDM single-file checkpoint (a diffusers folder?)"
            ),
        });
    }
    Ok(())
}

impl<'f> LdmViews<'f> {
    /// Maps the parameters of freshly built models to the file's keys.
    pub fn new(
        file: &'f TensorFile,
        unet: &UNet2DConditionModel,
        vae: &AutoencoderKL,
        text_encoder: &ClipTextModel,
        unet_config: &UNetConfig,
    ) -> Result<Self> {
        refuse_other_layouts(file)?;
        let prefixes = unet_prefixes(unet_config);
        let mut unet_names = HashMap::new();
        for key in torch_keys(unet, "") {
            let ldm = unet_key(&key, &prefixes).ok_or_else(|| Error::Parse {
                path: file.path().to_path_buf(),
                reason: format!("no LDM name for UNet parameter `{key}`"),
            })?;
            unet_names.insert(key, ldm);
        }
        let levels = vae.encoder.down_blocks.len();
        let vae_names: HashMap<String, String> = torch_keys(vae, "")
            .into_iter()
            .map(|k| {
                let ldm = vae_key(&k, levels);
                (k, ldm)
            })
            .collect();
        let te_names: HashMap<String, String> = torch_keys(text_encoder, "")
            .into_iter()
            .map(|k| {
                let full = format!("{TEXT_PREFIX}{k}");
                let ldm = if file.contains(&full) {
                    full
                } else {
                    // Files written by older transformers lack the `text_model.` level.
                    format!("{TEXT_PREFIX}{}", k.trim_start_matches("text_model."))
                };
                (k, ldm)
            })
            .collect();
        Ok(Self {
            unet: Renamed::new(file, unet_names),
            vae: Renamed::new(file, vae_names),
            text_encoder: Renamed::new(file, te_names),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_unet_keys_follow_the_ldm_numbering() {
        let prefixes = unet_prefixes(&UNetConfig::sd15());
        let k = |s: &str| unet_key(s, &prefixes).unwrap();
        assert_eq!(
            k("down_blocks.0.resnets.1.conv1.weight"),
            "model.diffusion_model.input_blocks.2.0.in_layers.2.weight"
        );
        assert_eq!(
            k("down_blocks.1.attentions.0.proj_in.weight"),
            "model.diffusion_model.input_blocks.4.1.proj_in.weight"
        );
        assert_eq!(
            k("down_blocks.2.downsamplers.0.conv.bias"),
            "model.diffusion_model.input_blocks.9.0.op.bias"
        );
        assert_eq!(
            k("up_blocks.0.upsamplers.0.conv.weight"),
            "model.diffusion_model.output_blocks.2.1.conv.weight"
        );
        assert_eq!(
            k("up_blocks.1.upsamplers.0.conv.weight"),
            "model.diffusion_model.output_blocks.5.2.conv.weight"
        );
        assert_eq!(
            k("up_blocks.3.resnets.2.conv_shortcut.weight"),
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
        );
        assert_eq!(
            k("mid_block.resnets.1.time_emb_proj.bias"),
            "model.diffusion_model.middle_block.2.emb_layers.1.bias"
        );
    }

    #[test]
    fn sd_vae_keys_follow_the_ldm_numbering() {
        assert_eq!(
            vae_key("decoder.up_blocks.0.resnets.2.conv_shortcut.weight", 4),
            "first_stage_model.decoder.up.3.block.2.nin_shortcut.weight"
        );
        assert_eq!(
            vae_key("encoder.down_blocks.1.downsamplers.0.conv.weight", 4),
            "first_stage_model.encoder.down.1.downsample.conv.weight"
        );
        assert_eq!(
            vae_key("decoder.mid_block.attentions.0.to_out.0.bias", 4),
            "first_stage_model.decoder.mid.attn_1.proj_out.bias"
        );
        assert_eq!(
            vae_key("encoder.mid_block.resnets.1.norm2.weight", 4),
            "first_stage_model.encoder.mid.block_2.norm2.weight"
        );
        assert_eq!(
            vae_key("encoder.conv_norm_out.bias", 4),
            "first_stage_model.encoder.norm_out.bias"
        );
    }
}
