//! Loading diffusers-format weights (`diffusion_pytorch_model.safetensors`) into the UNet.
//!
//! The key mapping is shared with the other models ([`crate::weights`]).

use std::path::Path;

use super::UNet2DConditionModel;
use crate::error::Result;
use crate::tensor_file::TensorFile;
use crate::weights::{Weights, load_module, torch_keys};

impl UNet2DConditionModel {
    /// Loads a diffusers `diffusion_pytorch_model.safetensors` (fp32, fp16 or bf16).
    ///
    /// Every parameter must be present with the right shape; the first missing or mis-shaped
    /// tensor is reported by name. Keys the model does not use are ignored. Loaded weights are
    /// frozen (they do not require gradients).
    pub fn load_diffusers(self, path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        self.load_diffusers_file(&file)
    }

    /// [`load_diffusers`](Self::load_diffusers) from an already opened file.
    pub fn load_diffusers_file(self, file: &TensorFile) -> Result<Self> {
        load_module(self, file, "")
    }

    /// Loads from any weight source (a file, or a renamed view of a single-file checkpoint).
    pub fn load_weights(self, weights: &dyn Weights) -> Result<Self> {
        load_module(self, weights, "")
    }

    /// The diffusers key of every base parameter, in model order (for checks and tools).
    pub fn diffusers_keys(&self) -> Vec<String> {
        torch_keys(self, "")
    }
}
