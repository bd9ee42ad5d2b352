//! Flow-matching timestep sampling: how each sample's noise level σ ∈ (0, 1) is drawn, and how
//! its loss is weighted.
//!
//! The modes are sd-scripts' `--timestep_sampling` (`library/flux_train_utils.py`,
//! `get_noisy_model_input_and_timesteps`) and diffusers' `--weighting_scheme`
//! (`compute_density_for_timestep_sampling`, `compute_loss_weighting_for_sd3`):
//!
//! ```text
//! uniform       σ = u                                  u ~ U[0, 1)
//! sigmoid       σ = sigmoid(scale · z)                 z ~ N(0, 1)
//! shift         σ = s·t / (1 + (s − 1)·t),  t = sigmoid(scale · z)
//! flux_shift    σ = e^μ / (e^μ + 1/t − 1),  t = sigmoid(scale · z),
//!               μ = 0.5 + (1.15 − 0.5)·(tokens − 256) / (4096 − 256)
//! logit_normal  u = sigmoid(mean + std · z), then the discrete schedule below
//! mode          u = 1 − v − m·(cos²(πv/2) − 1 + v),  v ~ U[0, 1), then the discrete schedule
//! ```
//!
//! `tokens` is the number of packed image tokens, `(h / 2)·(w / 2)` of the latent. The last
//! two pick one of the 1000 training timesteps of `FlowMatchEulerDiscreteScheduler`, as both
//! scripts do: `i = ⌊1000·u⌋`, `σ = shift((1000 − i) / 1000)` with the scheduler's `shift`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SeededRng;

/// Training timesteps of the discrete flow-matching schedule.
pub const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// The largest `sigmoid_scale`, `shift` and `logit_std` accepted.
pub const MAX_SCALE: f64 = 100.0;

/// How σ is drawn for each sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimestepSampling {
    /// σ uniform in `[0, 1)`.
    Uniform,
    /// σ = sigmoid(scale · z) (x-flux's, logit-normal).
    Sigmoid {
        /// Spread of the logits (1 for the standard logit-normal).
        sigmoid_scale: f64,
    },
    /// The logit-normal σ, shifted by a fixed `shift` (sd-scripts' `discrete_flow_shift`).
    Shift {
        /// Spread of the logits.
        sigmoid_scale: f64,
        /// Shift towards noise (> 1) or towards the image (< 1); 3.1582 for FLUX.1 at 1024².
        shift: f64,
    },
    /// The logit-normal σ, shifted by the resolution-dependent μ of FLUX.1's sampler
    /// (sd-scripts' `flux_shift`).
    FluxShift {
        /// Spread of the logits.
        sigmoid_scale: f64,
    },
    /// A discrete timestep at the logit-normal quantile (diffusers' `logit_normal`).
    LogitNormal {
        /// Mean of the logits.
        logit_mean: f64,
        /// Standard deviation of the logits.
        logit_std: f64,
        /// The discrete schedule's shift (1 for FLUX.1-dev's dynamic-shift scheduler).
        shift: f64,
    },
    /// A discrete timestep with the density of diffusers' `mode` scheme.
    Mode {
        /// Weight of the mode (diffusers' default 1.29); in `[-1, 1.75]`, where the map stays
        /// monotonic.
        mode_scale: f64,
        /// The discrete schedule's shift.
        shift: f64,
    },
}

impl Default for TimestepSampling {
    fn default() -> Self {
        Self::FluxShift { sigmoid_scale: 1.0 }
    }
}

/// sd-scripts' `time_shift(μ, 1, t)`: `e^μ / (e^μ + 1/t − 1)`.
pub fn time_shift(mu: f64, t: f64) -> f64 {
    mu.exp() / (mu.exp() + (1.0 / t - 1.0))
}

/// The fixed shift `s·t / (1 + (s − 1)·t)` of `FlowMatchEulerDiscreteScheduler`.
pub fn discrete_shift(shift: f64, t: f64) -> f64 {
    shift * t / (1.0 + (shift - 1.0) * t)
}

/// FLUX.1's resolution-dependent μ: 0.5 at 256 image tokens, 1.15 at 4096, linear between
/// (and beyond).
pub fn flux_mu(image_tokens: usize) -> f64 {
    let m = (1.15 - 0.5) / (4096.0 - 256.0);
    m * image_tokens as f64 + (0.5 - m * 256.0)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The σ of the discrete schedule's timestep at quantile `u ∈ [0, 1)`.
pub fn discrete_sigma(u: f64, shift: f64) -> f64 {
    let n = NUM_TRAIN_TIMESTEPS;
    let index = ((u * n as f64) as usize).min(n - 1);
    discrete_shift(shift, (n - index) as f64 / n as f64)
}

impl TimestepSampling {
    /// Whether the draw of [`sigma`](Self::sigma) is standard normal (otherwise uniform in
    /// `[0, 1)`).
    pub fn draws_normal(&self) -> bool {
        matches!(
            self,
            Self::Sigmoid { .. }
                | Self::Shift { .. }
                | Self::FluxShift { .. }
                | Self::LogitNormal { .. }
        )
    }

    /// σ for one draw (standard normal or uniform, per [`draws_normal`](Self::draws_normal)),
    /// for a latent of `image_tokens` packed tokens.
    pub fn sigma(&self, draw: f64, image_tokens: usize) -> f64 {
        match *self {
            Self::Uniform => draw,
            Self::Sigmoid { sigmoid_scale } => sigmoid(sigmoid_scale * draw),
            Self::Shift {
                sigmoid_scale,
                shift,
            } => discrete_shift(shift, sigmoid(sigmoid_scale * draw)),
            Self::FluxShift { sigmoid_scale } => {
                time_shift(flux_mu(image_tokens), sigmoid(sigmoid_scale * draw))
            }
            Self::LogitNormal {
                logit_mean,
                logit_std,
                shift,
            } => discrete_sigma(sigmoid(logit_mean + logit_std * draw), shift),
            Self::Mode { mode_scale, shift } => {
                let c = (std::f64::consts::FRAC_PI_2 * draw).cos();
                let u = 1.0 - draw - mode_scale * (c * c - 1.0 + draw);
                discrete_sigma(u.clamp(0.0, 1.0), shift)
            }
        }
    }

    /// Draws σ for one sample from `rng`.
    pub fn draw(&self, rng: &mut SeededRng, image_tokens: usize) -> f64 {
        let draw = if self.draws_normal() {
            rng.normal(1)[0] as f64
        } else {
            rng.uniform(1, 0.0, 1.0)[0] as f64
        };
        self.sigma(draw, image_tokens)
    }

    /// Refuses parameters outside their ranges, naming the field (under `field`).
    pub fn validate(&self, field: &str) -> Result<()> {
        let check = |name: &str, v: f64, lo: f64, hi: f64, open_lo: bool| -> Result<()> {
            let ok = v.is_finite() && v <= hi && if open_lo { v > lo } else { v >= lo };
            if ok {
                Ok(())
            } else {
                let bracket = if open_lo { "(" } else { "[" };
                Err(Error::invalid(
                    format!("{field}.{name}"),
                    v,
                    format!("expected a number in {bracket}{lo}, {hi}]"),
                ))
            }
        };
        match *self {
            Self::Uniform => Ok(()),
            Self::Sigmoid { sigmoid_scale } | Self::FluxShift { sigmoid_scale } => {
                check("sigmoid_scale", sigmoid_scale, 0.0, MAX_SCALE, true)
            }
            Self::Shift {
                sigmoid_scale,
                shift,
            } => {
                check("sigmoid_scale", sigmoid_scale, 0.0, MAX_SCALE, true)?;
                check("shift", shift, 0.0, MAX_SCALE, true)
            }
            Self::LogitNormal {
                logit_mean,
                logit_std,
                shift,
            } => {
                check("logit_mean", logit_mean, -10.0, 10.0, false)?;
                check("logit_std", logit_std, 0.0, MAX_SCALE, true)?;
                check("shift", shift, 0.0, MAX_SCALE, true)
            }
            Self::Mode { mode_scale, shift } => {
                check("mode_scale", mode_scale, -1.0, 1.75, false)?;
                check("shift", shift, 0.0, MAX_SCALE, true)
            }
        }
    }
}

/// The per-sample loss weight of σ (diffusers' `compute_loss_weighting_for_sd3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossWeighting {
    /// Every sample weighs 1.
    #[default]
    None,
    /// `σ⁻²`.
    SigmaSqrt,
    /// `2 / (π·(1 − 2σ + 2σ²))`.
    Cosmap,
}

impl LossWeighting {
    /// The weight of a sample at `sigma`.
    pub fn weight(&self, sigma: f64) -> f64 {
        match self {
            Self::None => 1.0,
            Self::SigmaSqrt => sigma.powi(-2),
            Self::Cosmap => {
                2.0 / (std::f64::consts::PI * (1.0 - 2.0 * sigma + 2.0 * sigma * sigma))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }

    // Reference values computed with sd-scripts' and diffusers' formulas in Python (float64):
    //   sigmoid(0.3)                                   = 0.574442516811659
    //   t = sigmoid(0.6); 3t / (1 + 2t)                 = 0.8453534049223103
    //   mu = get_lin_function(y1=0.5, y2=1.15)(1024)   = 0.63
    //   time_shift(0.63, 1.0, sigmoid(-0.5))            = 0.5324543063873188
    //   time_shift(mu(4096), 1.0, sigmoid(0.2))         = 0.7941296281990526

    #[test]
    fn uniform_and_sigmoid_sampling_follow_sd_scripts() {
        close(TimestepSampling::Uniform.sigma(0.37, 1024), 0.37);
        let s = TimestepSampling::Sigmoid { sigmoid_scale: 1.5 };
        close(s.sigma(0.2, 1024), 0.574442516811659);
        let s = TimestepSampling::Shift {
            sigmoid_scale: 2.0,
            shift: 3.0,
        };
        close(s.sigma(0.3, 64), 0.8453534049223103);
    }

    #[test]
    fn flux_shift_depends_on_the_resolution_as_sd_scripts() {
        close(flux_mu(256), 0.5);
        close(flux_mu(4096), 1.15);
        close(flux_mu(1024), 0.63);
        let s = TimestepSampling::FluxShift { sigmoid_scale: 1.0 };
        close(s.sigma(-0.5, 1024), 0.5324543063873188);
        close(s.sigma(0.2, 4096), 0.7941296281990526);
        // More tokens shift σ towards noise.
        assert!(s.sigma(0.0, 4096) > s.sigma(0.0, 1024));
        assert!(s.sigma(0.0, 1024) > s.sigma(0.0, 256));
    }

    #[test]
    fn discrete_modes_pick_a_scheduler_timestep() {
        // u = sigmoid(0 + 1·0) = 0.5 → index 500 → t = 0.5; shift 3: 1.5 / 2 = 0.75.
        let s = TimestepSampling::LogitNormal {
            logit_mean: 0.0,
            logit_std: 1.0,
            shift: 3.0,
        };
        close(s.sigma(0.0, 1024), 0.75);
        // Quantiles at the ends: the first timestep is σ = 1, the last 1/1000.
        close(discrete_sigma(0.0, 1.0), 1.0);
        close(discrete_sigma(0.9999, 1.0), 0.001);
        // mode with scale 1.29 at v = 0.25: u = 1 − 0.25 − 1.29·(cos²(π/8) − 0.75)
        //   = 0.6164161261346769 → index 616 → t = 0.384.
        let m = TimestepSampling::Mode {
            mode_scale: 1.29,
            shift: 1.0,
        };
        close(m.sigma(0.25, 1024), 0.384);
    }

    #[test]
    fn loss_weightings_follow_diffusers() {
        close(LossWeighting::None.weight(0.3), 1.0);
        close(LossWeighting::SigmaSqrt.weight(0.5), 4.0);
        // 2 / (π·(1 − 0.6 + 0.18)) = 1.097620297185485
        close(LossWeighting::Cosmap.weight(0.3), 1.097620297185485);
    }

    #[test]
    fn draws_stay_in_the_unit_interval() {
        let mut rng = SeededRng::new(3, Stream::Noise);
        for sampling in [
            TimestepSampling::Uniform,
            TimestepSampling::default(),
            TimestepSampling::Mode {
                mode_scale: 1.29,
                shift: 3.0,
            },
        ] {
            for _ in 0..200 {
                let s = sampling.draw(&mut rng, 4096);
                assert!((0.0..=1.0).contains(&s), "{sampling:?}: {s}");
            }
        }
    }

    #[test]
    fn out_of_range_parameters_are_refused_by_name() {
        let err = TimestepSampling::Shift {
            sigmoid_scale: 1.0,
            shift: 0.0,
        }
        .validate("objective.timestep_sampling")
        .unwrap_err()
        .to_string();
        assert!(err.contains("objective.timestep_sampling.shift"), "{err}");
        let err = TimestepSampling::Mode {
            mode_scale: 2.0,
            shift: 1.0,
        }
        .validate("t")
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("t.mode_scale") && err.contains("1.75"),
            "{err}"
        );
        assert!(TimestepSampling::default().validate("t").is_ok());
    }
}
