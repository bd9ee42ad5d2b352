//! One optimiser step: the micro-batches' text states, losses and gradients, global-norm
//! clipping and the AdamW updates of the UNet and text-encoder adapters.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Tensor, TensorData};

use super::run::Run;
use crate::clip::ids_tensor;
use crate::error::{Error, Result};
use crate::tensor_file::HostTensor;
use crate::train::examples::Conditioning;
use crate::train::optim::{global_grad_norm, scale_grads};
use crate::train::step::{StepNoise, diffusion_loss};

impl Run<'_> {
    /// The text states of a micro-batch: fixed, cached, or encoded now (with gradients when the
    /// text encoder trains).
    pub(super) fn context(&mut self, indices: &[usize]) -> Result<Tensor<3>> {
        let options = self
            .cfg
            .images
            .as_ref()
            .map(|i| i.captions)
            .unwrap_or_default();
        let mut states = Vec::new();
        let mut captions = Vec::new();
        for &i in indices {
            match &self.set.examples()[i].conditioning {
                Conditioning::States(s) => states.push(s.clone()),
                Conditioning::Caption(c) => {
                    captions.push(options.apply(c, &mut self.caption_rng));
                }
            }
        }
        if !captions.is_empty() {
            let cached: Option<Vec<HostTensor>> = if self.train_te {
                None
            } else {
                captions
                    .iter()
                    .map(|c| self.text_cache.get(c).cloned())
                    .collect()
            };
            match cached {
                Some(s) => states = s,
                None => {
                    let tokenizer = self.models.tokenizer.as_ref().expect("a whole model");
                    let te = self.models.text_encoder.as_ref().expect("a whole model");
                    let ids: Vec<Vec<u32>> = captions
                        .iter()
                        .map(|c| tokenizer.encode_padded(c))
                        .collect();
                    return te.forward(ids_tensor(&ids, &self.device), self.cfg.clip_skip);
                }
            }
        }
        let (t, d) = (states[0].shape[0], states[0].shape[1]);
        let data: Vec<f32> = states.iter().flat_map(|s| s.data.iter().copied()).collect();
        Ok(Tensor::from_data(
            TensorData::new(data, [states.len(), t, d]),
            &self.device,
        ))
    }

    /// One optimiser step over a group of micro-batches (`gradient_accumulation_steps` of
    /// them, fewer at the end of an epoch); returns the mean loss of the group, the UNet
    /// learning rate and the gradient norm before clipping.
    pub(super) fn step(&mut self, group: &[Vec<usize>]) -> Result<(f32, f64, f64)> {
        let cfg = self.cfg;
        let factor = cfg.lr_schedule.factor(self.pos.step, self.total_steps);
        let lr = cfg.optimizer.learning_rate * factor;
        let mut acc_unet = GradientsAccumulator::new();
        let mut acc_te = GradientsAccumulator::new();
        let mut loss_sum = 0.0f64;
        for indices in group {
            let latents = self.set.latents(indices, &self.device);
            let context = self.context(indices)?;
            let noise = StepNoise::sample(
                &mut self.noise_rng,
                latents.dims(),
                self.models.schedule.num_train_timesteps(),
            );
            let m = &self.models;
            let loss = diffusion_loss(
                &m.unet,
                &m.schedule,
                &self.objective,
                latents,
                context,
                &noise,
            );
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let mut grads = loss.backward();
            acc_unet.accumulate(&m.unet, GradientsParams::from_module(&mut grads, &m.unet));
            if self.train_te
                && let Some(te) = &m.text_encoder
            {
                acc_te.accumulate(te, GradientsParams::from_module(&mut grads, te));
            }
        }
        let count = group.len();
        let loss = (loss_sum / count as f64) as f32;
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                step: self.pos.step + 1,
                loss,
            });
        }
        let m = &mut self.models;
        let mut g_unet = acc_unet.grads();
        let mut g_te = self.train_te.then(|| acc_te.grads());
        // The sum over the group divided by the configured number of micro-batches, not by the
        // group's: accelerate's `backward` divides every loss by `gradient_accumulation_steps`
        // and steps at the end of the epoch with whatever has accumulated, so in sd-scripts and
        // diffusers the shorter last group of an epoch weighs k/N of a full one. Matching it
        // keeps runs comparable with theirs.
        let accumulation = cfg.gradient_accumulation_steps;
        if accumulation > 1 {
            let f = 1.0 / accumulation as f64;
            scale_grads(&m.unet, &mut g_unet, f);
            if let (Some(g), Some(te)) = (g_te.as_mut(), m.text_encoder.as_ref()) {
                scale_grads(te, g, f);
            }
        }
        let n_unet = global_grad_norm(&m.unet, &g_unet);
        let n_te = match (g_te.as_ref(), m.text_encoder.as_ref()) {
            (Some(g), Some(te)) => global_grad_norm(te, g),
            _ => 0.0,
        };
        let grad_norm = if self.train_te {
            (n_unet * n_unet + n_te * n_te).sqrt()
        } else {
            n_unet
        };
        if let Some(max) = cfg.max_grad_norm {
            let f = (max / (grad_norm + 1e-6)).min(1.0);
            if f < 1.0 {
                scale_grads(&m.unet, &mut g_unet, f);
                if let (Some(g), Some(te)) = (g_te.as_mut(), m.text_encoder.as_ref()) {
                    scale_grads(te, g, f);
                }
            }
        }
        m.unet = self.optim.step(lr, m.unet.clone(), g_unet);
        if let (Some(g), Some(optim), Some(te_cfg)) =
            (g_te, self.optim_te.as_mut(), cfg.text_encoder.as_ref())
        {
            let te = m.text_encoder.take().expect("trained text encoder");
            m.text_encoder = Some(optim.step(te_cfg.learning_rate * factor, te, g));
        }
        Ok((loss, lr, grad_norm))
    }
}
