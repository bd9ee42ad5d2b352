//! What a Flux run needs of its configuration, checked before anything is loaded.

use crate::error::{Error, Result};
use crate::train::config::TrainConfig;
use crate::train::flow::FlowObjective;
use crate::vae::VaeConfig;

/// The flow-matching objective of the configured model: `objective.flow` (or its defaults)
/// for a FLUX.1 folder, after refusing what a Flux run cannot do; `None` for other models,
/// which must leave `objective.flow` unset.
pub(in crate::trainer) fn flow_objective(config: &TrainConfig) -> Result<Option<FlowObjective>> {
    if !super::super::prepare::is_flux(config) {
        if config.objective.flow.is_some() {
            return Err(Error::invalid(
                "objective.flow",
                "set",
                "is FLUX.1's flow-matching objective, but model.path is neither a FLUX.1 \
                 diffusers folder (with transformer/) nor a FLUX.1 transformer file with a \
                 FLUX.1 model.config_dir; leave it unset for SD1.x, SD2.x and SDXL",
            ));
        }
        return Ok(None);
    }
    check_config(config)?;
    Ok(Some(config.objective.flow.unwrap_or_default()))
}

/// Refuses the settings a Flux run cannot honour, naming each.
fn check_config(config: &TrainConfig) -> Result<()> {
    if config.dataset.is_some() {
        return Err(needs_images());
    }
    if config.text_encoder.is_some() {
        return Err(Error::invalid(
            "text_encoder",
            "set",
            "FLUX.1's text encoders (T5 and CLIP) are not trained: their outputs are cached \
             once and the encoders dropped from memory; leave text_encoder unset",
        ));
    }
    if config.clip_skip != 1 {
        return Err(Error::invalid(
            "clip_skip",
            config.clip_skip,
            "FLUX.1 conditions on T5's last layer and CLIP's pooled output; leave clip_skip at 1",
        ));
    }
    let o = &config.objective;
    let schedule_only = "acts on the DDPM noise schedule of SD models; FLUX.1 trains by flow \
                         matching (set objective.flow instead)";
    if let Some(p) = o.prediction {
        return Err(Error::invalid("objective.prediction", p, schedule_only));
    }
    if o.override_model_prediction {
        return Err(Error::invalid(
            "objective.override_model_prediction",
            true,
            schedule_only,
        ));
    }
    if o.noise_offset != 0.0 {
        return Err(Error::invalid(
            "objective.noise_offset",
            o.noise_offset,
            schedule_only,
        ));
    }
    if let Some(g) = o.min_snr_gamma {
        return Err(Error::invalid("objective.min_snr_gamma", g, schedule_only));
    }
    if let Some(images) = &config.images
        && images.captions.shuffle_tags
    {
        return Err(Error::invalid(
            "dataset.captions.shuffle_tags",
            true,
            "FLUX.1's caption embeddings are computed once and cached, so captions cannot be \
             reshuffled at every step; turn tag shuffling off",
        ));
    }
    Ok(())
}

/// A Flux run encodes its images with the model's VAE.
pub(in crate::trainer) fn needs_images() -> Error {
    Error::invalid(
        "dataset",
        "a latents file",
        "FLUX.1 trains on an image folder (images.dir) encoded by the model's own VAE",
    )
}

/// Image sides a Flux model takes: the VAE's downscale factor times the 2×2 packing (16 for
/// FLUX.1); `None` for other models.
pub(in crate::trainer) fn pixel_multiple(config: &TrainConfig) -> Result<Option<usize>> {
    let Some(dir) = super::super::prepare::flux_folder(config) else {
        return Ok(None);
    };
    let vae = VaeConfig::from_file(dir.join("vae").join("config.json"))?;
    Ok(Some(vae.downscale_factor() * 2))
}

/// Refuses a resolution whose square buckets hold more image tokens than the transformer
/// takes ([`crate::flux::MAX_TOKENS`]; 4096 px for FLUX.1).
pub(in crate::trainer) fn check_resolution(resolution: usize, pixel_multiple: usize) -> Result<()> {
    let tokens = (resolution / pixel_multiple).pow(2);
    if tokens > crate::flux::MAX_TOKENS {
        let max = (crate::flux::MAX_TOKENS as f64).sqrt() as usize * pixel_multiple;
        return Err(Error::invalid(
            "dataset.resolution",
            resolution,
            format!(
                "gives {tokens} image tokens per picture, above the {} the transformer takes; \
                 the largest resolution for this model is {max}",
                crate::flux::MAX_TOKENS
            ),
        ));
    }
    Ok(())
}
