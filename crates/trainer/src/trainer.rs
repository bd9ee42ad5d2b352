//! The trainer's public entry point: [`TrainConfig`] → [`Trainer::run`] → [`TrainOutput`].
//!
//! A run loads the base UNet, freezes it, attaches adapters, and performs AdamW steps on
//! batches of pre-computed latents, reporting each step to a [`ProgressSink`] and checking a
//! [`CancelSignal`] between steps. It writes kohya LoRA files (per epoch if asked, and at the
//! end) and the configuration beside them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub use crate::train::config::TrainConfig;

use crate::device::parse_device;
use crate::error::{Error, Result};
use crate::lora::{KohyaMetadata, adapter_param_count, apply_lora, save_kohya, save_peft};
use crate::rng::{SeededRng, Stream};
use crate::schedule::{NoiseSchedule, Prediction};
use crate::train::dataset::LatentDataset;
use crate::train::step::{MicroBatch, StepNoise, optimizer_step};
use crate::unet::{UNet2DConditionModel, UNetConfig};

/// One optimiser step's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    /// Steps done, 1-based.
    pub step: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// Current epoch, 1-based.
    pub epoch: usize,
    /// Mean loss of the step's micro-batches.
    pub loss: f32,
    /// Learning rate used for the step.
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of the step.
    pub step_time: Duration,
}

/// A LoRA file written during the run.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedLora {
    /// Epoch it was saved at.
    pub epoch: usize,
    /// Optimiser steps done at that point.
    pub step: usize,
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// What the trainer reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// Adapters are attached and training is about to start.
    Started {
        /// Steps planned.
        total_steps: usize,
        /// Trainable parameters.
        trainable_params: usize,
        /// Adapted module paths.
        adapted_modules: usize,
    },
    /// An optimiser step finished.
    Step(StepProgress),
    /// A LoRA file was written.
    Saved(SavedLora),
}

/// Receives progress. Implemented for closures taking a [`ProgressEvent`].
pub trait ProgressSink {
    /// Called on the training thread; keep it quick.
    fn report(&mut self, event: ProgressEvent);
}

impl<F: FnMut(ProgressEvent)> ProgressSink for F {
    fn report(&mut self, event: ProgressEvent) {
        self(event)
    }
}

/// Tells the trainer to stop; checked before every optimiser step.
pub trait CancelSignal {
    /// Whether the run should stop now.
    fn is_cancelled(&self) -> bool;
}

impl CancelSignal for AtomicBool {
    fn is_cancelled(&self) -> bool {
        self.load(Ordering::Relaxed)
    }
}

impl CancelSignal for Arc<AtomicBool> {
    fn is_cancelled(&self) -> bool {
        self.load(Ordering::Relaxed)
    }
}

/// A signal that never fires.
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverCancel;

impl CancelSignal for NeverCancel {
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// The result of a completed run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    /// The final kohya LoRA file.
    pub lora: PathBuf,
    /// The final diffusers/PEFT file, when asked for.
    pub peft: Option<PathBuf>,
    /// Every kohya file written, per-epoch ones first, the final one last.
    pub saved: Vec<SavedLora>,
    /// The configuration written beside the files.
    pub config_file: PathBuf,
    /// Optimiser steps done.
    pub steps: usize,
    /// Epochs started.
    pub epochs: usize,
    /// Loss of every step.
    pub losses: Vec<f32>,
    /// Adapted module paths.
    pub adapted_modules: Vec<String>,
    /// Trainable (adapter) parameters.
    pub trainable_params: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// A validated training run.
#[derive(Debug)]
pub struct Trainer {
    config: TrainConfig,
    dataset: LatentDataset,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

impl Trainer {
    /// Validates `config` and reads its dataset file.
    pub fn new(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let dataset = LatentDataset::open(&config.dataset)?;
        Ok(Self { config, dataset })
    }

    /// Validates `config` and trains on `dataset` (its `dataset` path is recorded, not read).
    pub fn with_dataset(config: TrainConfig, dataset: LatentDataset) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, dataset })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimiser steps per epoch and in total.
    pub fn plan(&self) -> (usize, usize) {
        let c = &self.config;
        let micro = self.dataset.len().div_ceil(c.batch_size);
        let per_epoch = micro.div_ceil(c.gradient_accumulation_steps);
        let total = c.max_train_steps.unwrap_or(c.epochs * per_epoch);
        (per_epoch, total)
    }

    fn check_dataset(&self, unet: &UNetConfig) -> Result<()> {
        let [c, h, w] = self.dataset.latent_shape();
        if c != unet.in_channels {
            return Err(Error::invalid(
                "dataset.latents",
                format!("{c} channels"),
                format!("the UNet takes {} latent channels", unet.in_channels),
            ));
        }
        let [_, width] = self.dataset.state_shape();
        if width != unet.cross_attention_dim[0] {
            return Err(Error::invalid(
                "dataset.encoder_hidden_states",
                format!("width {width}"),
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

    /// sd-scripts' header for this run; `epoch`, `steps` and `training_finished_at` are filled
    /// in at each save.
    fn kohya_metadata(
        &self,
        unet_config: &UNetConfig,
        epochs: usize,
        total_steps: usize,
        started_at: u64,
    ) -> KohyaMetadata {
        let cfg = &self.config;
        let base_model_version = cfg.model.base_model_version.clone().unwrap_or_else(|| {
            let sd2 =
                unet_config.use_linear_projection || unet_config.cross_attention_dim[0] == 1024;
            if sd2 { "sd_v2" } else { "sd_v1" }.to_string()
        });
        let [_, lh, lw] = self.dataset.latent_shape();
        let mut metadata = KohyaMetadata {
            v2: base_model_version.starts_with("sd_v2"),
            base_model_version,
            v_parameterization: cfg.objective.prediction == Prediction::VPrediction,
            network: cfg.network.clone(),
            learning_rate: cfg.optimizer.learning_rate,
            lr_scheduler: cfg.lr_schedule.name().to_string(),
            lr_warmup_steps: cfg.lr_schedule.warmup_steps,
            optimizer: cfg.optimizer.describe(),
            num_train_images: self.dataset.len(),
            num_batches_per_epoch: self.dataset.len().div_ceil(cfg.batch_size),
            num_epochs: epochs,
            max_train_steps: total_steps,
            batch_size: cfg.batch_size,
            gradient_accumulation_steps: cfg.gradient_accumulation_steps,
            gradient_checkpointing: cfg.gradient_checkpointing,
            max_grad_norm: cfg.max_grad_norm.unwrap_or(0.0),
            seed: cfg.seed,
            noise_offset: cfg.objective.noise_offset,
            min_snr_gamma: cfg.objective.min_snr_gamma,
            training_started_at: started_at,
            output_name: cfg.output.name.clone(),
            sd_model_name: cfg
                .model
                .unet_weights
                .as_ref()
                .and_then(|p| p.file_name())
                .map_or_else(
                    || "random-init".to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
            // Latents are 1/8 of the image size in the SD VAE.
            resolution: Some((lw * 8, lh * 8)),
            session_id: u64::from_le_bytes(
                Sha256::digest(format!("{}:{started_at}", cfg.seed))[..8]
                    .try_into()
                    .expect("8 bytes"),
            ) & 0xffff_ffff,
            ..KohyaMetadata::default()
        };
        metadata.extra.insert(
            "loraflow_train_config".into(),
            serde_json::to_string(cfg).expect("the config serialises"),
        );
        metadata
    }

    /// Writes a kohya file of the current adapters and reports it.
    fn save(
        &self,
        unet: &mut UNet2DConditionModel,
        path: PathBuf,
        metadata: &mut KohyaMetadata,
        (epoch, step): (usize, usize),
        sink: &mut dyn ProgressSink,
    ) -> Result<SavedLora> {
        metadata.epoch = epoch;
        metadata.steps = step;
        metadata.training_finished_at = unix_now();
        save_kohya(unet, &path, metadata, self.config.output.dtype)?;
        let entry = SavedLora {
            epoch,
            step,
            sha256: sha256_file(&path)?,
            path,
        };
        sink.report(ProgressEvent::Saved(entry.clone()));
        Ok(entry)
    }

    /// Trains, reporting to `sink` and stopping with [`Error::Cancelled`] when `cancel` fires.
    pub fn run(
        &self,
        sink: &mut dyn ProgressSink,
        cancel: &dyn CancelSignal,
    ) -> Result<TrainOutput> {
        let started = Instant::now();
        let started_at = unix_now();
        let cfg = &self.config;
        let mut device = parse_device(&cfg.device)?.autodiff();
        if cfg.gradient_checkpointing {
            device = device.gradient_checkpointing();
        }

        let unet_config = UNetConfig::from_file(&cfg.model.unet_config)?;
        self.check_dataset(&unet_config)?;
        let mut unet: UNet2DConditionModel = unet_config.init(&device);
        if let Some(weights) = &cfg.model.unet_weights {
            unet = unet.load_diffusers(weights)?;
        }
        let (mut unet, adapted_modules) = apply_lora(unet, &cfg.network, cfg.seed, &device)?;
        let trainable_params = adapter_param_count(&mut unet);
        let (per_epoch, total_steps) = self.plan();
        let epochs = total_steps.div_ceil(per_epoch);

        std::fs::create_dir_all(&cfg.output.dir).map_err(|e| Error::write(&cfg.output.dir, e))?;
        let config_file = cfg
            .output
            .dir
            .join(format!("{}.config.json", cfg.output.name));
        let config_json = serde_json::to_string_pretty(cfg).expect("the config serialises");
        std::fs::write(&config_file, &config_json).map_err(|e| Error::write(&config_file, e))?;

        sink.report(ProgressEvent::Started {
            total_steps,
            trainable_params,
            adapted_modules: adapted_modules.len(),
        });

        let mut metadata = self.kohya_metadata(&unet_config, epochs, total_steps, started_at);

        let schedule = NoiseSchedule::stable_diffusion();
        let mut shuffle_rng = SeededRng::new(cfg.seed, Stream::Shuffle);
        let mut noise_rng = SeededRng::new(cfg.seed, Stream::Noise);
        let mut optim = cfg.optimizer.build();
        let mut losses = Vec::with_capacity(total_steps);
        let mut saved = Vec::new();
        let mut step = 0;
        let mut epoch = 0;

        while step < total_steps {
            epoch += 1;
            let mut order: Vec<usize> = (0..self.dataset.len()).collect();
            shuffle_rng.shuffle(&mut order);
            let micro_batches: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
            for group in micro_batches.chunks(cfg.gradient_accumulation_steps) {
                if step >= total_steps {
                    break;
                }
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled {
                        completed_steps: step,
                    });
                }
                let step_start = Instant::now();
                let micro_batches = group
                    .iter()
                    .map(|indices| {
                        let (latents, context) = self.dataset.batch(indices, &device);
                        let noise = StepNoise::sample(
                            &mut noise_rng,
                            latents.dims(),
                            schedule.num_train_timesteps(),
                        );
                        MicroBatch {
                            latents,
                            context,
                            noise,
                        }
                    })
                    .collect();
                let learning_rate =
                    cfg.optimizer.learning_rate * cfg.lr_schedule.factor(step, total_steps);
                let (updated, stats) = optimizer_step(
                    unet,
                    &mut optim,
                    &schedule,
                    &cfg.objective,
                    micro_batches,
                    learning_rate,
                    cfg.max_grad_norm,
                    step + 1,
                )?;
                unet = updated;
                let (loss, grad_norm) = (stats.loss, stats.grad_norm);
                step += 1;
                losses.push(loss);
                sink.report(ProgressEvent::Step(StepProgress {
                    step,
                    total_steps,
                    epoch,
                    loss,
                    learning_rate,
                    grad_norm,
                    step_time: step_start.elapsed(),
                }));
            }
            let last = step >= total_steps;
            if !last
                && cfg
                    .output
                    .save_every_n_epochs
                    .is_some_and(|n| epoch % n == 0)
            {
                let path = cfg
                    .output
                    .dir
                    .join(format!("{}-{epoch:06}.safetensors", cfg.output.name));
                saved.push(self.save(&mut unet, path, &mut metadata, (epoch, step), sink)?);
            }
        }

        let lora = cfg
            .output
            .dir
            .join(format!("{}.safetensors", cfg.output.name));
        saved.push(self.save(&mut unet, lora.clone(), &mut metadata, (epoch, step), sink)?);
        let peft = if cfg.output.peft {
            let path = cfg
                .output
                .dir
                .join(format!("{}.peft.safetensors", cfg.output.name));
            save_peft(&mut unet, &path, "unet", cfg.output.dtype)?;
            Some(path)
        } else {
            None
        };

        Ok(TrainOutput {
            lora,
            peft,
            saved,
            config_file,
            steps: step,
            epochs: epoch,
            losses,
            adapted_modules,
            trainable_params,
            elapsed: started.elapsed(),
        })
    }
}
