//! The trainer's public entry point: [`TrainConfig`] → [`Trainer::run`] → [`TrainOutput`].
//!
//! A run loads the base model, freezes it, attaches adapters (UNet, and text encoder when
//! asked), encodes the dataset's images once (latents cached on disk), and performs AdamW steps
//! on bucketed batches, reporting each step to a [`ProgressSink`] and checking a
//! [`CancelSignal`] (which also carries `save_now`/`sample_now` requests) between steps. It
//! writes kohya LoRA files per epoch and at the end, each with a training state to resume from.
//!
//! - `prepare`: loading the models and encoding the dataset.
//! - `run`: setting a run up, and the training loop.
//! - `step`: one optimiser step over UNet and text-encoder adapters.
//! - `train_loop`: the epoch and step loop the UNet and the Flux runs share.
//! - `samples`: images rendered during training.
//! - `validate`: the validation loss on held-out images at every saved LoRA.
//! - `checkpoint`: kohya metadata, LoRA files, training states and resuming.
//! - `flux`: the same run for a FLUX.1 model: the flow-matching objective on the transformer,
//!   text-encoder outputs cached once, kohya Flux files.

mod checkpoint;
mod flux;
mod prepare;
mod run;
mod samples;
mod step;
mod train_loop;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use crate::train::config::{SampleConfig, TrainConfig};
pub use checkpoint::TrainingState;

use crate::data::{Buckets, ImageEntry, folder};
use crate::error::{Error, Result};
use crate::pipeline::PipelineConfig;
use crate::train::dataset::LatentDataset;
use crate::train::examples::TrainingSet;
use crate::train::flow::FlowObjective;
use crate::train::step::Objective;
use prepare::model_prediction;

/// One optimiser step's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    /// Steps done, 1-based.
    pub step: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// Current epoch, 1-based.
    pub epoch: usize,
    /// Epochs planned.
    pub total_epochs: usize,
    /// Mean loss of the step's micro-batches.
    pub loss: f32,
    /// Exponential moving average of the loss (0.9 decay, bias-corrected).
    pub smoothed_loss: f32,
    /// Learning rate of the UNet adapters for the step.
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of the step.
    pub step_time: Duration,
    /// Training examples per second since the run (or the resumed run) started.
    pub samples_per_sec: f64,
    /// Estimated time to the last step.
    pub eta: Duration,
}

/// Why a LoRA file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveReason {
    /// `save_every_n_epochs`.
    Epoch,
    /// A `save_now` request.
    Requested,
    /// The end of training.
    Final,
}

/// A LoRA file written during the run.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedLora {
    /// Epoch it was saved at (in progress for a requested save).
    pub epoch: usize,
    /// Optimiser steps done at that point.
    pub step: usize,
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Mean loss of the epoch's steps so far.
    pub loss: f32,
    /// The training state written beside it, if any.
    pub state: Option<PathBuf>,
    /// Why it was written.
    pub reason: SaveReason,
    /// Loss on the held-out images with these weights, when the run holds images out.
    pub validation_loss: Option<f32>,
}

/// The validation loss measured at one point of the run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValidationPoint {
    /// Epoch it was measured in (0: the base model, before the first step).
    pub epoch: usize,
    /// Optimiser steps done.
    pub step: usize,
    /// Mean loss over the held-out images and their fixed timesteps.
    pub loss: f32,
}

/// Images rendered during the run.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSamples {
    /// Epoch they were rendered at.
    pub epoch: usize,
    /// Optimiser steps done.
    pub step: usize,
    /// One PNG per prompt.
    pub paths: Vec<PathBuf>,
}

/// What the trainer reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The dataset is being encoded (`stage` is `latents` or `text`).
    Preparing {
        /// What is being encoded.
        stage: &'static str,
        /// Items done.
        done: usize,
        /// Items in all.
        total: usize,
    },
    /// Adapters are attached and training is about to start.
    Started {
        /// Steps planned.
        total_steps: usize,
        /// Trainable parameters.
        trainable_params: usize,
        /// Adapted module paths.
        adapted_modules: usize,
    },
    /// Training continues from a saved state.
    Resumed {
        /// Steps already done.
        step: usize,
        /// Epoch it continues in.
        epoch: usize,
    },
    /// An optimiser step finished.
    Step(StepProgress),
    /// An epoch finished.
    EpochEnd {
        /// The epoch.
        epoch: usize,
        /// Mean loss of its steps.
        mean_loss: f32,
    },
    /// The validation loss was measured (before training, and at every saved LoRA).
    Validated(ValidationPoint),
    /// A LoRA file was written.
    Saved(SavedLora),
    /// Sample images were written.
    Sampled(SavedSamples),
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

/// Tells the trainer to stop, checked before every optimiser step; it may also ask for a LoRA
/// file or samples at the next step boundary.
pub trait CancelSignal {
    /// Whether the run should stop now.
    fn is_cancelled(&self) -> bool;

    /// True once per request to save a LoRA file now.
    fn take_save_now(&self) -> bool {
        false
    }

    /// True once per request to render samples now.
    fn take_sample_now(&self) -> bool {
        false
    }

    /// The settings a request to render samples now asked for, taken with
    /// [`take_sample_now`](Self::take_sample_now); `None`: the run's own.
    fn take_sample_config(&self) -> Option<SampleConfig> {
        None
    }
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

/// Cancel, `save_now` and `sample_now` flags, shared between the training thread and whoever
/// controls it.
#[derive(Debug, Default)]
pub struct Controls {
    cancel: AtomicBool,
    save_now: AtomicBool,
    sample_now: AtomicBool,
    sample_config: std::sync::Mutex<Option<SampleConfig>>,
}

impl Controls {
    /// Stops the run before its next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// Saves a LoRA file (and state) at the next step boundary.
    pub fn request_save(&self) {
        self.save_now.store(true, Ordering::Release);
    }

    /// Renders samples at the next step boundary.
    pub fn request_sample(&self) {
        self.sample_now.store(true, Ordering::Release);
    }

    /// Renders samples with `config` (its prompts, size, sampler, ...) instead of the run's
    /// own at the next step boundary.
    pub fn request_sample_with(&self, config: SampleConfig) {
        *self
            .sample_config
            .lock()
            .expect("sample config lock poisoned") = Some(config);
        self.sample_now.store(true, Ordering::Release);
    }
}

impl CancelSignal for Controls {
    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    fn take_save_now(&self) -> bool {
        self.save_now.swap(false, Ordering::AcqRel)
    }

    fn take_sample_now(&self) -> bool {
        self.sample_now.swap(false, Ordering::AcqRel)
    }

    fn take_sample_config(&self) -> Option<SampleConfig> {
        self.sample_config
            .lock()
            .expect("sample config lock poisoned")
            .take()
    }
}

impl CancelSignal for Arc<Controls> {
    fn is_cancelled(&self) -> bool {
        (**self).is_cancelled()
    }

    fn take_save_now(&self) -> bool {
        (**self).take_save_now()
    }

    fn take_sample_now(&self) -> bool {
        (**self).take_sample_now()
    }

    fn take_sample_config(&self) -> Option<SampleConfig> {
        (**self).take_sample_config()
    }
}

/// The result of a completed run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    /// The final kohya LoRA file.
    pub lora: PathBuf,
    /// The final diffusers/PEFT file, when asked for.
    pub peft: Option<PathBuf>,
    /// Every kohya file written, in order, the final one last.
    pub saved: Vec<SavedLora>,
    /// Sample images written.
    pub samples: Vec<SavedSamples>,
    /// The configuration written beside the files.
    pub config_file: PathBuf,
    /// Optimiser steps done.
    pub steps: usize,
    /// Epochs started.
    pub epochs: usize,
    /// Loss of every step (of the earlier run too when resumed).
    pub losses: Vec<f32>,
    /// Mean loss of every finished epoch.
    pub epoch_losses: Vec<f32>,
    /// Examples per epoch, repeats included.
    pub examples_per_epoch: usize,
    /// Adapted module paths (text-encoder ones prefixed with `text_encoder.`).
    pub adapted_modules: Vec<String>,
    /// Trainable (adapter) parameters.
    pub trainable_params: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The step this run resumed from, if it did.
    pub resumed_from: Option<usize>,
    /// Learning rate of the UNet adapters at every step (of the earlier run too when resumed).
    pub learning_rates: Vec<f64>,
    /// Validation losses in the order measured: the base model's first (epoch 0, unless the
    /// run resumed), then one per saved LoRA.
    pub validation: Vec<ValidationPoint>,
    /// Names of the held-out images (relative to their folder), or `latent N` for a latents
    /// file.
    pub validation_images: Vec<String>,
}

/// A dataset folder, listed and bucketed but not yet encoded.
#[derive(Debug, Clone)]
pub(crate) struct ScannedImages {
    pub entries: Vec<ImageEntry>,
    /// Bucket `(width, height)` per entry.
    pub buckets: Vec<(usize, usize)>,
}

#[derive(Debug)]
enum Data {
    Latents(LatentDataset),
    Images(Box<ScannedImages>),
}

/// Examples held out of training for the validation loss.
#[derive(Debug, Default)]
enum HeldOut {
    #[default]
    None,
    /// Indices into the latents file.
    Latents(Vec<usize>),
    /// Images (from the dataset or a validation folder).
    Images(Box<ScannedImages>),
}

/// A validated training run.
#[derive(Debug)]
pub struct Trainer {
    config: TrainConfig,
    objective: Objective,
    /// FLUX.1's objective, for a Flux model (then `objective` is unused).
    flow: Option<FlowObjective>,
    data: Data,
    held_out: HeldOut,
}

impl Trainer {
    /// Validates `config`, reads the model's scheduler config (for its prediction type) and
    /// its latents file or lists its image folder (image headers only; images are encoded when
    /// the run starts).
    pub fn new(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let flow = flux::flow_objective(&config)?;
        if prepare::is_sdxl(&config) && config.clip_skip != 1 {
            return Err(Error::invalid(
                "clip_skip",
                config.clip_skip,
                "SDXL conditions on both encoders' penultimate layers; leave clip_skip at 1",
            ));
        }
        if prepare::is_sdxl(&config) && config.images.is_none() {
            return Err(sdxl_needs_images());
        }
        let objective = match flow {
            // FLUX.1 has no DDPM schedule: the UNet objective stays at its defaults, unused.
            Some(_) => Objective::default(),
            None => config.objective.resolve(model_prediction(&config)?)?,
        };
        let (data, held_out) = match (&config.dataset, &config.images) {
            (Some(path), _) => {
                let d = LatentDataset::open(path)?;
                let held = held_out_latents(&config, d.len())?;
                (Data::Latents(d), held)
            }
            (None, Some(images)) => {
                let scanned = scan_images(&config, images, &images.dir)?;
                let (train, held) = split_images(&config, images, scanned)?;
                (Data::Images(Box::new(train)), held)
            }
            (None, None) => unreachable!("validate() requires a dataset"),
        };
        Ok(Self {
            config,
            objective,
            flow,
            data,
            held_out,
        })
    }

    /// Validates `config` and trains on `dataset` (its `dataset` path is recorded, not read).
    pub fn with_dataset(config: TrainConfig, dataset: LatentDataset) -> Result<Self> {
        config.validate()?;
        if config.images.is_some() {
            return Err(Error::invalid(
                "images",
                "set",
                "with_dataset trains on the given latents; leave images unset",
            ));
        }
        if prepare::is_sdxl(&config) {
            return Err(sdxl_needs_images());
        }
        if flux::flow_objective(&config)?.is_some() {
            return Err(flux::needs_images());
        }
        let objective = config.objective.resolve(model_prediction(&config)?)?;
        let held_out = held_out_latents(&config, dataset.len())?;
        Ok(Self {
            config,
            objective,
            flow: None,
            data: Data::Latents(dataset),
            held_out,
        })
    }

    /// Names of the images held out for the validation loss (relative to their folder), or
    /// `latent N` for examples of a latents file; empty without validation.
    pub fn validation_images(&self) -> Vec<String> {
        match &self.held_out {
            HeldOut::None => Vec::new(),
            HeldOut::Latents(i) => i.iter().map(|i| format!("latent {i}")).collect(),
            HeldOut::Images(s) => s.entries.iter().map(|e| e.name.clone()).collect(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The objective a UNet run trains with: the configured one, with the prediction type the
    /// model's scheduler config gives when the configuration leaves it open (its defaults, and
    /// unused, for a Flux model: see [`flow_objective`](Self::flow_objective)).
    pub fn objective(&self) -> &Objective {
        &self.objective
    }

    /// The flow-matching objective a FLUX.1 run trains with (`objective.flow`, or its
    /// defaults); `None` for a UNet model.
    pub fn flow_objective(&self) -> Option<&FlowObjective> {
        self.flow.as_ref()
    }

    /// The images of an image dataset, with their captions and repeats.
    pub fn images(&self) -> &[ImageEntry] {
        match &self.data {
            Data::Images(s) => &s.entries,
            Data::Latents(_) => &[],
        }
    }

    /// A digest of the training data: image names, sizes, captions, repeats and buckets (or
    /// the latents themselves), recorded in training states.
    pub fn dataset_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match &self.data {
            Data::Latents(d) => {
                for i in 0..d.len() {
                    for v in d.latent(i).data.iter().chain(d.state(i).data.iter()) {
                        h.update(v.to_le_bytes());
                    }
                }
            }
            Data::Images(s) => {
                for (e, b) in s.entries.iter().zip(&s.buckets) {
                    let size = std::fs::metadata(&e.path).map_or(0, |m| m.len());
                    h.update(format!(
                        "{}\0{size}\0{}\0{}\0{}x{}\n",
                        e.name, e.caption, e.repeats, b.0, b.1
                    ));
                }
            }
        }
        hex::encode(h.finalize())
    }

    /// Micro-batches per epoch.
    fn batches_per_epoch(&self) -> usize {
        let b = self.config.batch_size;
        match &self.data {
            Data::Latents(d) => (d.len() - self.held_out_len()).div_ceil(b),
            Data::Images(s) => {
                let mut counts: BTreeMap<(usize, usize), usize> = BTreeMap::new();
                for (e, bucket) in s.entries.iter().zip(&s.buckets) {
                    *counts.entry(*bucket).or_default() += e.repeats;
                }
                counts.values().map(|n| n.div_ceil(b)).sum()
            }
        }
    }

    /// Optimiser steps per epoch and in total.
    pub fn plan(&self) -> (usize, usize) {
        let c = &self.config;
        let per_epoch = self
            .batches_per_epoch()
            .div_ceil(c.gradient_accumulation_steps);
        let total = c.max_train_steps.unwrap_or(c.epochs * per_epoch);
        (per_epoch, total)
    }

    fn held_out_len(&self) -> usize {
        match &self.held_out {
            HeldOut::None => 0,
            HeldOut::Latents(i) => i.len(),
            HeldOut::Images(s) => s.entries.len(),
        }
    }

    /// The training examples of a latents file, and its held-out ones.
    fn training_set_of_latents(&self) -> Option<(TrainingSet, TrainingSet)> {
        let Data::Latents(d) = &self.data else {
            return None;
        };
        let all = TrainingSet::from_latents(d);
        let held: &[usize] = match &self.held_out {
            HeldOut::Latents(i) => i,
            _ => &[],
        };
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for (i, e) in all.examples().iter().enumerate() {
            if held.binary_search(&i).is_ok() {
                validation.push(e.clone());
            } else {
                train.push(e.clone());
            }
        }
        Some((TrainingSet::new(train), TrainingSet::new(validation)))
    }
}

/// The examples of a latents file of `n` held out by the configuration.
fn held_out_latents(config: &TrainConfig, n: usize) -> Result<HeldOut> {
    Ok(match &config.validation {
        Some(v) => HeldOut::Latents(v.held_out(n, config.seed)?),
        None => HeldOut::None,
    })
}

/// Splits the scanned dataset into training images and held-out ones.
fn split_images(
    config: &TrainConfig,
    images: &crate::data::ImageDatasetConfig,
    scanned: ScannedImages,
) -> Result<(ScannedImages, HeldOut)> {
    let Some(v) = &config.validation else {
        return Ok((scanned, HeldOut::None));
    };
    let held: Vec<usize> = match &v.dir {
        Some(dir) => {
            // A validation folder inside the dataset is not trained on.
            let inside: Vec<usize> = (0..scanned.entries.len())
                .filter(|&i| scanned.entries[i].path.starts_with(dir))
                .collect();
            let folder = scan_images(config, images, dir)?;
            if folder.entries.is_empty() {
                return Err(Error::invalid(
                    "validation.dir",
                    dir.display(),
                    "has no images to validate on",
                ));
            }
            let train = keep(scanned, &inside);
            if train.entries.is_empty() {
                return Err(Error::invalid(
                    "validation.dir",
                    dir.display(),
                    "holds every image of the dataset; nothing is left to train on",
                ));
            }
            return Ok((train, HeldOut::Images(Box::new(folder))));
        }
        None => v.held_out(scanned.entries.len(), config.seed)?,
    };
    let validation = ScannedImages {
        entries: held.iter().map(|&i| scanned.entries[i].clone()).collect(),
        buckets: held.iter().map(|&i| scanned.buckets[i]).collect(),
    };
    Ok((keep(scanned, &held), HeldOut::Images(Box::new(validation))))
}

/// `scanned` without the entries at `drop` (ascending).
fn keep(scanned: ScannedImages, drop: &[usize]) -> ScannedImages {
    let (entries, buckets) = scanned
        .entries
        .into_iter()
        .zip(scanned.buckets)
        .enumerate()
        .filter(|(i, _)| drop.binary_search(i).is_err())
        .map(|(_, pair)| pair)
        .unzip();
    ScannedImages { entries, buckets }
}

/// SDXL conditions on each image's size, which a latents file does not record.
fn sdxl_needs_images() -> Error {
    Error::invalid(
        "dataset",
        "a latents file",
        "SDXL trains on an image folder (images.dir), whose image sizes give the \
         micro-conditioning",
    )
}

/// The component configs of the configured model.
pub(crate) fn pipeline_config(config: &TrainConfig) -> Result<PipelineConfig> {
    let path = config
        .model
        .path
        .as_ref()
        .expect("validated: images need model.path");
    if path.is_dir() {
        PipelineConfig::from_dir(path)
    } else {
        let dir = config.model.config_dir.as_ref().ok_or_else(|| {
            Error::invalid(
                "model.config_dir",
                "none",
                format!(
                    "{} is a single-file checkpoint; give a diffusers folder with its configs and tokenizer",
                    path.display()
                ),
            )
        })?;
        PipelineConfig::from_dir(dir)
    }
}

/// Lists `dir` with the dataset's settings and puts every image in its bucket (reading image
/// headers only).
fn scan_images(
    config: &TrainConfig,
    images: &crate::data::ImageDatasetConfig,
    dir: &std::path::Path,
) -> Result<ScannedImages> {
    let pixel_multiple = if let Some(multiple) = flux::pixel_multiple(config)? {
        multiple
    } else if prepare::is_sdxl(config) {
        let path = config.model.path.as_ref().expect("is_sdxl: a whole model");
        let dir = if path.is_dir() {
            path.as_path()
        } else {
            config
                .model
                .config_dir
                .as_deref()
                .expect("is_sdxl: a config folder")
        };
        crate::sdxl::SdxlConfig::from_dir(dir)?.pixel_multiple()
    } else {
        pipeline_config(config)?.pixel_multiple()
    };
    let entries = folder::scan(
        dir,
        images.num_repeats,
        images.trigger_word.as_deref(),
        &images.caption_overrides,
    )?;
    let buckets = Buckets::new(images.resolution, &images.buckets, pixel_multiple)?;
    if prepare::is_flux(config) {
        flux::check_resolution(images.resolution, pixel_multiple)?;
    }
    let mut chosen = Vec::with_capacity(entries.len());
    for e in &entries {
        let (w, h) = image::image_dimensions(&e.path).map_err(|err| Error::Parse {
            path: e.path.clone(),
            reason: format!("not a readable image: {err}"),
        })?;
        chosen.push(buckets.select(w as usize, h as usize));
    }
    Ok(ScannedImages {
        entries,
        buckets: chosen,
    })
}
