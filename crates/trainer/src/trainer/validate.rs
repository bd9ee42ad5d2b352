//! The validation loss of a run: the held-out examples, their text states, and one
//! measurement per saved LoRA (and one of the base model before training).

use burn::module::Module;

use super::run::Run;
use super::{ProgressEvent, ProgressSink, ValidationPoint};
use crate::clip::ids_tensor;
use crate::device::parse_device;
use crate::error::Result;
use crate::tensor_file::HostTensor;
use crate::train::config::TrainConfig;
use crate::train::examples::{Conditioning, TrainingSet};
use crate::train::validation::{ValidationExample, fixed_timesteps, validation_loss};

/// The examples a run validates on, and how.
pub(super) struct HeldOutSet {
    set: TrainingSet,
    timesteps: Vec<usize>,
    seed: u64,
    /// Text states per example, once computed (kept while the text encoder is frozen).
    contexts: Option<Vec<HostTensor>>,
}

impl HeldOutSet {
    /// The held-out examples of a run configured with validation (`None` otherwise).
    pub(super) fn new(cfg: &TrainConfig, set: TrainingSet, num_timesteps: usize) -> Option<Self> {
        let v = cfg.validation.as_ref()?;
        if set.is_empty() {
            return None;
        }
        Some(Self {
            set,
            timesteps: fixed_timesteps(v.timesteps, num_timesteps),
            seed: v.seed.unwrap_or(cfg.seed),
            contexts: None,
        })
    }
}

impl Run<'_> {
    /// Text states of the held-out examples: fixed ones, cached captions, or captions encoded
    /// now by the current text encoder (its adapters included), without gradients. Captions
    /// are used as they are: no tag shuffling, no dropout.
    fn held_out_contexts(&mut self) -> Result<Vec<HostTensor>> {
        let held = self.held_out.as_ref().expect("checked by the caller");
        if let Some(c) = &held.contexts {
            return Ok(c.clone());
        }
        let device = parse_device(&self.cfg.device)?;
        // An inference copy of the text encoder, made when a caption needs it.
        let mut te = None;
        let mut out = Vec::with_capacity(held.set.len());
        for e in held.set.examples() {
            out.push(match &e.conditioning {
                Conditioning::States(s) => s.clone(),
                Conditioning::Caption(c) => match self.text_cache.get(c) {
                    Some(s) if !self.train_te => s.context.clone(),
                    _ => {
                        let te = te.get_or_insert_with(|| {
                            self.models
                                .text_encoder
                                .as_ref()
                                .expect("captions come with a whole model")
                                .valid()
                        });
                        let tokenizer = self.models.tokenizer.as_ref().expect("a whole model");
                        let ids = ids_tensor(&[tokenizer.encode_padded(c)], &device);
                        HostTensor::from_tensor(
                            te.forward(ids, self.cfg.clip_skip)?.squeeze_dim::<2>(0),
                        )
                    }
                },
            });
        }
        if !self.train_te {
            self.held_out.as_mut().expect("checked above").contexts = Some(out.clone());
        }
        Ok(out)
    }

    /// Measures the validation loss with the current weights (labelled with `epoch`), reports
    /// and records it; `None` when the run holds nothing out.
    pub(super) fn validate(
        &mut self,
        epoch: usize,
        sink: &mut dyn ProgressSink,
    ) -> Result<Option<f32>> {
        // SDXL's UNet also needs the pooled text and size values of each held-out image,
        // which the validation set does not carry yet: no validation loss for SDXL.
        if self.held_out.is_none() || self.models.sdxl.is_some() {
            return Ok(None);
        }
        let contexts = self.held_out_contexts()?;
        let held = self.held_out.as_ref().expect("checked above");
        let examples: Vec<ValidationExample> = held
            .set
            .examples()
            .iter()
            .zip(contexts)
            .map(|(e, context)| ValidationExample {
                latents: e.latents.clone(),
                context,
            })
            .collect();
        let device = parse_device(&self.cfg.device)?;
        // An inference copy: nothing is recorded for gradients.
        let unet = self.models.unet.valid();
        let loss = validation_loss(
            &unet,
            &self.models.schedule,
            &self.objective,
            &examples,
            &held.timesteps,
            held.seed,
            &device,
        );
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
