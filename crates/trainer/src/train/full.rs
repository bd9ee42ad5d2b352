//! Full fine-tuning: every weight of the VAE or the UNet trained, not adapters.
//!
//! - The VAE is trained as `AutoencoderKL` is: encode to the latent distribution, draw
//!   `z = μ + σ·ε`, decode, and minimise the reconstruction error plus a small KL term towards
//!   N(0, 1) that keeps the latent space smooth and bounded. (Stable Diffusion's VAE adds a
//!   perceptual and an adversarial loss for photographs; flat synthetic pictures do without.)
//! - The UNet is trained on the diffusion objective of [`super::step`] with the same noise
//!   schedule; [`super::step::optimizer_step`] updates every parameter that requires a
//!   gradient, so a [`trainable`] UNet is fully fine-tuned by it.
//! - [`latent_scale`] measures the VAE's `scaling_factor` (1 / standard deviation of the
//!   latents), as Stable Diffusion's 0.18215 was measured, so the UNet sees unit-variance
//!   latents.

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::optim::clip_global_norm;
use crate::error::{Error, Result};
use crate::tensor_file::HostTensor;
use crate::vae::AutoencoderKL;

/// Makes every parameter of `module` trainable (loaded weights are frozen).
pub fn trainable<M: Module>(module: M) -> M {
    module.set_require_grad(true)
}

/// The VAE objective's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeObjective {
    /// Weight of the mean squared error next to the mean absolute error (both per pixel).
    pub mse_weight: f64,
    /// Weight of the mean KL divergence per latent element.
    pub kl_weight: f64,
    /// Extra weight of a pixel's reconstruction error per unit of its distance from the
    /// image's background (its top-left pixel): 0 weighs every pixel alike; 4 weighs the
    /// inside of a flat shape up to about 3 times its background, so that the few pixels that
    /// carry an object's colour are not outvoted by the plain background around it.
    #[serde(default)]
    pub foreground_weight: f64,
}

impl Default for VaeObjective {
    fn default() -> Self {
        Self {
            mse_weight: 1.0,
            kl_weight: 1e-4,
            foreground_weight: 0.0,
        }
    }
}

/// The parts of one VAE loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeStats {
    /// The weighted total that was minimised.
    pub loss: f32,
    /// Mean absolute reconstruction error per pixel channel (images in [-1, 1]).
    pub l1: f32,
    /// Mean KL divergence per latent element.
    pub kl: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The VAE loss of a batch and its parts `(total, l1, kl)`.
///
/// # Shapes
///
/// - images: `[batch, 3, height, width]` in [-1, 1]
/// - eps: `[batch, latent_channels, height / f, width / f]` standard normal draws
pub fn vae_loss(
    vae: &AutoencoderKL,
    objective: &VaeObjective,
    images: Tensor<4>,
    eps: &HostTensor,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let device = images.device();
    let (mean, logvar) = vae.encode(images.clone());
    let eps: Tensor<4> = eps.to_tensor(&device);
    let z = mean.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
    let recon = vae.decode(z);
    let [b, c, _, _] = images.dims();
    let weight = (objective.foreground_weight > 0.0).then(|| {
        let background = images.clone().slice([0..b, 0..c, 0..1, 0..1]);
        // Per-channel differences are at most 2 in [-1, 1] images.
        (images.clone() - background)
            .abs()
            .sum_dim(1)
            .div_scalar(2.0 * c as f64)
            .mul_scalar(objective.foreground_weight)
            .add_scalar(1.0)
    });
    let diff = recon - images;
    let l1 = diff.clone().abs().mean();
    let (weighted_l1, mse) = match weight {
        Some(w) => (
            (diff.clone().abs() * w.clone()).mean(),
            (diff.square() * w).mean(),
        ),
        None => (l1.clone(), diff.square().mean()),
    };
    let kl = (mean.square() + logvar.clone().exp() - logvar)
        .sub_scalar(1.0)
        .mul_scalar(0.5)
        .mean();
    let total = weighted_l1
        + mse.mul_scalar(objective.mse_weight)
        + kl.clone().mul_scalar(objective.kl_weight);
    (total, l1, kl)
}

/// One optimiser step of the whole VAE on a batch, gradients clipped to `max_grad_norm`.
///
/// A non-finite loss stops before the update with [`Error::NonFiniteLoss`].
#[allow(clippy::too_many_arguments)]
pub fn vae_step(
    vae: AutoencoderKL,
    optim: &mut ModuleOptimizer,
    objective: &VaeObjective,
    images: Tensor<4>,
    eps: &HostTensor,
    learning_rate: f64,
    max_grad_norm: f64,
    step: usize,
) -> Result<(AutoencoderKL, VaeStats)> {
    let (total, l1, kl) = vae_loss(&vae, objective, images, eps);
    let loss = total.clone().into_scalar::<f32>();
    if !loss.is_finite() {
        return Err(Error::NonFiniteLoss { step, loss });
    }
    let mut grads = GradientsParams::from_grads(total.backward(), &vae);
    let grad_norm = clip_global_norm(&vae, &mut grads, max_grad_norm);
    let vae = optim.step(learning_rate, vae, grads);
    Ok((
        vae,
        VaeStats {
            loss,
            l1: l1.into_scalar::<f32>(),
            kl: kl.into_scalar::<f32>(),
            grad_norm,
        },
    ))
}

/// The `scaling_factor` that gives `latents` (unscaled VAE means) unit standard deviation.
pub fn latent_scale(latents: &[f32]) -> f64 {
    let n = latents.len().max(1) as f64;
    let mean = latents.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = latents
        .iter()
        .map(|v| (*v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    1.0 / var.sqrt().max(1e-6)
}
