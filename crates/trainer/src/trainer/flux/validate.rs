//! The validation loss of a Flux run: the flow-matching loss of every held-out image at a few
//! fixed σ, with noise drawn from the validation seed and the image's place in the held-out
//! set only, so that two measurements differ by the weights alone.

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use super::super::{ProgressEvent, ProgressSink, ValidationPoint};
use super::{FluxRun, stack_text};
use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::rng::{SeededRng, Stream};
use crate::tensor_file::HostTensor;
use crate::train::config::TrainConfig;
use crate::train::examples::{Conditioning, TrainingSet};
use crate::train::flow::{FlowNoise, flow_matching_loss};

/// The examples a Flux run validates on, and how.
pub(super) struct FluxHeldOut {
    set: TrainingSet,
    sigmas: Vec<f64>,
    seed: u64,
}

/// `n` noise levels evenly spaced strictly inside `(0, 1)`: 0.2, 0.4, 0.6, 0.8 for 4 (the
/// flow-matching counterpart of sd-scripts' fixed validation timesteps).
pub(super) fn fixed_sigmas(n: usize) -> Vec<f64> {
    (1..=n).map(|i| i as f64 / (n + 1) as f64).collect()
}

impl FluxHeldOut {
    /// The held-out examples of a run configured with validation (`None` otherwise).
    pub(super) fn new(cfg: &TrainConfig, set: TrainingSet) -> Option<Self> {
        let v = cfg.validation.as_ref()?;
        if set.is_empty() {
            return None;
        }
        Some(Self {
            set,
            sigmas: fixed_sigmas(v.timesteps),
            seed: v.seed.unwrap_or(cfg.seed),
        })
    }
}

impl FluxRun<'_> {
    /// Measures the validation loss with the current weights (labelled with `epoch`), reports
    /// and records it; `None` when the run holds nothing out.
    pub(super) fn validate(
        &mut self,
        epoch: usize,
        sink: &mut dyn ProgressSink,
    ) -> Result<Option<f32>> {
        let Some(held) = &self.held_out else {
            return Ok(None);
        };
        let device = parse_device(&self.cfg.device)?;
        // An inference copy: nothing is recorded for gradients.
        let transformer = self.transformer.valid();
        let k = held.sigmas.len();
        let mut sum = 0.0f64;
        for (i, e) in held.set.examples().iter().enumerate() {
            let Conditioning::Caption(caption) = &e.conditioning else {
                return Err(super::needs_images());
            };
            let text = self.text.get(caption).ok_or_else(|| {
                Error::invalid(
                    "validation",
                    format!("caption {caption:?}"),
                    "was not encoded before training",
                )
            })?;
            let shape = &e.latents.shape;
            let (c, h, w) = (shape[0], shape[1], shape[2]);
            let mut rng = SeededRng::new(held.seed.wrapping_add(i as u64), Stream::Validation);
            let noise = FlowNoise {
                sigmas: held.sigmas.clone(),
                noise: HostTensor::new(vec![k, c, h, w], rng.normal(k * c * h * w)),
            };
            let latents: Vec<f32> = (0..k)
                .flat_map(|_| e.latents.data.iter().copied())
                .collect();
            let latents = Tensor::<4>::from_data(TensorData::new(latents, [k, c, h, w]), &device);
            let (t5, pooled) = stack_text(&vec![text; k], &device);
            let loss = flow_matching_loss(&transformer, &self.flow, latents, t5, pooled, &noise)?;
            sum += loss.into_scalar::<f32>() as f64;
        }
        let loss = (sum / held.set.len() as f64) as f32;
        let point = ValidationPoint {
            epoch,
            step: self.pos.step,
            loss,
        };
        sink.report(ProgressEvent::Validated(point));
        self.validations.push(point);
        Ok(Some(loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_sigmas_are_evenly_spread_inside_the_unit_interval() {
        assert_eq!(fixed_sigmas(4), vec![0.2, 0.4, 0.6, 0.8]);
        assert_eq!(fixed_sigmas(1), vec![0.5]);
    }
}
