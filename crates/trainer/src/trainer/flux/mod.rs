//! A run on a FLUX.1 model: the trainer's loop with the flow-matching objective
//! ([`crate::train::flow`]) on the transformer's adapters.
//!
//! As FLUX users run sd-scripts (`--cache_latents --cache_text_encoder_outputs`), every image
//! is encoded once by the VAE and every caption once by T5 and CLIP (both cached on disk like
//! the UNet path's latents and text states); the text encoders are then dropped, so only the
//! transformer (and the VAE, for samples) stays in memory while training. Training the text
//! encoders, and captions that change from step to step (tag shuffling), are refused for that
//! reason; caption dropout works, since the empty caption is encoded once too. LoRA files are
//! kohya Flux files ([`save_flux_kohya`](crate::flux::lora::save_flux_kohya): BFL module
//! names, fused q/k/v) with sd-scripts' header, written per epoch and at the end, each with a
//! training state to resume from.
//!
//! - `checks`: what a Flux run refuses, before anything is loaded.
//! - `prepare`: loading the model, encoding images and captions, dropping the encoders.
//! - `save`: LoRA files, training states and resuming.
//! - `validate`: the validation loss at fixed σ and noise per held-out image.
//! - `samples`: images rendered during training.

mod checks;
mod prepare;
mod samples;
mod save;
mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor, TensorData};

use super::checkpoint::{BaseKind, MetadataInputs, kohya_metadata, unix_now};
use super::prepare::{ImagesEncoder, cache_of};
use super::run::Position;
use super::train_loop::{TrainLoop, train};
use super::{
    CancelSignal, Data, HeldOut, ProgressEvent, ProgressSink, SampleConfig, SaveReason, SavedLora,
    SavedSamples, TrainOutput, Trainer, ValidationPoint,
};
use crate::data::folder;
use crate::error::{Error, Result};
use crate::flux::FluxTransformer2DModel;
use crate::flux::lora::save_flux_peft;
use crate::flux::scheduler::FlowMatchConfig;
use crate::lora::{
    KohyaMetadata, adapter_param_count, apply_lora, set_stable_ids, store_base_weights,
};
use crate::rng::{SeededRng, Stream};
use crate::tensor_file::HostTensor;
use crate::train::config::TrainConfig;
use crate::train::examples::{Conditioning, TrainingSet};
use crate::train::flow::{FlowNoise, FlowObjective};
use crate::train::flow_step::{FlowMicroBatch, FlowStepSettings, flow_optimizer_step};
use crate::vae::AutoencoderKL;
pub(super) use checks::{check_resolution, flow_objective, needs_images, pixel_multiple};
use prepare::{FluxText, LoadedFlux};
use validate::FluxHeldOut;

/// Namespace of the parameter ids of the transformer's adapters.
const IDS: &str = "transformer";

/// One Flux run's mutable state.
pub(super) struct FluxRun<'a> {
    cfg: &'a TrainConfig,
    flow: FlowObjective,
    transformer: FluxTransformer2DModel,
    /// Kept for samples.
    vae: AutoencoderKL,
    set: TrainingSet,
    /// T5 states and pooled CLIP text of every caption (and sample prompt).
    text: HashMap<String, FluxText>,
    optim: ModuleOptimizer,
    shuffle_rng: SeededRng,
    noise_rng: SeededRng,
    caption_rng: SeededRng,
    pos: Position,
    metadata: KohyaMetadata,
    device: Device,
    total_steps: usize,
    total_epochs: usize,
    saved: Vec<SavedLora>,
    samples: Vec<SavedSamples>,
    sample_size: usize,
    dataset_digest: String,
    held_out: Option<FluxHeldOut>,
    validations: Vec<ValidationPoint>,
    /// The model (a diffusers folder or a BFL transformer file), the diffusers folder of its
    /// other parts, and its name (`ss_sd_model_name`).
    model: PathBuf,
    model_dir: PathBuf,
    model_name: String,
    /// The sampler's schedule (for samples).
    scheduler: FlowMatchConfig,
}

impl Trainer {
    /// [`run`](Self::run) for a FLUX.1 model.
    pub(super) fn run_flux(
        &self,
        flow: FlowObjective,
        sink: &mut dyn ProgressSink,
        cancel: &dyn CancelSignal,
    ) -> Result<TrainOutput> {
        let started = Instant::now();
        let started_at = unix_now();
        let cfg = &self.config;
        let device = self.training_device()?;
        let Data::Images(scanned) = &self.data else {
            return Err(needs_images());
        };
        let model = cfg.model.path.clone().expect("is_flux: a model path");
        let model_dir = super::prepare::flux_folder(cfg)
            .expect("is_flux: a FLUX.1 folder")
            .to_path_buf();
        let cache = cache_of(cfg);
        let loaded = LoadedFlux::load(&model, &model_dir, &device)?;

        let tag_frequency = folder::tag_frequency(&scanned.entries);
        let dataset_dirs = folder::dataset_dirs(&scanned.entries);
        let images = ImagesEncoder {
            vae: &loaded.model.vae,
            vae_identity: &loaded.vae_identity,
            sdxl_sizes: false,
        };
        let set = images.encode(scanned, &cache, sink, cancel, &device)?;
        let held = match &self.held_out {
            HeldOut::Images(h) => images.encode(h, &cache, sink, cancel, &device)?,
            _ => TrainingSet::default(),
        };
        let mut captions: Vec<String> = set
            .examples()
            .iter()
            .chain(held.examples())
            .filter_map(|e| match &e.conditioning {
                Conditioning::Caption(c) => Some(c.clone()),
                Conditioning::States(_) => None,
            })
            .collect();
        let dataset_cfg = cfg.images.as_ref().expect("a Flux run trains on images");
        if dataset_cfg.captions.dropout > 0.0 {
            captions.push(String::new());
        }
        if let Some(sample) = &cfg.sample {
            captions.extend(sample.prompts.iter().cloned());
        }
        let text = loaded.encode_captions(&captions, &cache, sink, &device)?;
        // The text encoders go: from here on only the transformer and the VAE are held.
        let (transformer, vae, scheduler) = loaded.into_denoiser();

        let mut transformer = transformer;
        if let Some(dtype) = cfg.model.base_weights.float_dtype() {
            store_base_weights(&mut transformer, dtype);
        }
        let (mut transformer, adapted) = apply_lora(transformer, &cfg.network, cfg.seed, &device)?;
        set_stable_ids(&mut transformer, IDS);
        let trainable_params = adapter_param_count(&mut transformer);

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

        let model_name = super::prepare::file_name(&model);
        let resolution = dataset_cfg.resolution;
        let metadata = kohya_metadata(
            cfg,
            MetadataInputs {
                base: BaseKind::Flux(&flow),
                model_name: &model_name,
                objective: &self.objective,
                examples_per_epoch: set.len_with_repeats(),
                batches_per_epoch,
                epochs: total_epochs,
                total_steps,
                started_at,
                resolution: Some((resolution, resolution)),
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
        let held_out = FluxHeldOut::new(cfg, held);
        let mut run = FluxRun {
            cfg,
            flow,
            transformer,
            vae,
            set,
            text,
            optim: cfg.optimizer.build(),
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
                .unwrap_or(resolution),
            dataset_digest: self.dataset_digest(),
            held_out,
            validations: Vec::new(),
            model,
            model_dir,
            model_name,
            scheduler,
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
            run.render_samples(run.pos.epoch, None, sink)?;
        }
        let peft = if cfg.output.peft {
            let path = cfg
                .output
                .dir
                .join(format!("{}.peft.safetensors", cfg.output.name));
            save_flux_peft(&mut run.transformer, &path, cfg.output.dtype)?;
            Some(path)
        } else {
            None
        };
        let learning_rates = (0..run.pos.step)
            .map(|s| cfg.optimizer.learning_rate * cfg.lr_schedule.factor(s, run.total_steps))
            .collect();
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
            validation_images: self.validation_images(),
        })
    }
}

impl FluxRun<'_> {
    /// The T5 states `[b, tokens, joint_attention_dim]` and pooled CLIP text
    /// `[b, pooled_projection_dim]` of a micro-batch's captions (dropout applied), from the
    /// cache of encoded captions.
    fn conditioning(&mut self, indices: &[usize]) -> Result<(Tensor<3>, Tensor<2>)> {
        let options = self
            .cfg
            .images
            .as_ref()
            .map(|i| i.captions)
            .unwrap_or_default();
        let mut states: Vec<&FluxText> = Vec::with_capacity(indices.len());
        for &i in indices {
            let Conditioning::Caption(c) = &self.set.examples()[i].conditioning else {
                return Err(needs_images());
            };
            let caption = options.apply(c, &mut self.caption_rng);
            let text = self.text.get(&caption).ok_or_else(|| {
                Error::invalid(
                    "images",
                    format!("caption {caption:?}"),
                    "was not encoded before training (captions must not change between steps)",
                )
            })?;
            states.push(text);
        }
        Ok(stack_text(&states, &self.device))
    }

    /// One optimiser step over a group of micro-batches (`gradient_accumulation_steps` of
    /// them, fewer at the end of an epoch, which then weighs `k/N` of a full group as in the
    /// UNet run); returns the mean loss, the learning rate and the gradient norm before
    /// clipping.
    fn step(&mut self, group: &[Vec<usize>]) -> Result<(f32, f64, f64)> {
        let cfg = self.cfg;
        let lr =
            cfg.optimizer.learning_rate * cfg.lr_schedule.factor(self.pos.step, self.total_steps);
        let mut micro_batches = Vec::with_capacity(group.len());
        for indices in group {
            let latents = self.set.latents(indices, &self.device);
            let (encoder_hidden_states, pooled_projections) = self.conditioning(indices)?;
            let noise = FlowNoise::sample(
                &mut self.noise_rng,
                latents.dims(),
                &self.flow.timestep_sampling,
            );
            micro_batches.push(FlowMicroBatch {
                latents,
                encoder_hidden_states,
                pooled_projections,
                noise,
            });
        }
        let (transformer, stats) = flow_optimizer_step(
            self.transformer.clone(),
            &mut self.optim,
            &self.flow,
            micro_batches,
            FlowStepSettings {
                learning_rate: lr,
                max_grad_norm: cfg.max_grad_norm,
                accumulation: cfg.gradient_accumulation_steps,
                step: self.pos.step + 1,
            },
        )?;
        self.transformer = transformer;
        Ok((stats.loss, lr, stats.grad_norm))
    }
}

/// Text states of several captions as a batch.
///
/// # Shapes
///
/// - output: `[b, tokens, joint_attention_dim]`, `[b, pooled_projection_dim]`
fn stack_text(states: &[&FluxText], device: &Device) -> (Tensor<3>, Tensor<2>) {
    let b = states.len();
    let (t, d) = (states[0].t5.shape[0], states[0].t5.shape[1]);
    let p = states[0].pooled.shape[0];
    let flat = |parts: Vec<&HostTensor>| -> Vec<f32> {
        parts.iter().flat_map(|s| s.data.iter().copied()).collect()
    };
    let t5 = Tensor::from_data(
        TensorData::new(flat(states.iter().map(|s| &s.t5).collect()), [b, t, d]),
        device,
    );
    let pooled = Tensor::from_data(
        TensorData::new(flat(states.iter().map(|s| &s.pooled).collect()), [b, p]),
        device,
    );
    (t5, pooled)
}

impl<'a> TrainLoop<'a> for FluxRun<'a> {
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
        self.render_samples(epoch, asked, sink)
    }
}
