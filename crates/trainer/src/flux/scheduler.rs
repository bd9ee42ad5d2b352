//! diffusers' `FlowMatchEulerDiscreteScheduler` as `FluxPipeline` drives it: the σ schedule
//! of an inference run and the Euler step of the flow.
//!
//! `FluxPipeline` passes `sigmas = linspace(1, 1/n, n)` and, with dynamic shifting (FLUX.1),
//! `μ = calculate_shift(image tokens, ...)`, a line through `(base_image_seq_len, base_shift)`
//! and `(max_image_seq_len, max_shift)`. The scheduler shifts each σ (`e^μ / (e^μ + 1/σ − 1)`,
//! or a fixed `shift·σ / (1 + (shift − 1)·σ)` without dynamic shifting), optionally stretches
//! the schedule to end at `shift_terminal`, and appends a terminal 0. The model sees
//! `timestep = σ` (diffusers passes `(1000·σ) / 1000`, computed here the same way in f32), and
//! a step is `x ← x + (σ_next − σ)·v`. The arithmetic follows diffusers' dtypes (σ in f32 with
//! `μ` and `e^μ` rounded to f32 as NumPy does), so the schedule matches bit for bit.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// The most inference steps a schedule accepts.
pub const MAX_STEPS: usize = 1000;

/// How a dynamic shift maps σ (`time_shift_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeShift {
    /// `e^μ / (e^μ + 1/σ − 1)` (FLUX.1).
    Exponential,
    /// `μ / (μ + 1/σ − 1)`.
    Linear,
}

/// A checked `scheduler/scheduler_config.json` of `FlowMatchEulerDiscreteScheduler`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchConfig {
    /// Training timesteps (1000): the model's timestep is `σ · num_train_timesteps` scaled back.
    pub num_train_timesteps: usize,
    /// The fixed shift used without dynamic shifting (3.0 in FLUX.1-dev's file, unused there).
    pub shift: f64,
    /// Whether σ is shifted by the image's token count (FLUX.1: true).
    pub use_dynamic_shifting: bool,
    /// μ at `base_image_seq_len` tokens (0.5).
    pub base_shift: f64,
    /// μ at `max_image_seq_len` tokens (1.15).
    pub max_shift: f64,
    /// Token count of `base_shift` (256).
    pub base_image_seq_len: usize,
    /// Token count of `max_shift` (4096).
    pub max_image_seq_len: usize,
    /// The dynamic shift's form.
    pub time_shift: TimeShift,
    /// The last σ before the terminal 0 is stretched to this, when given.
    pub shift_terminal: Option<f64>,
}

impl Default for FlowMatchConfig {
    /// FLUX.1-dev's (and schnell's, which has no dynamic shifting but is sampled the same way
    /// by its users at 1–4 steps).
    fn default() -> Self {
        Self::flux_dev()
    }
}

/// Keys of the diffusers config that select a behaviour this crate does not implement: each is
/// refused, by name, when set.
const UNSUPPORTED: [&str; 5] = [
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "stochastic_sampling",
];

impl FlowMatchConfig {
    /// FLUX.1-dev's `scheduler_config.json`.
    pub fn flux_dev() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 3.0,
            use_dynamic_shifting: true,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift: TimeShift::Exponential,
            shift_terminal: None,
        }
    }

    /// Reads `scheduler/scheduler_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_diffusers(&crate::error::read_json(path.as_ref())?)
    }

    /// Interprets a parsed config with diffusers' defaults for absent keys (FLUX.1's values
    /// where diffusers has none) and checks it.
    pub fn from_diffusers(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("scheduler", value, "expected a JSON object"))?;
        if let Some(class) = obj.get("_class_name").and_then(Value::as_str)
            && class != "FlowMatchEulerDiscreteScheduler"
        {
            return Err(Error::Unsupported {
                field: "scheduler._class_name".into(),
                value: class.into(),
                hint: "Flux samples with FlowMatchEulerDiscreteScheduler".into(),
            });
        }
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        for key in UNSUPPORTED {
            if let Some(v) = get(key)
                && v.as_bool() != Some(false)
            {
                return Err(Error::Unsupported {
                    field: format!("scheduler.{key}"),
                    value: v.to_string(),
                    hint: "only the plain (optionally shifted) Euler schedule is implemented"
                        .into(),
                });
            }
        }
        let d = Self::flux_dev();
        let count = |k: &str, default: usize| -> Result<usize> {
            get(k).map_or(Ok(default), |v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    Error::invalid(format!("scheduler.{k}"), v, "expected a positive integer")
                })
            })
        };
        let number = |k: &str, default: f64| -> Result<f64> {
            get(k).map_or(Ok(default), |v| {
                v.as_f64()
                    .ok_or_else(|| Error::invalid(format!("scheduler.{k}"), v, "expected a number"))
            })
        };
        let time_shift = match get("time_shift_type").map(|v| (v, v.as_str())) {
            None | Some((_, Some("exponential"))) => TimeShift::Exponential,
            Some((_, Some("linear"))) => TimeShift::Linear,
            Some((v, _)) => {
                return Err(Error::invalid(
                    "scheduler.time_shift_type",
                    v,
                    "expected \"exponential\" or \"linear\"",
                ));
            }
        };
        let config = Self {
            num_train_timesteps: count("num_train_timesteps", d.num_train_timesteps)?,
            shift: number("shift", 1.0)?,
            use_dynamic_shifting: match get("use_dynamic_shifting") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| {
                    Error::invalid("scheduler.use_dynamic_shifting", v, "expected a boolean")
                })?,
            },
            base_shift: number("base_shift", d.base_shift)?,
            max_shift: number("max_shift", d.max_shift)?,
            base_image_seq_len: count("base_image_seq_len", d.base_image_seq_len)?,
            max_image_seq_len: count("max_image_seq_len", d.max_image_seq_len)?,
            time_shift,
            shift_terminal: get("shift_terminal")
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        Error::invalid("scheduler.shift_terminal", v, "expected a number")
                    })
                })
                .transpose()?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the ranges: timesteps in 1..=100 000, shifts finite and within ±10 (`shift`
    /// positive), the two sequence lengths distinct, `shift_terminal` in (0, 1).
    pub fn validate(&self) -> Result<()> {
        if self.num_train_timesteps == 0 || self.num_train_timesteps > 100_000 {
            return Err(Error::invalid(
                "scheduler.num_train_timesteps",
                self.num_train_timesteps,
                "expected 1..=100000",
            ));
        }
        for (field, v) in [
            ("scheduler.shift", self.shift),
            ("scheduler.base_shift", self.base_shift),
            ("scheduler.max_shift", self.max_shift),
        ] {
            if !v.is_finite() || v.abs() > 10.0 {
                return Err(Error::invalid(field, v, "expected a number within ±10"));
            }
        }
        if self.shift <= 0.0 {
            return Err(Error::invalid(
                "scheduler.shift",
                self.shift,
                "expected a positive shift",
            ));
        }
        if self.use_dynamic_shifting && self.base_image_seq_len == self.max_image_seq_len {
            return Err(Error::invalid(
                "scheduler.max_image_seq_len",
                self.max_image_seq_len,
                "must differ from base_image_seq_len (the shift is a line through both)",
            ));
        }
        if let Some(t) = self.shift_terminal
            && !(t > 0.0 && t < 1.0)
        {
            return Err(Error::invalid(
                "scheduler.shift_terminal",
                t,
                "expected a value in (0, 1)",
            ));
        }
        Ok(())
    }

    /// FluxPipeline's `calculate_shift`: μ for an image of `image_tokens` packed tokens.
    pub fn mu(&self, image_tokens: usize) -> f64 {
        let m = (self.max_shift - self.base_shift)
            / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_tokens as f64 * m + b
    }

    /// The σ of each of `steps` steps followed by the terminal 0, for an image of
    /// `image_tokens` packed tokens, as `FluxPipeline` sets the scheduler up.
    ///
    /// # Errors
    ///
    /// When `steps` is not in 1..=[`MAX_STEPS`] (names `steps`).
    pub fn sigmas(&self, steps: usize, image_tokens: usize) -> Result<Vec<f32>> {
        if steps == 0 || steps > MAX_STEPS {
            return Err(Error::invalid(
                "steps",
                steps,
                format!("expected 1..={MAX_STEPS} inference steps"),
            ));
        }
        // np.linspace(1.0, 1 / n, n) in f64, then cast to f32 by set_timesteps.
        let last = 1.0 / steps as f64;
        let linear = (0..steps).map(|i| {
            if steps == 1 {
                1.0
            } else if i == steps - 1 {
                last
            } else {
                1.0 + i as f64 * ((last - 1.0) / (steps - 1) as f64)
            }
        });
        let mut sigmas: Vec<f32> = if self.use_dynamic_shifting {
            let mu = self.mu(image_tokens);
            // NumPy casts the Python scalars to the array's f32 before each operation.
            let shift = match self.time_shift {
                TimeShift::Exponential => mu.exp() as f32,
                TimeShift::Linear => mu as f32,
            };
            linear
                .map(|s| {
                    let s = s as f32;
                    shift / (shift + (1.0 / s - 1.0))
                })
                .collect()
        } else {
            let (shift, shift_less_one) = (self.shift as f32, (self.shift - 1.0) as f32);
            linear
                .map(|s| {
                    let s = s as f32;
                    shift * s / (1.0 + shift_less_one * s)
                })
                .collect()
        };
        if let Some(terminal) = self.shift_terminal {
            let scale = (1.0 - sigmas[steps - 1]) / (1.0 - terminal) as f32;
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
        sigmas.push(0.0);
        Ok(sigmas)
    }

    /// The timestep the transformer is given for `sigma`: diffusers' `(σ · 1000) / 1000` in f32
    /// (the transformer multiplies it by 1000 again).
    pub fn model_timestep(&self, sigma: f32) -> f32 {
        let t = self.num_train_timesteps as f32;
        (sigma * t) / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mu_is_the_line_through_base_and_max() {
        let c = FlowMatchConfig::flux_dev();
        assert!((c.mu(256) - 0.5).abs() < 1e-12);
        assert!((c.mu(4096) - 1.15).abs() < 1e-12);
    }

    #[test]
    fn sigmas_start_at_one_and_end_at_zero() {
        let c = FlowMatchConfig::flux_dev();
        let s = c.sigmas(4, 4096).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], 1.0);
        assert_eq!(s[4], 0.0);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
        // A larger image keeps more noise at the same step.
        assert!(c.sigmas(4, 4096).unwrap()[2] > c.sigmas(4, 256).unwrap()[2]);
        assert!(c.sigmas(0, 64).is_err());
        assert!(c.sigmas(MAX_STEPS + 1, 64).is_err());
    }

    #[test]
    fn config_refuses_what_is_not_implemented_by_name() {
        let v = serde_json::json!({"use_karras_sigmas": true});
        let e = FlowMatchConfig::from_diffusers(&v).unwrap_err().to_string();
        assert!(e.contains("scheduler.use_karras_sigmas"), "{e}");
        let v = serde_json::json!({"time_shift_type": "cubic"});
        let e = FlowMatchConfig::from_diffusers(&v).unwrap_err().to_string();
        assert!(e.contains("time_shift_type"), "{e}");
        let v = serde_json::json!({"_class_name": "EulerDiscreteScheduler"});
        assert!(FlowMatchConfig::from_diffusers(&v).is_err());
    }

    #[test]
    fn terminal_stretch_ends_at_the_terminal_value() {
        let c = FlowMatchConfig {
            shift_terminal: Some(0.1),
            ..FlowMatchConfig::flux_dev()
        };
        let s = c.sigmas(10, 1024).unwrap();
        assert!((s[9] - 0.1).abs() < 1e-6);
    }
}
