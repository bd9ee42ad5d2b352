//! Validation loss: the training objective on held-out images, with the same noise and the
//! same timesteps at every evaluation, so that two evaluations differ only by the weights.
//!
//! This follows sd-scripts' `validation_split` (`train_util.split_train_val` and the
//! validation pass of `train_network.py`): the dataset's images are shuffled with the
//! validation seed and the last `round(n · split)` of them are held out; each held-out image
//! is noised at a few fixed timesteps spread evenly over the schedule (sd-scripts uses 4:
//! 200, 400, 600 and 800 of 1000), with noise drawn from the validation seed, and the loss
//! is averaged over images and timesteps. Here the noise of an image depends on the seed and
//! the image's place in the held-out set only, never on the training stream or on how often
//! validation ran before.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::step::{Objective, StepNoise, diffusion_loss_added};
use crate::error::{Error, Result};
use crate::rng::{SeededRng, Stream};
use crate::schedule::NoiseSchedule;
use crate::sdxl::{SizeConditioning, time_ids_tensor};
use crate::tensor_file::HostTensor;
use crate::unet::{AddedConditions, UNet2DConditionModel};

fn four() -> usize {
    4
}

/// The most timesteps an image is validated at.
pub const MAX_VALIDATION_TIMESTEPS: usize = 32;

/// Which images are held out, and how they are evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Fraction of the dataset's images held out (sd-scripts' `validation_split`), in
    /// `[0, 1)`; 0 holds out none (then `count` or `dir` must say which).
    #[serde(default)]
    pub split: f64,
    /// Number of images held out, instead of a fraction.
    #[serde(default)]
    pub count: Option<usize>,
    /// A folder of held-out images and captions. Inside the dataset folder, its images are
    /// left out of training.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Seed of the split and of the validation noise (sd-scripts' `validation_seed`); the
    /// run's seed when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Timesteps each held-out image is noised at, evenly spaced over the schedule.
    #[serde(default = "four")]
    pub timesteps: usize,
}

impl ValidationConfig {
    /// `fraction` of the images held out, validated at 4 timesteps.
    pub fn split(fraction: f64) -> Self {
        Self {
            split: fraction,
            count: None,
            dir: None,
            seed: None,
            timesteps: four(),
        }
    }

    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if !(self.split.is_finite() && (0.0..1.0).contains(&self.split)) {
            return Err(Error::invalid(
                "validation.split",
                self.split,
                "must be a fraction in [0, 1), typically 0.1–0.2",
            ));
        }
        if self.count == Some(0) {
            return Err(Error::invalid(
                "validation.count",
                0,
                "must be at least 1 (or leave it unset)",
            ));
        }
        let ways = [self.split > 0.0, self.count.is_some(), self.dir.is_some()];
        match ways.iter().filter(|w| **w).count() {
            0 => {
                return Err(Error::invalid(
                    "validation",
                    "no held-out images",
                    "set validation.split, validation.count or validation.dir",
                ));
            }
            1 => {}
            _ => {
                return Err(Error::invalid(
                    "validation",
                    "more than one of split, count and dir",
                    "choose one way of holding images out",
                ));
            }
        }
        if !(1..=MAX_VALIDATION_TIMESTEPS).contains(&self.timesteps) {
            return Err(Error::invalid(
                "validation.timesteps",
                self.timesteps,
                format!("must be between 1 and {MAX_VALIDATION_TIMESTEPS}"),
            ));
        }
        Ok(())
    }

    /// The indices (of `n` items in their stable order) held out by `split` or `count`,
    /// ascending; empty when the config names a folder instead.
    pub fn held_out(&self, n: usize, run_seed: u64) -> Result<Vec<usize>> {
        let wanted = match (self.count, self.split) {
            (Some(c), _) => c,
            (None, s) if s > 0.0 => ((n as f64 * s).round() as usize).max(1),
            _ => return Ok(Vec::new()),
        };
        if wanted >= n {
            let field = if self.count.is_some() {
                "validation.count"
            } else {
                "validation.split"
            };
            return Err(Error::invalid(
                field,
                format!("{wanted} of {n} images"),
                "at least one image must be left to train on; hold out fewer or add images",
            ));
        }
        let mut order: Vec<usize> = (0..n).collect();
        SeededRng::new(self.seed.unwrap_or(run_seed), Stream::Validation).shuffle(&mut order);
        let mut held: Vec<usize> = order[n - wanted..].to_vec();
        held.sort_unstable();
        Ok(held)
    }
}

/// `n` timesteps evenly spaced strictly inside `[0, num_train_timesteps]` (sd-scripts'
/// `linspace(0, T, n + 2)[1:-1]`, truncated to integers): 200, 400, 600, 800 for 4 of 1000.
pub fn fixed_timesteps(n: usize, num_train_timesteps: usize) -> Vec<usize> {
    let t = num_train_timesteps as f64;
    (1..=n)
        .map(|i| ((t * i as f64 / (n + 1) as f64) as usize).min(num_train_timesteps - 1))
        .collect()
}

/// One held-out example: its latents and the text states it is conditioned on.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationExample {
    /// Scaled VAE latents `[channels, height, width]`.
    pub latents: HostTensor,
    /// Text-encoder states `[tokens, width]`.
    pub context: HostTensor,
    /// SDXL's added conditioning: the pooled text vector `[projection_dim]` and the image's
    /// micro-conditioning; `None` for SD1.x/SD2.x.
    pub added: Option<(HostTensor, SizeConditioning)>,
}

/// The mean loss of `examples`, each at every timestep of `timesteps`, with noise drawn from
/// `seed` per example (so adding or removing one image leaves the others' draws alone).
///
/// Pass an inference copy of the UNet (`Module::valid`) and its device: nothing is recorded
/// for gradients. Returns NaN for no examples; refused when an example's added conditioning
/// does not fit the UNet (SDXL's is required, SD1.x/SD2.x takes none).
pub fn validation_loss(
    unet: &UNet2DConditionModel,
    schedule: &NoiseSchedule,
    objective: &Objective,
    examples: &[ValidationExample],
    timesteps: &[usize],
    seed: u64,
    device: &Device,
) -> Result<f32> {
    let k = timesteps.len();
    let mut sum = 0.0f64;
    for (i, e) in examples.iter().enumerate() {
        let [c, h, w] = [e.latents.shape[0], e.latents.shape[1], e.latents.shape[2]];
        let mut rng = SeededRng::new(seed.wrapping_add(i as u64), Stream::Validation);
        let mut noise = Vec::with_capacity(k * c * h * w);
        let mut offset = Vec::with_capacity(k * c);
        for _ in 0..k {
            noise.extend(rng.normal(c * h * w));
            offset.extend(rng.normal(c));
        }
        let draw = StepNoise {
            timesteps: timesteps.to_vec(),
            noise: HostTensor::new(vec![k, c, h, w], noise),
            offset: HostTensor::new(vec![k, c, 1, 1], offset),
        };
        let latents: Vec<f32> = (0..k)
            .flat_map(|_| e.latents.data.iter().copied())
            .collect();
        let latents = Tensor::<4>::from_data(TensorData::new(latents, [k, c, h, w]), device);
        let (t, d) = (e.context.shape[0], e.context.shape[1]);
        let context: Vec<f32> = (0..k)
            .flat_map(|_| e.context.data.iter().copied())
            .collect();
        let context = Tensor::<3>::from_data(TensorData::new(context, [k, t, d]), device);
        let added = e.added.as_ref().map(|(pooled, size)| {
            let p = pooled.shape[0];
            let repeated: Vec<f32> = (0..k).flat_map(|_| pooled.data.iter().copied()).collect();
            AddedConditions {
                text_embeds: Tensor::from_data(TensorData::new(repeated, [k, p]), device),
                time_ids: time_ids_tensor(&vec![*size; k], device),
            }
        });
        let loss = diffusion_loss_added(
            unet,
            schedule,
            objective,
            latents,
            context,
            added.as_ref(),
            &draw,
        )?;
        sum += loss.into_scalar::<f32>() as f64;
    }
    Ok((sum / examples.len() as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_are_those_of_sd_scripts() {
        assert_eq!(fixed_timesteps(4, 1000), vec![200, 400, 600, 800]);
        assert_eq!(fixed_timesteps(1, 1000), vec![500]);
        assert!(fixed_timesteps(32, 10).iter().all(|&t| t < 10));
    }

    #[test]
    fn the_split_depends_on_its_seed_only_and_keeps_training_images() {
        let mut c = ValidationConfig::split(0.25);
        let a = c.held_out(8, 1).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a, c.held_out(8, 1).unwrap());
        c.seed = Some(1);
        assert_eq!(c.held_out(8, 99).unwrap(), a, "the validation seed wins");
        // Small datasets still hold one out; never all of them.
        assert_eq!(
            ValidationConfig::split(0.01).held_out(3, 0).unwrap().len(),
            1
        );
        let err = ValidationConfig::split(0.5).held_out(1, 0).unwrap_err();
        assert!(err.to_string().contains("validation.split"), "{err}");
        let mut counted = ValidationConfig::split(0.0);
        counted.count = Some(3);
        assert_eq!(counted.held_out(10, 0).unwrap().len(), 3);
    }

    #[test]
    fn bad_settings_are_named() {
        let err = ValidationConfig::split(1.0).validate().unwrap_err();
        assert!(err.to_string().contains("`validation.split`"), "{err}");
        let err = ValidationConfig::split(0.0).validate().unwrap_err();
        assert!(err.to_string().contains("`validation`"), "{err}");
        let mut c = ValidationConfig::split(0.2);
        c.timesteps = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("validation.timesteps")
        );
        c.timesteps = 4;
        c.count = Some(2);
        assert!(c.validate().is_err(), "split and count together");
    }
}
