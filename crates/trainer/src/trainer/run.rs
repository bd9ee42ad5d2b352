//! The training loop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;

use super::checkpoint::{
    MetadataInputs, TrainingState, kohya_metadata, read_state, restore, save_lora, save_state,
    state_dir, unix_now, with_parts,
};
use super::prepare::{
    Models, SdxlText, TextStates, cache_of, encode_captions, encode_images, load_models,
};
use super::train_loop::{TrainLoop, train};
use super::validate::HeldOutSet;
use super::{
    CancelSignal, Data, HeldOut, ProgressEvent, ProgressSink, SampleConfig, SaveReason, SavedLora,
    SavedSamples, TrainOutput, Trainer, ValidationPoint,
};
use crate::data::folder;
use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::lora::kohya::Part;
use crate::lora::{
    KohyaMetadata, NetworkConfig, PEFT_TEXT_ENCODER, PEFT_UNET, adapter_param_count, apply_lora,
    save_peft_parts, set_stable_ids, store_base_weights,
};
use crate::rng::{SeededRng, Stream};
use crate::sdxl::lora::save_sdxl_peft;
use crate::train::config::TrainConfig;
use crate::train::examples::{Conditioning, TrainingSet};
use crate::train::optim::AdamWSettings;
use crate::train::step::Objective;
use crate::unet::UNetConfig;

/// Namespace of the parameter ids of SDXL's text-encoder adapters.
const TEXT_IDS: &str = "sdxl_text";

/// Where the loop is, everything a state file records.
pub(super) struct Position {
    pub(super) step: usize,
    pub(super) epoch: usize,
    pub(super) batch: usize,
    pub(super) epoch_shuffle_pos: u128,
    pub(super) losses: Vec<f32>,
    pub(super) epoch_losses: Vec<f32>,
    pub(super) epoch_loss: (f64, usize),
}

/// One run's mutable state.
pub(super) struct Run<'a> {
    pub(super) cfg: &'a TrainConfig,
    /// `cfg.objective` resolved against the model.
    pub(super) objective: Objective,
    pub(super) models: Models,
    pub(super) set: TrainingSet,
    pub(super) text_cache: HashMap<String, TextStates>,
    pub(super) train_te: bool,
    pub(super) optim: ModuleOptimizer,
    pub(super) optim_te: Option<ModuleOptimizer>,
    pub(super) shuffle_rng: SeededRng,
    pub(super) noise_rng: SeededRng,
    pub(super) caption_rng: SeededRng,
    pub(super) pos: Position,
    pub(super) metadata: KohyaMetadata,
    pub(super) device: Device,
    pub(super) total_steps: usize,
    pub(super) total_epochs: usize,
    pub(super) saved: Vec<SavedLora>,
    pub(super) samples: Vec<SavedSamples>,
    pub(super) sample_size: usize,
    pub(super) dataset_digest: String,
    /// The held-out examples, when the run validates.
    pub(super) held_out: Option<HeldOutSet>,
    /// Validation losses measured so far.
    pub(super) validations: Vec<ValidationPoint>,
}

fn check_latents(set: &TrainingSet, unet: &UNetConfig) -> Result<()> {
    let first = &set.examples()[0];
    let (c, h, w) = (
        first.latents.shape[0],
        first.latents.shape[1],
        first.latents.shape[2],
    );
    if c != unet.in_channels {
        return Err(Error::invalid(
            "dataset.latents",
            format!("{c} channels"),
            format!("the UNet takes {} latent channels", unet.in_channels),
        ));
    }
    if let Conditioning::States(s) = &first.conditioning
        && s.shape[1] != unet.cross_attention_dim[0]
    {
        return Err(Error::invalid(
            "dataset.encoder_hidden_states",
            format!("width {}", s.shape[1]),
            format!(
                "the UNet cross-attends to width {}",
                unet.cross_attention_dim[0]
            ),
        ));
    }
    if h == 0 || w == 0 {
        return Err(Error::invalid(
            "dataset.latents",
            format!("{h}x{w}"),
            "empty latents",
        ));
    }
    Ok(())
}

impl Trainer {
    /// The device the run trains on: the configured one with autodiff, and burn's balanced
    /// gradient checkpointing (recomputing memory-bound activations in the backward pass) when
    /// `gradient_checkpointing` is set.
    pub fn training_device(&self) -> Result<Device> {
        let device = parse_device(&self.config.device)?.autodiff();
        Ok(if self.config.gradient_checkpointing {
            device.gradient_checkpointing()
        } else {
            device
        })
    }

    /// Trains, reporting to `sink` and stopping with [`Error::Cancelled`] when `cancel` fires;
    /// `save_now` and `sample_now` requests are honoured at the next step boundary.
    pub fn run(
        &self,
        sink: &mut dyn ProgressSink,
        cancel: &dyn CancelSignal,
    ) -> Result<TrainOutput> {
        if let Some(flow) = self.flow {
            return self.run_flux(flow, sink, cancel);
        }
        let started = Instant::now();
        let started_at = unix_now();
        let cfg = &self.config;
        let device = self.training_device()?;
        let mut models = load_models(cfg, &device)?;
        // Samples are rendered as the adapted model predicts: the trained target, which
        // differs from the scheduler config's only under override_model_prediction.
        models.scheduler.prediction_type = self.objective.prediction;
        let cache = cache_of(cfg);

        // The examples, and what the kohya header says about them.
        let mut tag_frequency = Default::default();
        let mut dataset_dirs = Default::default();
        let (set, held, resolution) = match &self.data {
            Data::Latents(_) => {
                let (set, held) = self.training_set_of_latents().expect("a latents dataset");
                check_latents(&set, &models.unet_config)?;
                let shape = &set.examples()[0].latents.shape;
                let (h, w) = (shape[1], shape[2]);
                // Latents are 1/8 of the image size in the SD VAE.
                (set, held, (w * 8, h * 8))
            }
            Data::Images(scanned) => {
                tag_frequency = folder::tag_frequency(&scanned.entries);
                dataset_dirs = folder::dataset_dirs(&scanned.entries);
                let set = encode_images(scanned, &models, &cache, sink, cancel, &device)?;
                let held = match &self.held_out {
                    HeldOut::Images(h) => encode_images(h, &models, &cache, sink, cancel, &device)?,
                    _ => TrainingSet::default(),
                };
                let r = cfg.images.as_ref().expect("images").resolution;
                (set, held, (r, r))
            }
        };
        let train_te = cfg.text_encoder.is_some();
        let text_cache = match &cfg.images {
            Some(images) if !train_te && images.captions.is_static() => {
                let mut captions: Vec<String> = set
                    .examples()
                    .iter()
                    .chain(held.examples())
                    .filter_map(|e| match &e.conditioning {
                        Conditioning::Caption(c) => Some(c.clone()),
                        Conditioning::States(_) => None,
                    })
                    .collect();
                if images.captions.dropout > 0.0 {
                    captions.push(String::new());
                }
                encode_captions(&captions, &models, cfg.clip_skip, &cache, sink, &device)?
            }
            _ => HashMap::new(),
        };

        // The frozen base in its training precision (before `apply_lora` freezes it), then
        // adapters, with parameter ids that survive a restart.
        if let Some(dtype) = cfg.model.base_weights.float_dtype() {
            store_base_weights(&mut models.unet, dtype);
        }
        let (unet, mut adapted) = apply_lora(models.unet, &cfg.network, cfg.seed, &device)?;
        models.unet = unet;
        set_stable_ids(&mut models.unet, "unet");
        if let Some(te_cfg) = &cfg.text_encoder {
            let network = NetworkConfig {
                targets: te_cfg.targets.clone(),
                conv_rank: None,
                conv_alpha: None,
                ..cfg.network.clone()
            };
            let te_seed = cfg.seed.wrapping_add(1);
            if let Some(xl) = models.sdxl.take() {
                // Paths are `text_encoder.*` and `text_encoder_2.*` already.
                let (mut text, te_adapted) = apply_lora(xl.text, &network, te_seed, &device)?;
                set_stable_ids(&mut text, TEXT_IDS);
                adapted.extend(te_adapted);
                models.sdxl = Some(SdxlText {
                    text,
                    tokenizers: xl.tokenizers,
                });
            } else {
                let te = models
                    .text_encoder
                    .take()
                    .expect("validated: a whole model");
                let (mut te, te_adapted) = apply_lora(te, &network, te_seed, &device)?;
                set_stable_ids(&mut te, "text_encoder");
                adapted.extend(te_adapted.into_iter().map(|p| format!("text_encoder.{p}")));
                models.text_encoder = Some(te);
            }
        }
        let mut trainable_params = adapter_param_count(&mut models.unet);
        if train_te && let Some(te) = models.text_encoder.as_mut() {
            trainable_params += adapter_param_count(te);
        }
        if train_te && let Some(xl) = models.sdxl.as_mut() {
            trainable_params += adapter_param_count(&mut xl.text);
        }

        let batches_per_epoch = set.batches_per_epoch(cfg.batch_size);
        let (per_epoch, total_steps) = self.plan();
        let total_epochs = total_steps.div_ceil(per_epoch);

        std::fs::create_dir_all(&cfg.output.dir).map_err(|e| Error::write(&cfg.output.dir, e))?;
        let config_file = cfg
            .output
            .dir
            .join(format!("{}.config.json", cfg.output.name));
        let config_json = serde_json::to_string_pretty(cfg).expect("the config serialises");
        std::fs::write(&config_file, &config_json).map_err(|e| Error::write(&config_file, e))?;

        let (base, model_name) = MetadataInputs::base_of(&models);
        let metadata = kohya_metadata(
            cfg,
            MetadataInputs {
                base,
                model_name,
                objective: &self.objective,
                examples_per_epoch: set.len_with_repeats(),
                batches_per_epoch,
                epochs: total_epochs,
                total_steps,
                started_at,
                resolution: Some(resolution),
                tag_frequency,
                dataset_dirs,
            },
        );
        let shuffle_rng = SeededRng::new(cfg.seed, Stream::Shuffle);
        let pos = Position {
            step: 0,
            epoch: 1,
            batch: 0,
            epoch_shuffle_pos: shuffle_rng.word_pos(),
            losses: Vec::with_capacity(total_steps),
            epoch_losses: Vec::new(),
            epoch_loss: (0.0, 0),
        };
        let held_out = HeldOutSet::new(cfg, held, models.schedule.num_train_timesteps());
        let mut run = Run {
            cfg,
            objective: self.objective,
            optim: cfg.optimizer.build(),
            optim_te: cfg.text_encoder.as_ref().map(|t| {
                AdamWSettings {
                    learning_rate: t.learning_rate,
                    ..cfg.optimizer
                }
                .build()
            }),
            models,
            set,
            text_cache,
            train_te,
            shuffle_rng,
            noise_rng: SeededRng::new(cfg.seed, Stream::Noise),
            caption_rng: SeededRng::new(cfg.seed, Stream::Caption),
            pos,
            metadata,
            device,
            total_steps,
            total_epochs,
            saved: Vec::new(),
            samples: Vec::new(),
            sample_size: cfg
                .sample
                .as_ref()
                .and_then(|s| s.size)
                .unwrap_or(resolution.0),
            dataset_digest: self.dataset_digest(),
            held_out,
            validations: Vec::new(),
        };

        sink.report(ProgressEvent::Started {
            total_steps,
            trainable_params,
            adapted_modules: adapted.len(),
        });
        let resumed_from = match &cfg.resume {
            Some(path) => Some(run.resume(path, sink)?),
            None => None,
        };
        if resumed_from.is_none() {
            // The base model's loss on the held-out images: what training should improve on.
            run.validate(0, sink)?;
        }
        train(&mut run, sink, cancel)?;

        let lora = cfg
            .output
            .dir
            .join(format!("{}.safetensors", cfg.output.name));
        run.save(lora.clone(), SaveReason::Final, sink)?;
        if let Some(n) = cfg.sample.as_ref().and_then(|s| s.every_n_epochs)
            && run.pos.epoch.is_multiple_of(n)
        {
            run.render_samples(None, sink)?;
        }
        let peft = if cfg.output.peft {
            let path = cfg
                .output
                .dir
                .join(format!("{}.peft.safetensors", cfg.output.name));
            let m = &mut run.models;
            if let Some(xl) = m.sdxl.as_mut() {
                let text = run.train_te.then_some(&mut xl.text);
                save_sdxl_peft(&mut m.unet, text, &path, cfg.output.dtype)?;
            } else {
                let mut parts: Vec<Part<'_>> = vec![(PEFT_UNET, &mut m.unet)];
                if run.train_te
                    && let Some(te) = m.text_encoder.as_mut()
                {
                    parts.push((PEFT_TEXT_ENCODER, te));
                }
                save_peft_parts(&mut parts, &path, cfg.output.dtype)?;
            }
            Some(path)
        } else {
            None
        };

        let learning_rates = (0..run.pos.step)
            .map(|s| cfg.optimizer.learning_rate * cfg.lr_schedule.factor(s, run.total_steps))
            .collect();
        let validation_images = self.validation_images();
        Ok(TrainOutput {
            lora,
            peft,
            saved: run.saved,
            samples: run.samples,
            config_file,
            steps: run.pos.step,
            epochs: run.pos.epoch,
            losses: run.pos.losses,
            epoch_losses: run.pos.epoch_losses,
            examples_per_epoch: run.set.len_with_repeats(),
            adapted_modules: adapted,
            trainable_params,
            elapsed: started.elapsed(),
            resumed_from,
            learning_rates,
            validation: run.validations,
            validation_images,
        })
    }
}

impl Run<'_> {
    /// Continues from a state folder; returns the step it resumes at.
    fn resume(&mut self, path: &std::path::Path, sink: &mut dyn ProgressSink) -> Result<usize> {
        let (dir, state) = read_state(path, self.cfg, &self.dataset_digest)?;
        let optim = std::mem::replace(&mut self.optim, self.cfg.optimizer.build());
        let optim_te = self.optim_te.take();
        let device = self.device.clone();
        let (optim, optim_te) = with_parts(&mut self.models, self.train_te, |p| {
            restore(&dir, p, (optim, optim_te), &device)
        })?;
        self.optim = optim;
        self.optim_te = optim_te;
        // Restored factors are new parameters; give them their stable ids again.
        set_stable_ids(&mut self.models.unet, "unet");
        if let Some(te) = self.models.text_encoder.as_mut() {
            set_stable_ids(te, "text_encoder");
        }
        if let Some(xl) = self.models.sdxl.as_mut() {
            set_stable_ids(&mut xl.text, TEXT_IDS);
        }
        let parse = |s: &str| {
            s.parse::<u128>().map_err(|e| Error::Parse {
                path: dir.join("state.json"),
                reason: format!("stream position {s:?}: {e}"),
            })
        };
        self.noise_rng.set_word_pos(parse(&state.noise_pos)?);
        self.caption_rng.set_word_pos(parse(&state.caption_pos)?);
        self.validations = state.validation;
        self.pos = Position {
            step: state.step,
            epoch: state.epoch,
            batch: state.batch,
            epoch_shuffle_pos: parse(&state.epoch_shuffle_pos)?,
            losses: state.losses,
            epoch_losses: state.epoch_losses,
            epoch_loss: state.epoch_loss,
        };
        sink.report(ProgressEvent::Resumed {
            step: self.pos.step,
            epoch: self.pos.epoch,
        });
        Ok(self.pos.step)
    }

    /// The training state at the current position.
    fn state(&self) -> TrainingState {
        TrainingState {
            version: 1,
            training_digest: self.cfg.training_digest(),
            dataset_digest: self.dataset_digest.clone(),
            step: self.pos.step,
            epoch: self.pos.epoch,
            batch: self.pos.batch,
            epoch_shuffle_pos: self.pos.epoch_shuffle_pos.to_string(),
            noise_pos: self.noise_rng.word_pos().to_string(),
            caption_pos: self.caption_rng.word_pos().to_string(),
            losses: self.pos.losses.clone(),
            epoch_losses: self.pos.epoch_losses.clone(),
            epoch_loss: self.pos.epoch_loss,
            validation: self.validations.clone(),
        }
    }

    /// Writes a LoRA file (and the state beside it) labelled with `epoch`.
    fn save_as(
        &mut self,
        path: PathBuf,
        reason: SaveReason,
        epoch: usize,
        loss: f32,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        let validation_loss = self.validate(epoch, sink)?;
        self.metadata.epoch = epoch;
        self.metadata.steps = self.pos.step;
        self.metadata.training_finished_at = unix_now();
        let state = self.state();
        let (metadata, cfg) = (&self.metadata, self.cfg);
        let optimizers = (&self.optim, self.optim_te.as_ref());
        let (sha256, state_path) = with_parts(&mut self.models, self.train_te, |p| {
            let sha256 = save_lora(p, &path, metadata, cfg.output.dtype)?;
            let state_path = if cfg.output.save_state {
                let dir = state_dir(&path);
                save_state(&dir, p, optimizers, &state)?;
                Some(dir)
            } else {
                None
            };
            Ok::<_, Error>((sha256, state_path))
        })?;
        let entry = SavedLora {
            epoch,
            step: self.pos.step,
            path,
            sha256,
            loss,
            state: state_path,
            reason,
            validation_loss,
        };
        sink.report(ProgressEvent::Saved(entry.clone()));
        self.saved.push(entry);
        Ok(())
    }
}

impl<'a> TrainLoop<'a> for Run<'a> {
    fn cfg(&self) -> &'a TrainConfig {
        self.cfg
    }

    fn pos(&mut self) -> &mut Position {
        &mut self.pos
    }

    fn totals(&self) -> (usize, usize) {
        (self.total_steps, self.total_epochs)
    }

    fn shuffling(&mut self) -> (&TrainingSet, &mut SeededRng) {
        (&self.set, &mut self.shuffle_rng)
    }

    fn optimizer_step(&mut self, group: &[Vec<usize>]) -> Result<(f32, f64, f64)> {
        self.step(group)
    }

    fn write_lora(
        &mut self,
        path: PathBuf,
        reason: SaveReason,
        epoch: usize,
        loss: f32,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        self.save_as(path, reason, epoch, loss, sink)
    }

    fn render(
        &mut self,
        epoch: usize,
        asked: Option<&SampleConfig>,
        sink: &mut dyn ProgressSink,
    ) -> Result<()> {
        self.render_with(epoch, asked, sink)
    }
}
