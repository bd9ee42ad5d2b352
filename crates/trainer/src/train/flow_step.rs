//! One optimiser step of the Flux transformer's adapters on the flow-matching objective: the
//! counterpart of [`optimizer_step`](super::step::optimizer_step) for the UNet.

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use super::flow::{FlowNoise, FlowObjective, flow_matching_loss};
use super::optim::{accumulation_factor, clip_global_norm, global_grad_norm, scale_grads};
use super::step::StepStats;
use crate::error::{Error, Result};
use crate::flux::FluxTransformer2DModel;

/// One Flux micro-batch: latents, text states and the σ and noise drawn for them.
#[derive(Debug, Clone)]
pub struct FlowMicroBatch {
    /// `[b, c, h, w]` VAE latents (after shift and scale).
    pub latents: Tensor<4>,
    /// `[b, text_tokens, joint_attention_dim]` T5 states.
    pub encoder_hidden_states: Tensor<3>,
    /// `[b, pooled_projection_dim]` pooled CLIP text.
    pub pooled_projections: Tensor<2>,
    /// σ and noise.
    pub noise: FlowNoise,
}

/// How one optimiser step runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowStepSettings {
    /// Learning rate of this step.
    pub learning_rate: f64,
    /// Global gradient-norm clipping.
    pub max_grad_norm: Option<f64>,
    /// Micro-batches a full step accumulates (`gradient_accumulation_steps`): the summed
    /// gradients are divided by it, so a shorter group (an epoch's last) weighs `k/N` of a
    /// full one, as in sd-scripts ([`accumulation_factor`]).
    pub accumulation: usize,
    /// The 1-based step number, for [`Error::NonFiniteLoss`].
    pub step: usize,
}

/// One optimiser step: forward and backward for each micro-batch, gradients summed and divided
/// by `settings.accumulation`, clipped to `max_grad_norm` (global norm), then an update of the
/// adapters at `learning_rate`. A non-finite loss stops before the update with
/// [`Error::NonFiniteLoss`]; more micro-batches than `accumulation`, or none, are refused.
pub fn flow_optimizer_step(
    model: FluxTransformer2DModel,
    optim: &mut ModuleOptimizer,
    objective: &FlowObjective,
    micro_batches: Vec<FlowMicroBatch>,
    settings: FlowStepSettings,
) -> Result<(FluxTransformer2DModel, StepStats)> {
    let FlowStepSettings {
        learning_rate,
        max_grad_norm,
        accumulation,
        step,
    } = settings;
    let count = micro_batches.len();
    let factor = accumulation_factor(count, accumulation)?;
    let mut accumulator = GradientsAccumulator::new();
    let mut loss_sum = 0.0f64;
    for mb in micro_batches {
        let loss = flow_matching_loss(
            &model,
            objective,
            mb.latents,
            mb.encoder_hidden_states,
            mb.pooled_projections,
            &mb.noise,
        )?;
        loss_sum += loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        accumulator.accumulate(&model, grads);
    }
    let loss = (loss_sum / count as f64) as f32;
    if !loss.is_finite() {
        return Err(Error::NonFiniteLoss { step, loss });
    }
    let mut grads = accumulator.grads();
    if factor != 1.0 {
        scale_grads(&model, &mut grads, factor);
    }
    let grad_norm = match max_grad_norm {
        Some(max) => clip_global_norm(&model, &mut grads, max),
        None => global_grad_norm(&model, &grads),
    };
    let model = optim.step(learning_rate, model, grads);
    Ok((model, StepStats { loss, grad_norm }))
}
