//! One optimiser step: the micro-batches' text states (and SDXL's added conditioning), losses and gradients, global-norm
//! clipping and the AdamW updates of the UNet and text-encoder adapters.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Tensor, TensorData};

use super::prepare::{Models, TextStates};
use super::run::Run;
use crate::clip::ids_tensor;
use crate::error::{Error, Result};
use crate::sdxl::{SizeConditioning, time_ids_tensor};
use crate::tensor_file::HostTensor;
use crate::train::examples::Conditioning;
use crate::train::optim::{accumulation_factor, global_grad_norm, scale_grads};
use crate::train::step::{StepNoise, diffusion_loss_added};
use crate::unet::AddedConditions;

impl Run<'_> {
    /// The text conditioning of a micro-batch: fixed, cached, or encoded now (with gradients
    /// when the text encoders train); for SDXL also the added conditioning (pooled text and
    /// each image's `time_ids`).
    pub(super) fn conditioning(
        &mut self,
        indices: &[usize],
    ) -> Result<(Tensor<3>, Option<AddedConditions>)> {
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
                Conditioning::States(s) => states.push(TextStates {
                    context: s.clone(),
                    pooled: None,
                }),
                Conditioning::Caption(c) => {
                    captions.push(options.apply(c, &mut self.caption_rng));
                }
            }
        }
        let sizes = self.sizes(indices)?;
        if !captions.is_empty() {
            let cached: Option<Vec<TextStates>> = if self.train_te {
                None
            } else {
                captions
                    .iter()
                    .map(|c| self.text_cache.get(c).cloned())
                    .collect()
            };
            match cached {
                Some(s) => states = s,
                None => return self.encode_live(&captions, sizes),
            }
        }
        let stack = |parts: Vec<&HostTensor>| -> Vec<f32> {
            parts.iter().flat_map(|s| s.data.iter().copied()).collect()
        };
        let (t, d) = (states[0].context.shape[0], states[0].context.shape[1]);
        let context = Tensor::from_data(
            TensorData::new(
                stack(states.iter().map(|s| &s.context).collect()),
                [states.len(), t, d],
            ),
            &self.device,
        );
        let added = match sizes {
            Some(sizes) => {
                let pooled: Option<Vec<&HostTensor>> =
                    states.iter().map(|s| s.pooled.as_ref()).collect();
                let pooled = pooled.expect("SDXL text states carry a pooled vector");
                let p = pooled[0].shape[0];
                Some(AddedConditions {
                    text_embeds: Tensor::from_data(
                        TensorData::new(stack(pooled), [states.len(), p]),
                        &self.device,
                    ),
                    time_ids: time_ids_tensor(&sizes, &self.device),
                })
            }
            None => None,
        };
        Ok((context, added))
    }

    /// SDXL's micro-conditioning of the batch's images; `None` for SD1.x/SD2.x.
    fn sizes(&self, indices: &[usize]) -> Result<Option<Vec<SizeConditioning>>> {
        if self.models.sdxl.is_none() {
            return Ok(None);
        }
        indices
            .iter()
            .map(|&i| {
                self.set.examples()[i].size.ok_or_else(|| {
                    Error::invalid(
                        "dataset",
                        "a latents file",
                        "SDXL trains on an image folder (images.dir), whose image sizes give \
                         the micro-conditioning",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Encodes captions now, through the (possibly training) text encoders.
    fn encode_live(
        &self,
        captions: &[String],
        sizes: Option<Vec<SizeConditioning>>,
    ) -> Result<(Tensor<3>, Option<AddedConditions>)> {
        if let Some(xl) = &self.models.sdxl {
            let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
            let text = xl
                .text
                .encode(&xl.tokenizers.encode_batch(&refs), &self.device)?;
            let sizes = sizes.expect("SDXL examples carry sizes");
            return Ok((
                text.context,
                Some(AddedConditions {
                    text_embeds: text.pooled,
                    time_ids: time_ids_tensor(&sizes, &self.device),
                }),
            ));
        }
        let tokenizer = self.models.tokenizer.as_ref().expect("a whole model");
        let te = self.models.text_encoder.as_ref().expect("a whole model");
        let ids: Vec<Vec<u32>> = captions
            .iter()
            .map(|c| tokenizer.encode_padded(c))
            .collect();
        Ok((
            te.forward(ids_tensor(&ids, &self.device), self.cfg.clip_skip)?,
            None,
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
        let mut acc_xl = GradientsAccumulator::new();
        let mut loss_sum = 0.0f64;
        for indices in group {
            let latents = self.set.latents(indices, &self.device);
            let (context, added) = self.conditioning(indices)?;
            let noise = StepNoise::sample(
                &mut self.noise_rng,
                latents.dims(),
                self.models.schedule.num_train_timesteps(),
            );
            let m = &self.models;
            let loss = diffusion_loss_added(
                &m.unet,
                &m.schedule,
                &self.objective,
                latents,
                context,
                added.as_ref(),
                &noise,
            )?;
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let mut grads = loss.backward();
            acc_unet.accumulate(&m.unet, GradientsParams::from_module(&mut grads, &m.unet));
            if self.train_te
                && let Some(te) = &m.text_encoder
            {
                acc_te.accumulate(te, GradientsParams::from_module(&mut grads, te));
            }
            if self.train_te
                && let Some(xl) = &m.sdxl
            {
                acc_xl.accumulate(&xl.text, GradientsParams::from_module(&mut grads, &xl.text));
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
        let mut g_te = self.train_te.then(|| {
            if m.sdxl.is_some() {
                acc_xl.grads()
            } else {
                acc_te.grads()
            }
        });
        // The sum over the group divided by the configured number of micro-batches, not by the
        // group's (accelerate's rule, see `accumulation_factor`).
        let f = accumulation_factor(count, cfg.gradient_accumulation_steps)?;
        if f != 1.0 {
            scale_grads(&m.unet, &mut g_unet, f);
            if let Some(g) = g_te.as_mut() {
                scale_text_grads(m, g, f);
            }
        }
        let n_unet = global_grad_norm(&m.unet, &g_unet);
        let n_te = g_te.as_ref().map_or(0.0, |g| text_grad_norm(m, g));
        let grad_norm = if self.train_te {
            (n_unet * n_unet + n_te * n_te).sqrt()
        } else {
            n_unet
        };
        if let Some(max) = cfg.max_grad_norm {
            let f = (max / (grad_norm + 1e-6)).min(1.0);
            if f < 1.0 {
                scale_grads(&m.unet, &mut g_unet, f);
                if let Some(g) = g_te.as_mut() {
                    scale_text_grads(m, g, f);
                }
            }
        }
        m.unet = self.optim.step(lr, m.unet.clone(), g_unet);
        if let (Some(g), Some(optim), Some(te_cfg)) =
            (g_te, self.optim_te.as_mut(), cfg.text_encoder.as_ref())
        {
            let te_lr = te_cfg.learning_rate * factor;
            if let Some(xl) = m.sdxl.as_mut() {
                xl.text = optim.step(te_lr, xl.text.clone(), g);
            } else {
                let te = m.text_encoder.take().expect("trained text encoder");
                m.text_encoder = Some(optim.step(te_lr, te, g));
            }
        }
        Ok((loss, lr, grad_norm))
    }
}

/// Scales the gradients of the text encoder(s) of `m`.
fn scale_text_grads(m: &Models, grads: &mut GradientsParams, factor: f64) {
    if let Some(te) = &m.text_encoder {
        scale_grads(te, grads, factor);
    }
    if let Some(xl) = &m.sdxl {
        scale_grads(&xl.text, grads, factor);
    }
}

/// The global norm of the text encoders' gradients.
fn text_grad_norm(m: &Models, grads: &GradientsParams) -> f64 {
    match (&m.text_encoder, &m.sdxl) {
        (Some(te), _) => global_grad_norm(te, grads),
        (None, Some(xl)) => global_grad_norm(&xl.text, grads),
        (None, None) => 0.0,
    }
}
