//! The DDPM noise schedule used to train Stable Diffusion.
//!
//! `betas = linspace(√β₀, √β₁, T)²` ("scaled_linear", β₀ = 0.00085, β₁ = 0.012, T = 1000) and
//! `ᾱ_t = Π (1 − β)`. The arithmetic follows PyTorch's (f32 `linspace`, cumulative product
//! accumulated in f64 and stored in f32), so ᾱ matches diffusers' `DDPMScheduler` to the last
//! bit or so.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the model is trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The added noise ε (SD1.x, SD2 base).
    #[default]
    Epsilon,
    /// The velocity `v = √ᾱ·ε − √(1−ᾱ)·x₀` (SD2 768-v).
    VPrediction,
}

impl Prediction {
    /// diffusers' name (`epsilon`, `v_prediction`), as in `scheduler_config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::VPrediction => "v_prediction",
        }
    }
}

impl std::fmt::Display for Prediction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A discrete-time DDPM schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// diffusers' `scaled_linear` schedule.
    pub fn scaled_linear(beta_start: f64, beta_end: f64, steps: usize) -> Result<Self> {
        if steps < 2 {
            return Err(Error::invalid(
                "schedule.num_train_timesteps",
                steps,
                "must be at least 2",
            ));
        }
        if !(0.0 < beta_start && beta_start < beta_end && beta_end < 1.0) {
            return Err(Error::invalid(
                "schedule.beta_start/beta_end",
                format!("{beta_start}/{beta_end}"),
                "expected 0 < beta_start < beta_end < 1",
            ));
        }
        let (start, end) = (beta_start.sqrt() as f32, beta_end.sqrt() as f32);
        // torch.linspace: forward from the start for the first half, backward from the end
        // for the second, with an f32 step.
        let step = (end - start) / (steps - 1) as f32;
        let half = steps / 2;
        let mut alphas_cumprod = Vec::with_capacity(steps);
        let mut acc = 1.0f64;
        for i in 0..steps {
            let sqrt_beta = if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            };
            let beta = sqrt_beta * sqrt_beta;
            let alpha = 1.0f32 - beta;
            acc *= alpha as f64;
            alphas_cumprod.push(acc as f32);
        }
        Ok(Self { alphas_cumprod })
    }

    /// The schedule of Stable Diffusion 1.x/2.x.
    pub fn stable_diffusion() -> Self {
        Self::scaled_linear(0.00085, 0.012, 1000).expect("valid constants")
    }

    /// Number of training timesteps `T`.
    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// ᾱ for every timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `(√ᾱ_t, √(1−ᾱ_t))` per timestep, as diffusers' `add_noise` computes them (f32).
    pub fn coefficients(&self, timesteps: &[usize]) -> (Vec<f32>, Vec<f32>) {
        timesteps
            .iter()
            .map(|&t| {
                let a = self.alphas_cumprod[t];
                (a.sqrt(), (1.0 - a).sqrt())
            })
            .unzip()
    }

    /// Signal-to-noise ratio `ᾱ / (1 − ᾱ)` (sd-scripts' `all_snr`).
    pub fn snr(&self, t: usize) -> f32 {
        let a = self.alphas_cumprod[t];
        a / (1.0 - a)
    }

    /// Min-SNR-γ loss weights (Hang et al. 2023, as in sd-scripts and diffusers):
    /// `min(snr, γ) / snr` for ε-prediction, `min(snr, γ) / (snr + 1)` for v-prediction.
    pub fn min_snr_weights(
        &self,
        timesteps: &[usize],
        gamma: f32,
        prediction: Prediction,
    ) -> Vec<f32> {
        timesteps
            .iter()
            .map(|&t| {
                let snr = self.snr(t);
                let clipped = snr.min(gamma);
                match prediction {
                    Prediction::Epsilon => clipped / snr,
                    Prediction::VPrediction => clipped / (snr + 1.0),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_endpoints() {
        let s = NoiseSchedule::stable_diffusion();
        assert_eq!(s.num_train_timesteps(), 1000);
        assert!((s.alphas_cumprod()[0] - (1.0 - 0.00085)).abs() < 1e-7);
        // ᾱ decreases monotonically to about 0.0047 at t = 999.
        assert!(s.alphas_cumprod().windows(2).all(|w| w[1] < w[0]));
        assert!((s.alphas_cumprod()[999] - 0.004_660_5).abs() < 1e-5);
    }

    #[test]
    fn min_snr_weights_cap_low_noise_steps_only() {
        let s = NoiseSchedule::stable_diffusion();
        let w = s.min_snr_weights(&[0, 999], 5.0, Prediction::Epsilon);
        assert!(
            w[0] < 0.01,
            "t = 0 has a huge SNR and is down-weighted: {}",
            w[0]
        );
        assert_eq!(w[1], 1.0, "high-noise steps keep weight 1");
        let v = s.min_snr_weights(&[999], 5.0, Prediction::VPrediction);
        assert!((v[0] - s.snr(999) / (s.snr(999) + 1.0)).abs() < 1e-7);
    }

    #[test]
    fn bad_betas_are_quoted() {
        let err = NoiseSchedule::scaled_linear(0.02, 0.01, 1000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0.02/0.01"), "{err}");
    }
}
