//! LoRA adapters on a frozen base model.
//!
//! Every linear and convolution of the models is a [`LoraLinear`] or [`LoraConv2d`], which
//! computes `base(x) + (alpha / rank) · up(down(x))` when it carries an adapter — kohya's and
//! PEFT's formulation, with kohya's initialisation and alpha semantics. Adapters are placed by
//! matching diffusers module paths ([`targets`]); the base parameters are frozen, so only the
//! factors receive gradients.
//!
//! burn 0.22's built-in `Module::apply_lora` is not used: it only adapts 2-D weights (no LoCon),
//! materialises the dense delta at every forward (a weight-sized gradient per adapted layer),
//! and stores factors transposed with respect to kohya, while these wrappers cover linears and
//! convolutions uniformly and map one-to-one onto kohya and PEFT files.
//!
//! - [`linear`], [`conv`]: the adaptable layers.
//! - [`targets`]: module-path patterns and the usual presets.
//! - [`kohya`]: kohya-format LoRA files (`lora_unet_*`, `ss_*` metadata).
//! - [`peft`]: diffusers/PEFT-format files (`lora_A`/`lora_B`).

pub mod conv;
pub mod kohya;
pub mod linear;
pub mod peft;
pub mod targets;

use burn::module::Module;
use burn::tensor::{Device, FloatDType};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use conv::{ConvAdapter, LoraConv2d, LoraConv2dConfig};
pub use kohya::{
    KohyaMetadata, LoadedLora, TE_PREFIX, UNET_PREFIX, load_kohya, load_kohya_parts, save_kohya,
    save_kohya_parts,
};
pub use linear::{LinearAdapter, LoraLinear, LoraLinearConfig};
pub use peft::{
    PEFT_TEXT_ENCODER, PEFT_UNET, load_peft, load_peft_parts, save_peft, save_peft_parts,
};
pub use targets::TargetPatterns;

use crate::error::{Error, Result};
use crate::rng::{SeededRng, Stream};
use crate::tensor_file::HostTensor;

/// A mutable borrow of one adaptable layer.
#[derive(Debug)]
pub enum LayerMut<'a> {
    /// A linear layer.
    Linear(&'a mut LoraLinear),
    /// A 2-D convolution.
    Conv(&'a mut LoraConv2d),
}

impl LayerMut<'_> {
    /// Whether this is a convolution with a kernel wider than 1×1 (kohya's `conv_dim` layers).
    pub fn is_spatial_conv(&self) -> bool {
        matches!(self, LayerMut::Conv(c) if c.kernel_size() > 1)
    }

    /// Whether an adapter is attached.
    pub fn has_adapter(&self) -> bool {
        match self {
            LayerMut::Linear(l) => l.lora.is_some(),
            LayerMut::Conv(c) => c.lora.is_some(),
        }
    }

    /// Attaches a freshly initialised adapter.
    pub fn attach(&mut self, rank: usize, alpha: f64, rng: &mut SeededRng, device: &Device) {
        match self {
            LayerMut::Linear(l) => l.attach(rank, alpha, rng, device),
            LayerMut::Conv(c) => c.attach(rank, alpha, rng, device),
        }
    }

    /// Installs factors given in kohya/PyTorch layout.
    pub fn set_factors(
        &mut self,
        name: &str,
        down: HostTensor,
        up: HostTensor,
        alpha: f64,
        device: &Device,
    ) -> Result<()> {
        match self {
            LayerMut::Linear(l) => l.set_factors(name, down, up, alpha, device),
            LayerMut::Conv(c) => c.set_factors(name, down, up, alpha, device),
        }
    }

    /// The adapter's factors in kohya/PyTorch layout and its alpha.
    pub fn factors(&self) -> Option<(HostTensor, HostTensor, f64)> {
        match self {
            LayerMut::Linear(l) => l.factors(),
            LayerMut::Conv(c) => c.factors(),
        }
    }

    /// Folds the adapter into the base weight and removes it.
    pub fn merge(&mut self) {
        match self {
            LayerMut::Linear(l) => l.merge(),
            LayerMut::Conv(c) => c.merge(),
        }
    }

    /// Gives the adapter's factors parameter ids derived from `key`, so that a resumed run's
    /// optimiser state (keyed by parameter id) finds them again.
    pub fn set_stable_ids(&mut self, key: &str) {
        let id = |suffix: &str| {
            let digest = sha2::Sha256::digest(format!("{key}.{suffix}"));
            burn::module::ParamId::from(u64::from_le_bytes(
                digest[..8].try_into().expect("8 bytes"),
            ))
        };
        match self {
            LayerMut::Linear(l) => {
                if let Some(a) = &mut l.lora {
                    a.down.id = id("down");
                    a.up.id = id("up");
                }
            }
            LayerMut::Conv(c) => {
                if let Some(a) = &mut c.lora {
                    a.down.id = id("down");
                    a.up.id = id("up");
                }
            }
        }
    }

    /// Stores the frozen base weight and bias in `dtype` ([`LoraLinear::store_base`]).
    pub fn store_base(&mut self, dtype: FloatDType) {
        match self {
            LayerMut::Linear(l) => l.store_base(dtype),
            LayerMut::Conv(c) => c.store_base(dtype),
        }
    }

    /// Removes the adapter without merging.
    pub fn detach(&mut self) {
        match self {
            LayerMut::Linear(l) => l.lora = None,
            LayerMut::Conv(c) => c.lora = None,
        }
    }
}

/// Models whose adaptable layers can be listed with their diffusers module paths.
pub trait LoraLayers {
    /// Appends every adaptable layer under `prefix`, in a stable order.
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>);

    /// Every adaptable layer with its module path.
    fn layers(&mut self) -> Vec<(String, LayerMut<'_>)> {
        let mut out = Vec::new();
        self.collect_layers("", &mut out);
        out
    }
}

impl LoraLayers for LoraLinear {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        out.push((prefix.to_string(), LayerMut::Linear(self)));
    }
}

impl LoraLayers for LoraConv2d {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        out.push((prefix.to_string(), LayerMut::Conv(self)));
    }
}

impl<T: LoraLayers> LoraLayers for Vec<T> {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        for (i, item) in self.iter_mut().enumerate() {
            item.collect_layers(&join(prefix, &i.to_string()), out);
        }
    }
}

impl<T: LoraLayers> LoraLayers for Option<T> {
    fn collect_layers<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, LayerMut<'a>)>) {
        if let Some(item) = self {
            item.collect_layers(prefix, out);
        }
    }
}

/// Stores the base weights and biases of every adaptable layer of `model` (all its linears and
/// convolutions) in `dtype`; norms and embeddings keep theirs. Each layer then computes its base
/// product in `dtype` and returns its input's precision, while adapters (and so their gradients
/// and optimiser state) stay in theirs. Call before [`apply_lora`], which freezes the base.
pub fn store_base_weights<M: LoraLayers>(model: &mut M, dtype: FloatDType) {
    for (_, mut layer) in model.layers() {
        layer.store_base(dtype);
    }
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The adapter network: where adapters go and their rank and alpha (kohya's `network_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Rank of linear and 1×1-convolution adapters (kohya's `network_dim`).
    pub rank: usize,
    /// kohya's `network_alpha`: adapters are scaled by `alpha / rank`.
    pub alpha: f64,
    /// Module-path patterns of the adapted layers ([`targets`]); by default the attention
    /// projections.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// Rank of k×k-convolution adapters (kohya's `conv_dim`); `rank` when absent.
    #[serde(default)]
    pub conv_rank: Option<usize>,
    /// Alpha of k×k-convolution adapters (kohya's `conv_alpha`); `alpha` when absent.
    #[serde(default)]
    pub conv_alpha: Option<f64>,
}

fn default_targets() -> Vec<String> {
    targets::ATTENTION.iter().map(|s| s.to_string()).collect()
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 8.0,
            targets: default_targets(),
            conv_rank: None,
            conv_alpha: None,
        }
    }
}

impl NetworkConfig {
    /// A network of the given rank and alpha on the attention projections.
    pub fn new(rank: usize, alpha: f64) -> Self {
        Self {
            rank,
            alpha,
            ..Self::default()
        }
    }

    /// Replaces the target patterns.
    pub fn with_targets<S: AsRef<str>>(mut self, targets: &[S]) -> Self {
        self.targets = targets.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    /// Sets kohya's `conv_dim`/`conv_alpha`.
    pub fn with_conv(mut self, rank: usize, alpha: f64) -> Self {
        self.conv_rank = Some(rank);
        self.conv_alpha = Some(alpha);
        self
    }

    /// Rank and alpha for a layer.
    pub fn rank_alpha(&self, spatial_conv: bool) -> (usize, f64) {
        if spatial_conv {
            (
                self.conv_rank.unwrap_or(self.rank),
                self.conv_alpha.unwrap_or(self.alpha),
            )
        } else {
            (self.rank, self.alpha)
        }
    }

    /// Checks ranks, alphas and patterns.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::invalid("network.rank", 0, "must be at least 1"));
        }
        if self.conv_rank == Some(0) {
            return Err(Error::invalid("network.conv_rank", 0, "must be at least 1"));
        }
        for (field, alpha) in [
            ("network.alpha", Some(self.alpha)),
            ("network.conv_alpha", self.conv_alpha),
        ] {
            if let Some(a) = alpha
                && !(a.is_finite() && a > 0.0)
            {
                return Err(Error::invalid(field, a, "must be a positive number"));
            }
        }
        if self.targets.is_empty() {
            return Err(Error::invalid(
                "network.targets",
                "[]",
                "name at least one module pattern, e.g. \"to_q\"",
            ));
        }
        TargetPatterns::new(&self.targets)?;
        Ok(())
    }
}

/// Freezes `model` and attaches fresh adapters to the layers `network` selects.
///
/// Factors are drawn from the seed's LoRA stream, in the model's layer order, so the same seed
/// and network give the same initial adapters on any device. Returns the model and the adapted
/// module paths. A pattern that matches no layer is an error, since it is almost always a typo.
pub fn apply_lora<M: Module + LoraLayers>(
    model: M,
    network: &NetworkConfig,
    seed: u64,
    device: &Device,
) -> Result<(M, Vec<String>)> {
    network.validate()?;
    let patterns = TargetPatterns::new(&network.targets)?;
    let mut model = model.no_grad();
    let mut rng = SeededRng::new(seed, Stream::LoraInit);
    let mut adapted = Vec::new();
    let mut all = Vec::new();
    for (path, mut layer) in model.layers() {
        if patterns.matches(&path) {
            let (rank, alpha) = network.rank_alpha(layer.is_spatial_conv());
            layer.attach(rank, alpha, &mut rng, device);
            adapted.push(path.clone());
        }
        all.push(path);
    }
    if let Some(pattern) = patterns.unmatched(&all).into_iter().next() {
        return Err(Error::invalid(
            "network.targets",
            format!("{pattern:?}"),
            "matches no layer of the model",
        ));
    }
    Ok((model, adapted))
}

/// Gives every adapter of `model` parameter ids derived from `namespace` and its module path
/// (see [`LayerMut::set_stable_ids`]).
pub fn set_stable_ids<M: LoraLayers>(model: &mut M, namespace: &str) {
    for (path, mut layer) in model.layers() {
        layer.set_stable_ids(&format!("{namespace}/{path}"));
    }
}

/// Folds every adapter into its base weight, leaving a plain model.
pub fn merge_lora<M: LoraLayers>(model: &mut M) {
    for (_, mut layer) in model.layers() {
        layer.merge();
    }
}

/// The number of trainable adapter parameters.
pub fn adapter_param_count<M: LoraLayers>(model: &mut M) -> usize {
    model
        .layers()
        .iter()
        .map(|(_, layer)| match layer {
            LayerMut::Linear(l) => l.lora.as_ref().map_or(0, Module::num_params),
            LayerMut::Conv(c) => c.lora.as_ref().map_or(0, Module::num_params),
        })
        .sum()
}
