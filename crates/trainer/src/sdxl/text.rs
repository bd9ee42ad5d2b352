//! SDXL's text conditioning: two tokenizers, two encoders, one context and one pooled vector.
//!
//! As diffusers' `StableDiffusionXLPipeline.encode_prompt` and sd-scripts' SDXL trainers do it:
//! each tokenizer frames, truncates and pads the caption to 77 tokens (the first pads with
//! `<|endoftext|>`, the second with its configured pad token, `!` in SDXL); each encoder's
//! penultimate hidden state (no final norm) is taken, and the two are concatenated along the
//! width (768 + 1280 = 2048 in the full model); the second encoder's projected pooled output is
//! the `text_embeds` of the UNet's added conditioning. Caption dropout encodes the empty
//! caption through both encoders, as both trainers do.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::clip::{ClipTextModel, ClipTextModelWithProjection, ClipTokenizer, ids_tensor};
use crate::error::{Error, Result};
use crate::lora::{LayerMut, LoraLayers, join};

/// The two tokenizers.
#[derive(Debug, Clone)]
pub struct SdxlTokenizers {
    /// CLIP ViT-L's (`tokenizer/`).
    pub tokenizer: ClipTokenizer,
    /// OpenCLIP bigG's (`tokenizer_2/`).
    pub tokenizer_2: ClipTokenizer,
}

/// Token ids of a batch for both encoders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdxlIds {
    /// Rows for the first encoder.
    pub ids: Vec<Vec<u32>>,
    /// Rows for the second encoder.
    pub ids_2: Vec<Vec<u32>>,
}

impl SdxlTokenizers {
    /// Frames, truncates and pads every caption for both encoders.
    pub fn encode_batch(&self, captions: &[&str]) -> SdxlIds {
        SdxlIds {
            ids: captions
                .iter()
                .map(|c| self.tokenizer.encode_padded(c))
                .collect(),
            ids_2: captions
                .iter()
                .map(|c| self.tokenizer_2.encode_padded(c))
                .collect(),
        }
    }
}

/// The two text encoders.
#[derive(Module, Debug)]
pub struct SdxlTextEncoders {
    /// CLIP ViT-L (`text_encoder/`, kohya `lora_te1_*`).
    pub text_encoder: ClipTextModel,
    /// OpenCLIP bigG with projection (`text_encoder_2/`, kohya `lora_te2_*`).
    pub text_encoder_2: ClipTextModelWithProjection,
}

/// What the UNet is conditioned on.
#[derive(Debug, Clone)]
pub struct SdxlText {
    /// Both penultimate states side by side: `[batch, 77, width_1 + width_2]`.
    pub context: Tensor<3>,
    /// The second encoder's projected pooled output: `[batch, projection_dim]`.
    pub pooled: Tensor<2>,
}

impl SdxlTextEncoders {
    /// Width of the context (2048 in SDXL).
    pub fn context_width(&self) -> usize {
        let width = |m: &ClipTextModel| m.text_model.final_layer_norm.gamma.dims()[0];
        width(&self.text_encoder) + width(&self.text_encoder_2.encoder)
    }

    /// Encodes a batch of token ids.
    pub fn encode(&self, ids: &SdxlIds, device: &Device) -> Result<SdxlText> {
        if ids.ids.len() != ids.ids_2.len() {
            return Err(Error::invalid(
                "ids_2",
                format!("{} rows", ids.ids_2.len()),
                format!("expected one per caption ({})", ids.ids.len()),
            ));
        }
        let first = self
            .text_encoder
            .penultimate_hidden_state(ids_tensor(&ids.ids, device))?;
        let second = self
            .text_encoder_2
            .forward(ids_tensor(&ids.ids_2, device), &ids.ids_2)?;
        if first.dims()[1] != second.penultimate.dims()[1] {
            return Err(Error::invalid(
                "ids_2",
                format!("{} tokens", second.penultimate.dims()[1]),
                format!("expected as many tokens as ids ({})", first.dims()[1]),
            ));
        }
        Ok(SdxlText {
            context: Tensor::cat(vec![first, second.penultimate], 2),
            pooled: second.text_embeds,
        })
    }
}

impl LoraLayers for SdxlTextEncoders {
    /// Paths `text_encoder.text_model.encoder.layers.*` and `text_encoder_2.text_model.*`, the
    /// component names of PEFT exports.
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        self.text_encoder
            .collect_layers(&join(prefix, "text_encoder"), out);
        self.text_encoder_2
            .collect_layers(&join(prefix, "text_encoder_2"), out);
    }
}
