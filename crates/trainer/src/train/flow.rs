//! The flow-matching objective of FLUX.1 (rectified flow), as diffusers'
//! `train_dreambooth_lora_flux.py` and sd-scripts' `flux_train_network.py` train it:
//!
//! ```text
//! x_σ   = (1 − σ)·x + σ·ε                 (σ per sample, from [`TimestepSampling`])
//! v     = transformer(pack(x_σ), σ, guidance, text, pooled, img_ids, txt_ids)
//! loss  = mean_b( w(σ_b) · mean_chw((unpack(v) − (ε − x))²) )
//! ```
//!
//! with `pack` the 2×2 patching of [`crate::flux::packing`], image ids
//! `image_ids(h / 2, w / 2, 0)`, text ids zero, the guidance value given to a model with
//! guidance embeddings (FLUX.1-dev; 1.0 by default in training) and `w` the [`LossWeighting`].
//! The model's prediction is used as it is (sd-scripts' `--model_prediction_type raw`).

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::flow_timesteps::{LossWeighting, TimestepSampling};
use crate::error::{Error, Result};
use crate::flux::{
    FluxInputs, FluxTransformer2DModel, image_ids, pack_latents, text_ids, unpack_latents,
};
use crate::rng::SeededRng;
use crate::tensor_file::HostTensor;

/// The largest guidance value accepted (FLUX.1-dev is distilled for about 1–10).
pub const MAX_GUIDANCE: f64 = 100.0;

/// The flow-matching objective's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowObjective {
    /// How σ is drawn (sd-scripts' `flux_shift` with sigmoid scale 1 by default).
    #[serde(default)]
    pub timestep_sampling: TimestepSampling,
    /// Per-sample loss weight of σ (none by default).
    #[serde(default)]
    pub weighting: LossWeighting,
    /// The guidance value given to a model with guidance embeddings (FLUX.1-dev).
    #[serde(default = "default_guidance")]
    pub guidance: f64,
}

fn default_guidance() -> f64 {
    1.0
}

impl Default for FlowObjective {
    fn default() -> Self {
        Self {
            timestep_sampling: TimestepSampling::default(),
            weighting: LossWeighting::default(),
            guidance: default_guidance(),
        }
    }
}

impl FlowObjective {
    /// Refuses settings outside their ranges, naming the field under `objective.flow.`
    /// (where [`TrainConfig`](super::config::TrainConfig) holds it).
    pub fn validate(&self) -> Result<()> {
        self.timestep_sampling
            .validate("objective.flow.timestep_sampling")?;
        if !(self.guidance.is_finite() && (0.0..=MAX_GUIDANCE).contains(&self.guidance)) {
            return Err(Error::invalid(
                "objective.flow.guidance",
                self.guidance,
                format!("expected a number in [0, {MAX_GUIDANCE}]"),
            ));
        }
        Ok(())
    }
}

/// The random parts of one flow-matching step, drawn on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowNoise {
    /// σ of each sample, in `[0, 1]`.
    pub sigmas: Vec<f64>,
    /// Gaussian noise shaped like the latents.
    pub noise: HostTensor,
}

impl FlowNoise {
    /// Draws, for each sample in turn, its σ and its noise from `rng` (sample by sample, so
    /// that a batch draws what its micro-batches draw one after the other).
    pub fn sample(
        rng: &mut SeededRng,
        latent_shape: [usize; 4],
        sampling: &TimestepSampling,
    ) -> Self {
        let [b, c, h, w] = latent_shape;
        let tokens = (h / 2) * (w / 2);
        let mut sigmas = Vec::with_capacity(b);
        let mut noise = Vec::with_capacity(b * c * h * w);
        for _ in 0..b {
            sigmas.push(sampling.draw(rng, tokens));
            noise.extend(rng.normal(c * h * w));
        }
        Self {
            sigmas,
            noise: HostTensor::new(vec![b, c, h, w], noise),
        }
    }
}

fn per_sample<const D: usize>(values: &[f64], device: &Device) -> Tensor<D> {
    let b = values.len();
    let mut shape = [1; D];
    shape[0] = b;
    let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// The weighted flow-matching loss of one batch (a scalar tensor, differentiable through the
/// adapters).
///
/// # Shapes
///
/// - latents: `[batch, channels, height, width]` (VAE latents after shift and scale), height
///   and width even, `4 · channels` = the model's `in_channels`
/// - encoder_hidden_states: `[batch, text_tokens, joint_attention_dim]`
/// - pooled_projections: `[batch, pooled_projection_dim]`
/// - output: `[1]`
pub fn flow_matching_loss(
    model: &FluxTransformer2DModel,
    objective: &FlowObjective,
    latents: Tensor<4>,
    encoder_hidden_states: Tensor<3>,
    pooled_projections: Tensor<2>,
    noise: &FlowNoise,
) -> Result<Tensor<1>> {
    let device = latents.device();
    let [b, c, h, w] = latents.dims();
    if noise.noise.shape != [b, c, h, w] {
        return Err(Error::invalid(
            "noise",
            format!("shape {:?}", noise.noise.shape),
            format!("expected the latents' shape {:?}", [b, c, h, w]),
        ));
    }
    if noise.sigmas.len() != b || noise.sigmas.iter().any(|s| !(0.0..=1.0).contains(s)) {
        return Err(Error::invalid(
            "sigmas",
            format!("{:?}", noise.sigmas),
            format!("expected {b} values in [0, 1], one per sample"),
        ));
    }
    let eps: Tensor<4> = noise.noise.to_tensor(&device);
    let sigma: Tensor<4> = per_sample(&noise.sigmas, &device);
    let noisy = latents.clone() * sigma.clone().neg().add_scalar(1.0) + eps.clone() * sigma;
    let target = eps - latents;
    let text_tokens = encoder_hidden_states.dims()[1];
    let guidance = model
        .has_guidance_embeds()
        .then(|| Tensor::<1>::full([b], objective.guidance as f32, &device));
    let pred = model.forward(FluxInputs {
        hidden_states: pack_latents(noisy)?,
        encoder_hidden_states,
        pooled_projections,
        timestep: per_sample(&noise.sigmas, &device),
        img_ids: image_ids(h / 2, w / 2, 0.0),
        txt_ids: text_ids(text_tokens),
        guidance,
    })?;
    let pred = unpack_latents(pred, h, w)?;
    let per_sample_mse: Tensor<1> = (pred - target)
        .square()
        .reshape([b, c * h * w])
        .mean_dim(1)
        .reshape([b]);
    match objective.weighting {
        LossWeighting::None => Ok(per_sample_mse.mean()),
        weighting => {
            let weights: Vec<f64> = noise.sigmas.iter().map(|&s| weighting.weight(s)).collect();
            Ok((per_sample_mse * per_sample::<1>(&weights, &device)).mean())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn a_batch_draws_what_its_micro_batches_draw() {
        let sampling = TimestepSampling::default();
        let batch = FlowNoise::sample(
            &mut SeededRng::new(5, Stream::Noise),
            [3, 3, 2, 2],
            &sampling,
        );
        let mut rng = SeededRng::new(5, Stream::Noise);
        let parts: Vec<FlowNoise> = (0..3)
            .map(|_| FlowNoise::sample(&mut rng, [1, 3, 2, 2], &sampling))
            .collect();
        let sigmas: Vec<f64> = parts.iter().flat_map(|p| p.sigmas.clone()).collect();
        let noise: Vec<f32> = parts.iter().flat_map(|p| p.noise.data.clone()).collect();
        assert_eq!(batch.sigmas, sigmas);
        assert_eq!(batch.noise.data, noise);
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let bad = FlowObjective {
            guidance: -1.0,
            ..FlowObjective::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("objective.flow.guidance"), "{err}");
        assert!(FlowObjective::default().validate().is_ok());
        let parsed: FlowObjective = serde_json::from_str(
            r#"{"timestep_sampling": {"kind": "shift", "sigmoid_scale": 1.0, "shift": 3.1582},
                "weighting": "cosmap"}"#,
        )
        .unwrap();
        assert_eq!(parsed.guidance, 1.0);
        assert_eq!(parsed.weighting, LossWeighting::Cosmap);
        let err = serde_json::from_str::<FlowObjective>(
            r#"{"timestep_sampling": {"kind": "flux_shift", "sigmoid_scale": 1.0, "shfit": 3.0}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shfit"), "{err}");
    }
}
