//! The inference schedulers: diffusers' `DDIMScheduler` (η = 0) and `EulerDiscreteScheduler`,
//! configured from a model's `scheduler/scheduler_config.json`.

use std::path::Path;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::schedule::{NoiseSchedule, Prediction};

/// How inference timesteps are spread over the training range (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `0, r, 2r, …` reversed, plus `steps_offset` (SD1.x's choice).
    #[default]
    Leading,
    /// Counting down from the last training timestep.
    Trailing,
    /// Evenly from 0 to `T − 1`.
    Linspace,
}

/// A model's noise schedule and inference settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Training timesteps `T`.
    pub num_train_timesteps: usize,
    /// First β.
    pub beta_start: f64,
    /// Last β.
    pub beta_end: f64,
    /// What the UNet predicts.
    pub prediction_type: Prediction,
    /// Added to leading timesteps.
    pub steps_offset: usize,
    /// DDIM's ᾱ after the last step: 1, or ᾱ₀ (SD's choice).
    pub set_alpha_to_one: bool,
    /// Timestep spacing; when the config does not say (SD1.5's does not), each sampler uses
    /// its diffusers default: leading for DDIM, linspace for Euler.
    pub timestep_spacing: Option<TimestepSpacing>,
}

impl Default for SchedulerConfig {
    /// Stable Diffusion 1.x's `scheduler_config.json`.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            prediction_type: Prediction::Epsilon,
            steps_offset: 1,
            set_alpha_to_one: false,
            timestep_spacing: None,
        }
    }
}

impl SchedulerConfig {
    /// Reads a diffusers `scheduler_config.json` (any of the SD schedulers; only the shared
    /// schedule keys are used).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_diffusers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed scheduler config.
    pub fn from_diffusers(value: &Value) -> Result<Self> {
        let d = Self::default();
        let get = |k: &str| value.get(k).filter(|v| !v.is_null());
        if let Some(v) = get("beta_schedule")
            && v.as_str() != Some("scaled_linear")
        {
            return Err(Error::Unsupported {
                field: "beta_schedule".into(),
                value: v.to_string(),
                hint: "only scaled_linear (Stable Diffusion's) is implemented".into(),
            });
        }
        if let Some(v) = get("trained_betas") {
            return Err(Error::Unsupported {
                field: "trained_betas".into(),
                value: v.to_string(),
                hint: "explicit betas are not implemented".into(),
            });
        }
        let prediction_type = match get("prediction_type").and_then(Value::as_str) {
            None | Some("epsilon") => Prediction::Epsilon,
            Some("v_prediction") => Prediction::VPrediction,
            Some(other) => {
                return Err(Error::Unsupported {
                    field: "prediction_type".into(),
                    value: format!("{other:?}"),
                    hint: "expected epsilon or v_prediction".into(),
                });
            }
        };
        // diffusers lists the keys a config left at their defaults; those follow the sampler.
        let defaulted = get("_use_default_values")
            .and_then(Value::as_array)
            .is_some_and(|keys| keys.iter().any(|k| k == "timestep_spacing"));
        let spacing = get("timestep_spacing")
            .and_then(Value::as_str)
            .filter(|_| !defaulted);
        let timestep_spacing = match spacing {
            None => None,
            Some("leading") => Some(TimestepSpacing::Leading),
            Some("trailing") => Some(TimestepSpacing::Trailing),
            Some("linspace") => Some(TimestepSpacing::Linspace),
            Some(other) => {
                return Err(Error::Unsupported {
                    field: "timestep_spacing".into(),
                    value: format!("{other:?}"),
                    hint: "expected leading, trailing or linspace".into(),
                });
            }
        };
        let f = |k: &str, default: f64| get(k).and_then(Value::as_f64).unwrap_or(default);
        let u = |k: &str, default: usize| {
            get(k)
                .and_then(Value::as_u64)
                .map_or(default, |n| n as usize)
        };
        Ok(Self {
            num_train_timesteps: u("num_train_timesteps", d.num_train_timesteps),
            beta_start: f("beta_start", d.beta_start),
            beta_end: f("beta_end", d.beta_end),
            prediction_type,
            steps_offset: u("steps_offset", 0),
            set_alpha_to_one: get("set_alpha_to_one")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            timestep_spacing,
        })
    }

    /// The training noise schedule these settings describe.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::scaled_linear(self.beta_start, self.beta_end, self.num_train_timesteps)
    }

    /// The spacing `kind` uses with these settings.
    pub fn spacing_for(&self, kind: SamplerKind) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(match kind {
            SamplerKind::Ddim => TimestepSpacing::Leading,
            SamplerKind::Euler => TimestepSpacing::Linspace,
        })
    }

    /// The inference timesteps for `steps` steps, largest first (fractional for Euler with
    /// linspace spacing).
    pub fn timesteps(&self, kind: SamplerKind, steps: usize) -> Vec<f64> {
        let t = self.num_train_timesteps;
        let round = kind == SamplerKind::Ddim;
        match self.spacing_for(kind) {
            TimestepSpacing::Leading => {
                let ratio = t / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / steps as f64;
                (0..steps)
                    .map(|i| (t as f64 - i as f64 * ratio).round() - 1.0)
                    .collect()
            }
            TimestepSpacing::Linspace => (0..steps)
                .rev()
                .map(|i| {
                    let v = if steps == 1 {
                        0.0
                    } else {
                        i as f64 * (t - 1) as f64 / (steps - 1) as f64
                    };
                    if round { v.round() } else { v }
                })
                .collect(),
        }
    }
}

/// Which sampler renders images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Deterministic DDIM (η = 0).
    #[default]
    Ddim,
    /// Euler (diffusers' `EulerDiscreteScheduler`, no churn).
    Euler,
}

impl SamplerKind {
    /// The name A1111 shows (`Sampler:` in PNG parameters).
    pub fn display_name(&self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Euler => "Euler",
        }
    }
}

/// A sampler set up for a number of steps.
#[derive(Debug, Clone)]
pub struct Sampler {
    kind: SamplerKind,
    prediction: Prediction,
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    /// DDIM: ᾱ used after the last step. Euler: unused.
    final_alpha_cumprod: f32,
    /// DDIM: `T / steps`.
    step_ratio: usize,
    /// Euler: σ per timestep, then 0.
    sigmas: Vec<f32>,
    spacing: TimestepSpacing,
}

impl Sampler {
    /// A `kind` sampler for `steps` inference steps.
    pub fn new(kind: SamplerKind, config: &SchedulerConfig, steps: usize) -> Result<Self> {
        if steps == 0 || steps > config.num_train_timesteps {
            return Err(Error::invalid(
                "steps",
                steps,
                format!("expected 1 to {}", config.num_train_timesteps),
            ));
        }
        let schedule = config.noise_schedule()?;
        let alphas_cumprod = schedule.alphas_cumprod().to_vec();
        let timesteps = config.timesteps(kind, steps);
        let sigma_table: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let sigmas = match kind {
            SamplerKind::Ddim => Vec::new(),
            SamplerKind::Euler => timesteps
                .iter()
                .map(|&t| {
                    // np.interp over integer positions.
                    let lo = (t.floor() as usize).min(sigma_table.len() - 1);
                    let hi = (lo + 1).min(sigma_table.len() - 1);
                    let w = t - lo as f64;
                    ((1.0 - w) * sigma_table[lo] as f64 + w * sigma_table[hi] as f64) as f32
                })
                .chain([0.0])
                .collect(),
        };
        Ok(Self {
            kind,
            prediction: config.prediction_type,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            step_ratio: config.num_train_timesteps / steps,
            timesteps,
            alphas_cumprod,
            sigmas,
            spacing: config.spacing_for(kind),
        })
    }

    /// The timesteps fed to the UNet, in order.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The scale of the initial noise (1 for DDIM; the largest σ, or √(σ²+1), for Euler).
    pub fn init_noise_sigma(&self) -> f64 {
        match self.kind {
            SamplerKind::Ddim => 1.0,
            SamplerKind::Euler => {
                let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
                // diffusers: σ_max for linspace/trailing spacing, √(σ_max² + 1) for leading.
                if self.spacing == TimestepSpacing::Leading {
                    (max * max + 1.0).sqrt() as f64
                } else {
                    max as f64
                }
            }
        }
    }

    /// The UNet input for step `i` (Euler divides by √(σ² + 1)).
    pub fn scale_model_input(&self, x: Tensor<4>, i: usize) -> Tensor<4> {
        match self.kind {
            SamplerKind::Ddim => x,
            SamplerKind::Euler => {
                let s = self.sigmas[i];
                x.div_scalar((s * s + 1.0).sqrt())
            }
        }
    }

    /// One step from `x` at step `i` with the UNet output `model_output`.
    pub fn step(&self, model_output: Tensor<4>, i: usize, x: Tensor<4>) -> Tensor<4> {
        match self.kind {
            SamplerKind::Ddim => self.ddim_step(model_output, i, x),
            SamplerKind::Euler => self.euler_step(model_output, i, x),
        }
    }

    fn ddim_step(&self, out: Tensor<4>, i: usize, x: Tensor<4>) -> Tensor<4> {
        let t = self.timesteps[i] as usize;
        let a = self.alphas_cumprod[t];
        let a_prev = t
            .checked_sub(self.step_ratio)
            .map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => ((x - out.clone().mul_scalar(sb)).div_scalar(sa), out),
            Prediction::VPrediction => (
                x.clone().mul_scalar(sa) - out.clone().mul_scalar(sb),
                out.mul_scalar(sa) + x.mul_scalar(sb),
            ),
        };
        x0.mul_scalar(a_prev.sqrt()) + eps.mul_scalar((1.0 - a_prev).sqrt())
    }

    fn euler_step(&self, out: Tensor<4>, i: usize, x: Tensor<4>) -> Tensor<4> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = match self.prediction {
            Prediction::Epsilon => x.clone() - out.mul_scalar(sigma),
            Prediction::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                out.mul_scalar(-sigma / s2.sqrt()) + x.clone().div_scalar(s2)
            }
        };
        let derivative = (x.clone() - x0).div_scalar(sigma);
        x + derivative.mul_scalar(next - sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_timesteps_as_diffusers() {
        let c = SchedulerConfig::default();
        let ddim = SamplerKind::Ddim;
        assert_eq!(c.timesteps(ddim, 4), vec![751.0, 501.0, 251.0, 1.0]);
        // Without a configured spacing Euler uses linspace, unrounded.
        assert_eq!(
            c.timesteps(SamplerKind::Euler, 4),
            vec![999.0, 666.0, 333.0, 0.0]
        );
        assert_eq!(c.timesteps(SamplerKind::Euler, 3), vec![999.0, 499.5, 0.0]);
        let trailing = SchedulerConfig {
            timestep_spacing: Some(TimestepSpacing::Trailing),
            ..c.clone()
        };
        assert_eq!(
            trailing.timesteps(ddim, 4),
            vec![999.0, 749.0, 499.0, 249.0]
        );
        let linspace = SchedulerConfig {
            timestep_spacing: Some(TimestepSpacing::Linspace),
            ..c
        };
        assert_eq!(linspace.timesteps(ddim, 4), vec![999.0, 666.0, 333.0, 0.0]);
    }

    #[test]
    fn unsupported_schedules_are_named() {
        let err = SchedulerConfig::from_diffusers(&serde_json::json!({"beta_schedule": "linear"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("beta_schedule"), "{err}");
    }
}
