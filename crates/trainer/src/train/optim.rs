//! AdamW on the adapters and PyTorch-style global gradient-norm clipping.
//!
//! Two differences from PyTorch are handled here: burn's `AdamWConfig` defaults to
//! `epsilon = 1e-5` and `weight_decay = 1e-4` (PyTorch: 1e-8 and 1e-2), so every value is set
//! explicitly; and burn's gradient clipping acts on each parameter tensor separately, whereas
//! sd-scripts (through `accelerator.clip_grad_norm_`) scales all gradients by one factor
//! computed from their global norm. [`clip_global_norm`] implements the latter.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// AdamW hyper-parameters, PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWSettings {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// First-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Denominator epsilon.
    #[serde(default = "default_eps")]
    pub epsilon: f64,
    /// Decoupled weight decay.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_wd() -> f64 {
    1e-2
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            beta1: default_beta1(),
            beta2: default_beta2(),
            epsilon: default_eps(),
            weight_decay: default_wd(),
        }
    }
}

impl AdamWSettings {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let lr = self.learning_rate;
        if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
            return Err(Error::invalid(
                "optimizer.learning_rate",
                lr,
                "expected a number in (0, 1], typically 1e-4",
            ));
        }
        for (field, b) in [
            ("optimizer.beta1", self.beta1),
            ("optimizer.beta2", self.beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(field, b, "expected a number in [0, 1)"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(Error::invalid(
                "optimizer.epsilon",
                self.epsilon,
                "must be positive",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "optimizer.weight_decay",
                self.weight_decay,
                "must be zero or positive",
            ));
        }
        Ok(())
    }

    /// The burn optimiser, every hyper-parameter explicit.
    pub fn build(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.epsilon as f32)
            .with_weight_decay(self.weight_decay as f32)
            .init()
    }

    /// sd-scripts-style description (`ss_optimizer`).
    pub fn describe(&self) -> String {
        format!(
            "AdamW(betas=({}, {}),eps={:e},weight_decay={})",
            self.beta1, self.beta2, self.epsilon, self.weight_decay
        )
    }
}

/// Sums `‖g‖²` over the parameters of `module` that have a gradient.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let sq = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// Multiplies every gradient of `module` by a factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of all gradients of `module`'s parameters (0 when there are none).
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut visitor = SquaredNorm { grads, total: None };
    module.visit(&mut visitor);
    visitor
        .total
        .map_or(0.0, |t| (t.into_scalar::<f32>() as f64).sqrt())
}

/// Scales all gradients by `min(1, max_norm / (‖g‖ + 1e-6))`, as `torch.nn.utils.clip_grad_norm_`
/// does, and returns the norm before clipping.
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm(module, grads);
    let factor = (max_norm / (norm + 1e-6)).min(1.0);
    if factor < 1.0 {
        module.visit(&mut Scale { grads, factor });
    }
    norm
}

/// Multiplies all gradients of `module` by `factor` (used to average accumulated gradients).
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    module.visit(&mut Scale { grads, factor });
}

/// The factor that turns gradients summed over a group of `group` micro-batches into one
/// step's gradient, when a step accumulates `accumulation` micro-batches: `1 / accumulation`.
///
/// The divisor is the configured number, not the group's: accelerate's `backward` divides every
/// loss by `gradient_accumulation_steps` and steps at the end of an epoch with whatever has
/// accumulated, so in sd-scripts and diffusers the shorter last group of an epoch weighs `k/N`
/// of a full one. Matching it keeps runs comparable with theirs. A group larger than
/// `accumulation` (or an empty one) is refused naming `micro_batches`.
pub fn accumulation_factor(group: usize, accumulation: usize) -> Result<f64> {
    if group == 0 || group > accumulation {
        return Err(Error::invalid(
            "micro_batches",
            group,
            format!("a step takes 1..={accumulation} micro-batches (gradient_accumulation_steps)"),
        ));
    }
    Ok(1.0 / accumulation as f64)
}
