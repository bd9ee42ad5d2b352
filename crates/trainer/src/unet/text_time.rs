//! SDXL's added conditioning: diffusers' `addition_embed_type = "text_time"`.
//!
//! Besides the timestep, an SDXL UNet is conditioned on the pooled, projected output of its
//! second text encoder (`text_embeds`) and on micro-conditioning values (`time_ids`: original
//! height and width, crop top and left, target height and width). Each time id becomes an
//! `addition_time_embed_dim`-wide sinusoidal embedding (diffusers' `add_time_proj`, with the
//! UNet's `flip_sin_to_cos` and `freq_shift`); they are concatenated after `text_embeds` and fed
//! through an MLP (`add_embedding`, a `TimestepEmbedding` from
//! `projection_class_embeddings_input_dim` to the time-embedding width), whose output is added
//! to the time embedding. In the full model: 1280 + 6 × 256 = 2816 inputs.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::embeddings::timestep_embedding;
use crate::error::{Error, Result};

/// The `text_time` added-conditioning settings of a UNet config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextTimeConfig {
    /// Width of each time id's sinusoidal embedding (256 in SDXL, 8 in diffusers' tests).
    pub addition_time_embed_dim: usize,
    /// Input width of `add_embedding`: pooled text width plus time ids × their embedding width.
    pub projection_class_embeddings_input_dim: usize,
}

impl TextTimeConfig {
    /// Reads the added-conditioning keys of a diffusers UNet config: `None` when
    /// `addition_embed_type` is absent or null; an error for other kinds (`text`, `image`, ...)
    /// or a missing width.
    pub(crate) fn from_diffusers(obj: &Map<String, Value>) -> Result<Option<Self>> {
        let Some(kind) = obj.get("addition_embed_type").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        if kind != "text_time" {
            return Err(Error::Unsupported {
                field: "addition_embed_type".into(),
                value: kind.to_string(),
                hint: "only null (SD1/SD2) and \"text_time\" (SDXL) are implemented".into(),
            });
        }
        let width = |key: &str| -> Result<usize> {
            match obj.get(key).filter(|v| !v.is_null()) {
                None => Err(Error::invalid(
                    key,
                    "null",
                    "required with addition_embed_type \"text_time\"",
                )),
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 => Ok(n as usize),
                    _ => Err(Error::invalid(key, v, "expected a positive integer")),
                },
            }
        };
        let config = Self {
            addition_time_embed_dim: width("addition_time_embed_dim")?,
            projection_class_embeddings_input_dim: width("projection_class_embeddings_input_dim")?,
        };
        Ok(Some(config))
    }

    /// The pooled text width this config implies for `time_ids` of `n_time_ids` values, or
    /// `None` when the time ids alone are wider than the MLP's input.
    pub fn text_embeds_dim(&self, n_time_ids: usize) -> Option<usize> {
        self.projection_class_embeddings_input_dim
            .checked_sub(n_time_ids * self.addition_time_embed_dim)
    }
}

/// The inputs of SDXL's added conditioning, one row per batch item.
#[derive(Debug, Clone)]
pub struct AddedConditions {
    /// The second text encoder's projected pooled output: `[batch, projection_dim]`.
    pub text_embeds: Tensor<2>,
    /// Micro-conditioning values (SDXL: original h, w, crop top, left, target h, w):
    /// `[batch, n_time_ids]`.
    pub time_ids: Tensor<2>,
}

impl AddedConditions {
    /// Checks the widths against the model's `add_embedding` input: the error names the field
    /// and the widths found and expected.
    pub fn check(&self, config: &TextTimeConfig) -> Result<()> {
        let [b_text, text] = self.text_embeds.dims();
        let [b_time, ids] = self.time_ids.dims();
        if b_text != b_time {
            return Err(Error::invalid(
                "time_ids",
                format!("batch {b_time}"),
                format!("expected the batch of text_embeds ({b_text})"),
            ));
        }
        if config.text_embeds_dim(ids) != Some(text) {
            return Err(Error::invalid(
                "text_embeds",
                format!("width {text} with {ids} time ids"),
                format!(
                    "text width + time ids × {} must equal projection_class_embeddings_input_dim \
                     ({})",
                    config.addition_time_embed_dim, config.projection_class_embeddings_input_dim
                ),
            ));
        }
        Ok(())
    }

    /// `cat(text_embeds, add_time_proj(time_ids))`, the input of `add_embedding`.
    ///
    /// # Shapes
    ///
    /// - output: `[batch, text + n_time_ids × time_dim]`
    pub fn features(&self, time_dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor<2> {
        let [batch, ids] = self.time_ids.dims();
        let flat = self.time_ids.clone().reshape([batch * ids]);
        let time = timestep_embedding(flat, time_dim, flip_sin_to_cos, freq_shift)
            .reshape([batch, ids * time_dim]);
        Tensor::cat(vec![self.text_embeds.clone(), time], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Option<TextTimeConfig>> {
        TextTimeConfig::from_diffusers(v.as_object().unwrap())
    }

    #[test]
    fn reads_sdxl_keys() {
        let c = parse(json!({
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816
        }))
        .unwrap()
        .unwrap();
        assert_eq!(c.text_embeds_dim(6), Some(1280));
        assert_eq!(c.text_embeds_dim(12), None);
        assert_eq!(parse(json!({"addition_embed_type": null})).unwrap(), None);
    }

    #[test]
    fn refuses_other_kinds_and_missing_widths() {
        let err = parse(json!({"addition_embed_type": "text_image"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("addition_embed_type") && err.contains("text_image"),
            "{err}"
        );
        let err = parse(json!({"addition_embed_type": "text_time", "addition_time_embed_dim": 8}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("projection_class_embeddings_input_dim"),
            "{err}"
        );
        let err = parse(json!({
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 0,
            "projection_class_embeddings_input_dim": 80
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("addition_time_embed_dim"), "{err}");
    }
}
