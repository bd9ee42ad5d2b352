//! The diffusion training objective: noise the latents, predict, weight the error.
//!
//! This is the step of sd-scripts' `train_network.py` and diffusers'
//! `train_text_to_image_lora.py`:
//!
//! ```text
//! ε'    = ε + noise_offset · ε_offset          (ε_offset ~ N(0, 1) of shape [b, c, 1, 1])
//! x_t   = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε'
//! y     = ε'  or  v = √ᾱ_t · ε' − √(1 − ᾱ_t) · x₀
//! loss  = mean_b( w_b · mean_chw((unet(x_t, t, c) − y)²) )
//! ```
//!
//! with `w_b` the min-SNR-γ weight of `t_b`, or 1.

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::optim::{clip_global_norm, global_grad_norm, scale_grads};
use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::schedule::{NoiseSchedule, Prediction};
use crate::tensor_file::HostTensor;
use crate::unet::UNet2DConditionModel;

/// The objective's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// ε or v target.
    #[serde(default)]
    pub prediction: Prediction,
    /// Offset-noise strength (sd-scripts' `noise_offset`; 0 disables it).
    #[serde(default)]
    pub noise_offset: f64,
    /// Min-SNR-γ weighting (sd-scripts' `min_snr_gamma`; typically 5).
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
}

/// The random parts of one step, drawn on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct StepNoise {
    /// One timestep per sample, uniform in `[0, T)`.
    pub timesteps: Vec<usize>,
    /// Gaussian noise shaped like the latents.
    pub noise: HostTensor,
    /// Per-sample, per-channel offset noise `[b, c, 1, 1]`.
    pub offset: HostTensor,
}

impl StepNoise {
    /// Draws timesteps, noise and offset noise, in that order, from `rng`.
    pub fn sample(rng: &mut SeededRng, latent_shape: [usize; 4], num_timesteps: usize) -> Self {
        let [b, c, h, w] = latent_shape;
        let timesteps = (0..b).map(|_| rng.below(0, num_timesteps)).collect();
        let noise = HostTensor::new(vec![b, c, h, w], rng.normal(b * c * h * w));
        let offset = HostTensor::new(vec![b, c, 1, 1], rng.normal(b * c));
        Self {
            timesteps,
            noise,
            offset,
        }
    }
}

fn per_sample(values: Vec<f32>, device: &Device) -> Tensor<4> {
    let b = values.len();
    Tensor::from_data(TensorData::new(values, [b, 1, 1, 1]), device)
}

/// The weighted loss of one batch (a scalar tensor, differentiable through the adapters).
///
/// # Shapes
///
/// - latents: `[batch, channels, height, width]`
/// - context: `[batch, tokens, cross_attention_dim]`
/// - output: `[1]`
pub fn diffusion_loss(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    objective: &Objective,
    latents: Tensor<4>,
    context: Tensor<3>,
    noise: &StepNoise,
) -> Tensor<1> {
    let device = latents.device();
    let [b, c, h, w] = latents.dims();
    let latent_len = c * h * w;
    let mut eps: Tensor<4> = noise.noise.to_tensor(&device);
    if objective.noise_offset != 0.0 {
        let offset: Tensor<4> = noise.offset.to_tensor(&device);
        eps = eps + offset.mul_scalar(objective.noise_offset);
    }
    let (sqrt_a, sqrt_1ma) = schedule.coefficients(&noise.timesteps);
    let (sqrt_a, sqrt_1ma) = (per_sample(sqrt_a, &device), per_sample(sqrt_1ma, &device));
    let noisy = latents.clone() * sqrt_a.clone() + eps.clone() * sqrt_1ma.clone();
    let target = match objective.prediction {
        Prediction::Epsilon => eps,
        Prediction::VPrediction => eps * sqrt_a - latents * sqrt_1ma,
    };
    let t: Vec<f32> = noise.timesteps.iter().map(|&t| t as f32).collect();
    let timesteps = Tensor::<1>::from_data(TensorData::new(t, [b]), &device);
    let pred = unet.forward(noisy, timesteps, context);
    let per_sample_mse: Tensor<1> = (pred - target)
        .square()
        .reshape([b, latent_len])
        .mean_dim(1)
        .reshape([b]);
    match objective.min_snr_gamma {
        Some(gamma) => {
            let w = schedule.min_snr_weights(&noise.timesteps, gamma as f32, objective.prediction);
            let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
            (per_sample_mse * w).mean()
        }
        None => per_sample_mse.mean(),
    }
}

/// One micro-batch: latents, text states and the noise drawn for them.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// `[b, c, h, w]` latents.
    pub latents: Tensor<4>,
    /// `[b, tokens, width]` text states.
    pub context: Tensor<3>,
    /// Timesteps and noise.
    pub noise: StepNoise,
}

/// What one optimiser step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean loss of the micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimiser step: forward and backward for each micro-batch, gradients accumulated and
/// averaged, clipped to `max_grad_norm` (global norm), then an optimiser update of the
/// adapters at `learning_rate`.
///
/// A non-finite loss stops before the update with [`Error::NonFiniteLoss`] (`step` is the
/// 1-based step number used in that error).
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    unet: UNet2DConditionModel,
    optim: &mut ModuleOptimizer,
    schedule: &NoiseSchedule,
    objective: &Objective,
    micro_batches: Vec<MicroBatch>,
    learning_rate: f64,
    max_grad_norm: Option<f64>,
    step: usize,
) -> Result<(UNet2DConditionModel, StepStats)> {
    let count = micro_batches.len();
    let mut accumulator = GradientsAccumulator::new();
    let mut loss_sum = 0.0f64;
    for mb in micro_batches {
        let loss = diffusion_loss(
            &unet, schedule, objective, mb.latents, mb.context, &mb.noise,
        );
        loss_sum += loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &unet);
        accumulator.accumulate(&unet, grads);
    }
    let loss = (loss_sum / count as f64) as f32;
    if !loss.is_finite() {
        return Err(Error::NonFiniteLoss { step, loss });
    }
    let mut grads = accumulator.grads();
    if count > 1 {
        scale_grads(&unet, &mut grads, 1.0 / count as f64);
    }
    let grad_norm = match max_grad_norm {
        Some(max) => clip_global_norm(&unet, &mut grads, max),
        None => global_grad_norm(&unet, &grads),
    };
    let unet = optim.step(learning_rate, unet, grads);
    Ok((unet, StepStats { loss, grad_norm }))
}
