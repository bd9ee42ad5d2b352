//! The validation loss of a run: the held-out examples, their text states (for SDXL also
//! the pooled text and each image's size values), and one measurement per saved LoRA (and
//! one of the base model before training).

use burn::module::Module;

use super::prepare::TextStates;
use super::run::Run;
use super::{ProgressEvent, ProgressSink, ValidationPoint};
use crate::clip::ids_tensor;
use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::tensor_file::HostTensor;
use crate::train::config::TrainConfig;
use crate::train::examples::{Conditioning, TrainingSet};
use crate::train::validation::{ValidationExample, fixed_timesteps, validation_loss};

/// The examples a run validates on, and how.
pub(super) struct HeldOutSet {
    set: TrainingSet,
    timesteps: Vec<usize>,
    seed: u64,
    /// Text states per example, once computed (kept while the text encoders are frozen).
    states: Option<Vec<TextStates>>,
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
            states: None,
        })
    }
}

impl Run<'_> {
    /// Text states of the held-out examples: fixed ones, cached captions, or captions encoded
    /// now by the current text encoder(s) (adapters included), without gradients. Captions
    /// are used as they are: no tag shuffling, no dropout.
    fn held_out_states(&mut self) -> Result<Vec<TextStates>> {
        let held = self.held_out.as_ref().expect("checked by the caller");
        if let Some(c) = &held.states {
            return Ok(c.clone());
        }
        let device = parse_device(&self.cfg.device)?;
        // An inference copy of the text encoder(s), made when a caption needs it.
        let mut te = None;
        let mut xl = None;
        let mut out = Vec::with_capacity(held.set.len());
        for e in held.set.examples() {
            out.push(match &e.conditioning {
                Conditioning::States(s) => TextStates {
                    context: s.clone(),
                    pooled: None,
                },
                Conditioning::Caption(c) => match self.text_cache.get(c) {
                    Some(s) if !self.train_te => s.clone(),
                    _ => match &self.models.sdxl {
                        Some(sdxl) => {
                            let text = xl.get_or_insert_with(|| sdxl.text.valid());
                            let states =
                                text.encode(&sdxl.tokenizers.encode_batch(&[c]), &device)?;
                            TextStates {
                                context: HostTensor::from_tensor(
                                    states.context.squeeze_dim::<2>(0),
                                ),
                                pooled: Some(HostTensor::from_tensor(
                                    states.pooled.squeeze_dim::<1>(0),
                                )),
                            }
                        }
                        None => {
                            let te = te.get_or_insert_with(|| {
                                self.models
                                    .text_encoder
                                    .as_ref()
                                    .expect("captions come with a whole model")
                                    .valid()
                            });
                            let tokenizer = self.models.tokenizer.as_ref().expect("a whole model");
                            let ids = ids_tensor(&[tokenizer.encode_padded(c)], &device);
                            TextStates {
                                context: HostTensor::from_tensor(
                                    te.forward(ids, self.cfg.clip_skip)?.squeeze_dim::<2>(0),
                                ),
                                pooled: None,
                            }
                        }
                    },
                },
            });
        }
        if !self.train_te {
            self.held_out.as_mut().expect("checked above").states = Some(out.clone());
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
        if self.held_out.is_none() {
            return Ok(None);
        }
        let states = self.held_out_states()?;
        let held = self.held_out.as_ref().expect("checked above");
        let examples = held
            .set
            .examples()
            .iter()
            .zip(states)
            .map(|(e, text)| {
                // SDXL's UNet also takes the pooled text and the image's size values.
                let added = match (text.pooled, e.size) {
                    (Some(pooled), Some(size)) => Some((pooled, size)),
                    (None, None) => None,
                    _ => {
                        return Err(Error::invalid(
                            "validation",
                            "a held-out example without SDXL's pooled text or image size",
                            "SDXL validates on an image folder's captions",
                        ));
                    }
                };
                Ok(ValidationExample {
                    latents: e.latents.clone(),
                    context: text.context,
                    added,
                })
            })
            .collect::<Result<Vec<_>>>()?;
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
        )?;
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
