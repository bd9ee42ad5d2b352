//! The demo job's training settings: what `loraflow demo` trains on `assets/tiny-sd` with
//! `assets/demo-dataset`, as the trainer sees them.
//!
//! The demo job sets the constants below as job parameters (the rest are the catalogue's
//! defaults for `tiny-sd`), and the native engine maps them to
//! [`train_config`]. The root package checks that the two agree, so the concept test
//! (`crates/trainer/tests/concept.rs`), which trains with [`train_config`], trains exactly
//! the demo's LoRA.

use std::path::{Path, PathBuf};

use crate::TrainConfig;
use crate::data::{CaptionOptions, ImageDatasetConfig};
use crate::lora::targets;
use crate::train::config::TextEncoderTraining;
use crate::train::lr::{LrSchedule, LrScheduleKind};
use crate::train::validation::ValidationConfig;

/// Epochs (one LoRA and one set of samples each).
pub const EPOCHS: usize = 8;
/// Repeats of every image per epoch.
pub const NUM_REPEATS: usize = 8;
/// Images per optimiser step: with 4 (and twice the repeats of batch 2, so the same number of
/// steps) the LoRA draws rings far more reliably.
pub const BATCH_SIZE: usize = 4;
/// Rank (and alpha) of the adapters on the UNet's resnet and resampler convolutions (LoCon,
/// sd-scripts' `conv_dim`). Attention adapters alone do not learn to draw the ring's hole.
pub const CONV_DIM: usize = 8;
/// Learning rate of the UNet adapters.
pub const UNET_LR: f64 = 6e-3;
/// Probability of a step on the empty caption: it trains the unconditional prediction that
/// guidance pushes away from, so the LoRA does not shift it.
pub const CAPTION_DROPOUT: f64 = 0.1;
/// Seed of the run.
pub const SEED: u64 = 42;

/// The demo job's trainer configuration for `model` and `dataset`, writing `name` files to
/// `output`: the values above and the catalogue's defaults for `tiny-sd` (resolution 64,
/// rank 4, alpha 4, text-encoder adapters at 5e-5, cosine schedule without
/// warm-up, min-SNR γ 5, gradient clipping at 1, tags shuffled behind the first, a quarter
/// of the images held out for the validation loss, a LoRA every epoch).
pub fn train_config(
    model: impl Into<PathBuf>,
    dataset: impl Into<PathBuf>,
    output: &Path,
    name: &str,
) -> TrainConfig {
    let mut images = ImageDatasetConfig::new(dataset, 64);
    images.num_repeats = NUM_REPEATS;
    images.captions = CaptionOptions {
        shuffle_tags: true,
        keep_tokens: 1,
        dropout: CAPTION_DROPOUT,
    };
    let mut c = TrainConfig::for_images(model, images, output, name);
    c.device = "cpu".into();
    c.validation = Some(ValidationConfig::split(0.25));
    c.epochs = EPOCHS;
    c.batch_size = BATCH_SIZE;
    c.gradient_accumulation_steps = 1;
    c.network.rank = 4;
    c.network.alpha = 4.0;
    c.network.targets = targets::ATTENTION
        .iter()
        .chain(targets::CONV)
        .map(|pattern| pattern.to_string())
        .collect();
    c.network.conv_rank = Some(CONV_DIM);
    c.network.conv_alpha = Some(CONV_DIM as f64);
    c.optimizer.learning_rate = UNET_LR;
    c.text_encoder = Some(TextEncoderTraining::new(5e-5));
    c.lr_schedule = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: 0,
    };
    c.objective.min_snr_gamma = Some(5.0);
    c.objective.noise_offset = 0.0;
    c.objective.prediction = None;
    c.clip_skip = 1;
    c.output.save_every_n_epochs = Some(1);
    c.max_grad_norm = Some(1.0);
    c.seed = SEED;
    c
}
