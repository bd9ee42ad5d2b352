//! Loading diffusers-format weights (`diffusion_pytorch_model.safetensors`).
//!
//! The module tree is walked with a burn [`ModuleMapper`]; each parameter's burn path is turned
//! into its diffusers key by a few renames (norm `gamma`/`beta` → `weight`/`bias`, `to_out` →
//! `to_out.0`, the feed-forward's `net.0.proj`/`net.2`, and the enum variant of `proj_in`/
//! `proj_out` dropped). Linear weights are transposed from PyTorch's `[out, in]` to burn's
//! `[in, out]`. fp16 and bf16 files are widened to fp32.

use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;

use super::UNet2DConditionModel;
use crate::error::{Error, Result};
use crate::tensor_file::TensorFile;

/// Renames a burn path segment, given the struct it belongs to, to its diffusers spelling.
fn diffusers_segment<'a>(name: &'a str, container: &str) -> &'a str {
    match (container, name) {
        ("Struct:Attention", "to_out") => "to_out.0",
        ("Struct:FeedForward", "geglu_proj") => "net.0.proj",
        ("Struct:FeedForward", "out") => "net.2",
        ("Struct:GroupNorm" | "Struct:LayerNorm", "gamma") => "weight",
        ("Struct:GroupNorm" | "Struct:LayerNorm", "beta") => "bias",
        _ => name,
    }
}

/// Loads matching tensors from a safetensors file into every parameter of the tree.
struct DiffusersLoader<'f> {
    file: &'f TensorFile,
    /// `(segment, container type)` from the root to the current parameter.
    stack: Vec<(String, String)>,

    error: Option<Error>,
}

impl DiffusersLoader<'_> {
    fn key(&self) -> Option<String> {
        let mut parts = Vec::with_capacity(self.stack.len());
        for (name, container) in &self.stack {
            if name == "lora" {
                // Adapter factors are not part of the base checkpoint.
                return None;
            }
            if container.starts_with("Enum:") {
                continue;
            }
            parts.push(diffusers_segment(name, container));
        }
        Some(parts.join("."))
    }

    fn is_linear_weight(&self) -> bool {
        matches!(self.stack.last(), Some((name, container)) if name == "weight" && container == "Struct:LoraLinear")
    }
}

impl ModuleMapper for DiffusersLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let Some(key) = self.key() else {
            return param;
        };
        let ours = param.lazy_shape().dims::<D>().to_vec();
        let transpose = self.is_linear_weight() && D == 2;
        let expected = if transpose {
            vec![ours[1], ours[0]]
        } else {
            ours
        };
        match self.file.read_shaped(&key, &expected) {
            Ok(host) => {
                let host = if transpose { host.transposed() } else { host };
                let device = param.lazy_device();
                Param::initialized(param.id, host.to_tensor::<D>(&device))
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

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
        let mut loader = DiffusersLoader {
            file,
            stack: Vec::new(),

            error: None,
        };
        let model = self.map(&mut loader);
        match loader.error {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    /// The diffusers key of every base parameter, in model order (for checks and tools).
    pub fn diffusers_keys(&self) -> Vec<String> {
        struct Keys {
            stack: Vec<(String, String)>,
            keys: Vec<String>,
        }
        impl burn::module::ModuleVisitor for Keys {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.stack
                    .push((name.to_string(), container_type.to_string()));
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.stack.pop();
            }
            fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
                if self.stack.iter().any(|(n, _)| n == "lora") {
                    return;
                }
                let key: Vec<&str> = self
                    .stack
                    .iter()
                    .filter(|(_, c)| !c.starts_with("Enum:"))
                    .map(|(n, c)| diffusers_segment(n, c))
                    .collect();
                self.keys.push(key.join("."));
            }
        }
        let mut keys = Keys {
            stack: Vec::new(),
            keys: Vec::new(),
        };
        self.visit(&mut keys);
        keys.keys
    }
}
