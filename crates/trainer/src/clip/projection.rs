//! transformers' `CLIPTextModelWithProjection`: SDXL's second text encoder (OpenCLIP bigG in
//! the full model).
//!
//! SDXL conditions its cross-attention on the *penultimate* layer's output (without the final
//! LayerNorm) and its added conditioning on the projected pooled output: the final-normed state
//! at the end-of-text token, through `text_projection` (a linear without bias). The pooled
//! position is the first `eos_token_id` of each row, or, for configs with the pre-2023
//! `eos_token_id = 2`, the position of the largest id (transformers keeps that legacy rule).

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use serde_json::Value;

use super::config::ClipTextConfig;
use super::model::ClipTextModel;
use crate::error::{Error, Result};
use crate::lora::{LayerMut, LoraLayers, LoraLinear, LoraLinearConfig};
use crate::weights::{Weights, load_module};

/// The `eos_token_id` of configs written before transformers fixed it (PR #24773); with it the
/// pooled position is the largest id's.
const LEGACY_EOS: usize = 2;

/// A checked `CLIPTextConfig` with its projection width.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipProjectionConfig {
    /// The encoder.
    pub text: ClipTextConfig,
    /// Width of `text_embeds` (1280 for SDXL's bigG; transformers' default 512).
    pub projection_dim: usize,
}

impl ClipProjectionConfig {
    /// Reads `text_encoder_2/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_transformers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed config, with transformers' defaults for absent keys.
    pub fn from_transformers(value: &Value) -> Result<Self> {
        let text = ClipTextConfig::from_transformers(value)?;
        let value = value.get("text_config").unwrap_or(value);
        let projection_dim = match value.get("projection_dim") {
            None | Some(Value::Null) => 512,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => n as usize,
                _ => {
                    return Err(Error::invalid(
                        "projection_dim",
                        v,
                        "expected a positive integer",
                    ));
                }
            },
        };
        Ok(Self {
            text,
            projection_dim,
        })
    }

    /// Builds the model with PyTorch's default initialisation.
    pub fn init(&self, device: &Device) -> ClipTextModelWithProjection {
        ClipTextModelWithProjection {
            encoder: self.text.init(device),
            text_projection: LoraLinearConfig::new(self.text.hidden_size, self.projection_dim)
                .with_bias(false)
                .init(device),
            eos_token_id: self.text.eos_token_id,
        }
    }
}

/// The encoder and its pooled-output projection.
#[derive(Module, Debug)]
pub struct ClipTextModelWithProjection {
    /// The text transformer (keys `text_model.*`).
    pub encoder: ClipTextModel,
    /// Pooled state → `text_embeds` (no bias).
    pub text_projection: LoraLinear,
    /// Which token's state is pooled.
    pub eos_token_id: usize,
}

/// What SDXL takes from the second encoder.
#[derive(Debug, Clone)]
pub struct ProjectedOutput {
    /// The penultimate layer's output, without the final norm: `[batch, tokens, hidden]`.
    pub penultimate: Tensor<3>,
    /// The last layer through the final norm: `[batch, tokens, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// The projected pooled output: `[batch, projection_dim]`.
    pub text_embeds: Tensor<2>,
}

/// The pooled position of each row of `ids`, as transformers picks it.
pub fn pooled_positions(ids: &[Vec<u32>], eos_token_id: usize) -> Vec<usize> {
    ids.iter()
        .map(|row| {
            if eos_token_id == LEGACY_EOS {
                // torch.argmax: the first of the largest ids.
                let max = row.iter().copied().max().unwrap_or(0);
                row.iter().position(|&i| i == max).unwrap_or(0)
            } else {
                // The first end-of-text (the padding may be end-of-text too); transformers
                // takes position 0 when a row has none.
                row.iter()
                    .position(|&i| i as usize == eos_token_id)
                    .unwrap_or(0)
            }
        })
        .collect()
}

impl ClipTextModelWithProjection {
    /// Loads transformers weights (`text_encoder_2/model.safetensors`: `text_model.*` and
    /// `text_projection.weight`).
    pub fn load_weights(self, weights: &dyn Weights) -> Result<Self> {
        Ok(Self {
            encoder: self.encoder.load_weights(weights)?,
            text_projection: load_module(self.text_projection, weights, "text_projection")?,
            eos_token_id: self.eos_token_id,
        })
    }

    /// Encoder layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.num_layers()
    }

    /// Runs the encoder once for the penultimate state, the last state and the projected
    /// pooled output. `ids` must be the rows of `input_ids` (for the pooled positions).
    ///
    /// # Shapes
    ///
    /// - input_ids: `[batch, tokens]`
    pub fn forward(&self, input_ids: Tensor<2, Int>, ids: &[Vec<u32>]) -> Result<ProjectedOutput> {
        let [batch, tokens] = input_ids.dims();
        if ids.len() != batch || ids.iter().any(|r| r.len() != tokens) {
            return Err(Error::invalid(
                "ids",
                format!("{} rows", ids.len()),
                format!("expected the {batch} rows of {tokens} tokens of input_ids"),
            ));
        }
        let penultimate = self.encoder.penultimate_hidden_state(input_ids)?;
        let layers = &self.encoder.text_model.encoder.layers;
        let last = layers[layers.len() - 1].forward(penultimate.clone());
        let last_hidden_state = self.encoder.text_model.final_layer_norm.forward(last);
        let [_, _, hidden] = last_hidden_state.dims();
        let rows = pooled_positions(ids, self.eos_token_id)
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                last_hidden_state
                    .clone()
                    .slice([i..i + 1, p..p + 1, 0..hidden])
                    .reshape([1, hidden])
            })
            .collect();
        let pooled = Tensor::cat(rows, 0);
        Ok(ProjectedOutput {
            penultimate,
            last_hidden_state,
            text_embeds: self.text_projection.forward(pooled),
        })
    }
}

impl ClipTextModel {
    /// The penultimate layer's output (transformers' `hidden_states[-2]`, without the final
    /// norm): what SDXL conditions on.
    ///
    /// # Shapes
    ///
    /// - input_ids: `[batch, tokens]`
    /// - output: `[batch, tokens, hidden]`
    pub fn penultimate_hidden_state(&self, input_ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        let layers = &self.text_model.encoder.layers;
        if layers.len() < 2 {
            return Err(Error::invalid(
                "num_hidden_layers",
                layers.len(),
                "SDXL's text encoders need at least 2 layers (it uses the penultimate)",
            ));
        }
        let mut x = self.embed(input_ids);
        for layer in &layers[..layers.len() - 1] {
            x = layer.forward(x);
        }
        Ok(x)
    }
}

impl LoraLayers for ClipTextModelWithProjection {
    /// The encoder's layers (kohya `lora_te2_text_model_encoder_layers_*`); the projection is
    /// not adapted, as in kohya's and diffusers' SDXL trainers.
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.encoder.collect_layers(prefix, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_positions_follow_transformers() {
        // Real end-of-text id: its first occurrence (the padding may repeat it).
        assert_eq!(pooled_positions(&[vec![7, 5, 9, 9, 9]], 9), vec![2]);
        // Padding with "!" (id 0) after the end-of-text.
        assert_eq!(pooled_positions(&[vec![7, 5, 9, 0, 0]], 9), vec![2]);
        // Legacy configs: the largest id.
        assert_eq!(pooled_positions(&[vec![0, 40, 3, 1, 1]], 2), vec![1]);
    }
}
