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

use super::flow::FlowObjective;
use super::optim::{clip_global_norm, global_grad_norm, scale_grads};
use crate::error::{Error, Result};
use crate::rng::SeededRng;
use crate::schedule::{NoiseSchedule, Prediction};
use crate::tensor_file::HostTensor;
use crate::unet::{AddedConditions, UNet2DConditionModel};

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

/// The objective as configured: the prediction target follows the model unless it is given.
///
/// A model says what its UNet predicts in `scheduler/scheduler_config.json`
/// (`prediction_type`, diffusers' `epsilon` when the key is absent). Training an ε model on v
/// targets (or the reverse) silently produces a LoRA that fights its base, so
/// [`resolve`](Self::resolve) takes the model's value when `prediction` is unset, accepts an
/// explicit value that agrees with it, and refuses one that contradicts it unless
/// `override_model_prediction` is set (for deliberately converting a model's parameterisation).
/// Without a scheduler config (a UNet trained alone on latents), the explicit value or ε is used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// ε or v target; the model's `prediction_type` when absent.
    #[serde(default)]
    pub prediction: Option<Prediction>,
    /// Train on `prediction` even where the model's scheduler config says otherwise.
    #[serde(default)]
    pub override_model_prediction: bool,
    /// Offset-noise strength (sd-scripts' `noise_offset`; 0 disables it).
    #[serde(default)]
    pub noise_offset: f64,
    /// Min-SNR-γ weighting (sd-scripts' `min_snr_gamma`; typically 5).
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
    /// FLUX.1's flow-matching objective (timestep sampling, loss weighting, guidance); only
    /// for a Flux model, which trains with [`FlowObjective::default`] when it is unset.
    /// `prediction`, `noise_offset` and `min_snr_gamma` act on the DDPM noise schedule and
    /// are refused for Flux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowObjective>,
}

impl ObjectiveConfig {
    /// The objective to train with, given what the model predicts (`None` when the model does
    /// not say).
    pub fn resolve(&self, model: Option<Prediction>) -> Result<Objective> {
        let prediction = match (self.prediction, model) {
            (None, m) => m.unwrap_or_default(),
            (Some(p), None) => p,
            (Some(p), Some(m)) if p == m || self.override_model_prediction => p,
            (Some(p), Some(m)) => {
                return Err(Error::invalid(
                    "objective.prediction",
                    p,
                    format!(
                        "the model's scheduler/scheduler_config.json says prediction_type \
                         {m}; leave objective.prediction unset to train as the model predicts, \
                         or set objective.override_model_prediction to train {p} targets anyway"
                    ),
                ));
            }
        };
        Ok(Objective {
            prediction,
            noise_offset: self.noise_offset,
            min_snr_gamma: self.min_snr_gamma,
        })
    }
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
    /// Draws, for each sample in turn, its timestep, noise and offset noise from `rng`.
    ///
    /// Drawing sample by sample makes a batch of `n·b` draw exactly what `n` micro-batches of
    /// `b` draw one after the other, so gradient accumulation sees the same noise as one large
    /// batch.
    pub fn sample(rng: &mut SeededRng, latent_shape: [usize; 4], num_timesteps: usize) -> Self {
        let [b, c, h, w] = latent_shape;
        let mut timesteps = Vec::with_capacity(b);
        let mut noise = Vec::with_capacity(b * c * h * w);
        let mut offset = Vec::with_capacity(b * c);
        for _ in 0..b {
            timesteps.push(rng.below(0, num_timesteps));
            noise.extend(rng.normal(c * h * w));
            offset.extend(rng.normal(c));
        }
        Self {
            timesteps,
            noise: HostTensor::new(vec![b, c, h, w], noise),
            offset: HostTensor::new(vec![b, c, 1, 1], offset),
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
///
/// # Panics
///
/// For a UNet with added conditioning (SDXL); use [`diffusion_loss_added`].
pub fn diffusion_loss(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    objective: &Objective,
    latents: Tensor<4>,
    context: Tensor<3>,
    noise: &StepNoise,
) -> Tensor<1> {
    diffusion_loss_added(unet, schedule, objective, latents, context, None, noise)
        .expect("an SD1.x/SD2.x UNet takes no added conditions")
}

/// [`diffusion_loss`] with SDXL's added conditioning (`text_embeds` and `time_ids` of each
/// sample); refused when `added` does not fit the model.
pub fn diffusion_loss_added(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    objective: &Objective,
    latents: Tensor<4>,
    context: Tensor<3>,
    added: Option<&AddedConditions>,
    noise: &StepNoise,
) -> Result<Tensor<1>> {
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
    let pred = unet.forward_added(noisy, timesteps, context, added)?;
    let per_sample_mse: Tensor<1> = (pred - target)
        .square()
        .reshape([b, latent_len])
        .mean_dim(1)
        .reshape([b]);
    match objective.min_snr_gamma {
        Some(gamma) => {
            let w = schedule.min_snr_weights(&noise.timesteps, gamma as f32, objective.prediction);
            let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
            Ok((per_sample_mse * w).mean())
        }
        None => Ok(per_sample_mse.mean()),
    }
}

/// One micro-batch: latents, text states and the noise drawn for them.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// `[b, c, h, w]` latents.
    pub latents: Tensor<4>,
    /// `[b, tokens, width]` text states.
    pub context: Tensor<3>,
    /// SDXL's pooled text and `time_ids` of each sample; `None` for SD1.x/SD2.x.
    pub added: Option<AddedConditions>,
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
        let loss = diffusion_loss_added(
            &unet,
            schedule,
            objective,
            mb.latents,
            mb.context,
            mb.added.as_ref(),
            &mb.noise,
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn a_batch_draws_what_its_micro_batches_draw() {
        // Odd sizes: the Box–Muller pairs must not straddle samples.
        let shape = [3, 3, 3, 1];
        let batch = StepNoise::sample(&mut SeededRng::new(4, Stream::Noise), shape, 1000);
        let mut rng = SeededRng::new(4, Stream::Noise);
        let parts: Vec<StepNoise> = (0..3)
            .map(|_| StepNoise::sample(&mut rng, [1, 3, 3, 1], 1000))
            .collect();
        let cat = |f: fn(&StepNoise) -> &HostTensor| -> Vec<f32> {
            parts.iter().flat_map(|p| f(p).data.clone()).collect()
        };
        let t: Vec<usize> = parts.iter().flat_map(|p| p.timesteps.clone()).collect();
        assert_eq!(batch.timesteps, t);
        assert_eq!(batch.noise.data, cat(|p| &p.noise));
        assert_eq!(batch.offset.data, cat(|p| &p.offset));
    }

    #[test]
    fn the_prediction_follows_the_model_unless_overridden() {
        use Prediction::{Epsilon, VPrediction};
        let c = |prediction, override_model_prediction| ObjectiveConfig {
            prediction,
            override_model_prediction,
            ..ObjectiveConfig::default()
        };
        let p = |cfg: ObjectiveConfig, model| cfg.resolve(model).map(|o| o.prediction);
        assert_eq!(p(c(None, false), Some(VPrediction)).unwrap(), VPrediction);
        assert_eq!(p(c(None, false), None).unwrap(), Epsilon);
        assert_eq!(p(c(Some(VPrediction), false), None).unwrap(), VPrediction);
        assert_eq!(
            p(c(Some(VPrediction), false), Some(VPrediction)).unwrap(),
            VPrediction
        );
        assert_eq!(
            p(c(Some(Epsilon), true), Some(VPrediction)).unwrap(),
            Epsilon
        );
        let err = p(c(Some(Epsilon), false), Some(VPrediction)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::InvalidConfig { field, value, .. }
                if field == "objective.prediction" && value == "epsilon"),
            "{text}"
        );
        assert!(
            text.contains("v_prediction") && text.contains("override_model_prediction"),
            "{text}"
        );
    }
}
