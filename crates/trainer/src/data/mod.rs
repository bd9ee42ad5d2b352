//! Training data from a folder of images and captions.
//!
//! - [`folder`]: kohya-style folders (`N_name` repeat folders, `.txt`/`.caption` sidecars).
//! - [`caption`]: trigger word, tag shuffling with `keep_tokens`, caption dropout.
//! - [`bucket`]: aspect-ratio buckets and fitting images into them.
//! - [`cache`]: latents and text states on disk, keyed by content digests.

pub mod bucket;
pub mod cache;
pub mod caption;
pub mod folder;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use bucket::{BucketOptions, Buckets};
pub use caption::CaptionOptions;
pub use folder::ImageEntry;

use crate::error::{Error, Result};

fn one() -> usize {
    1
}

fn default_resolution() -> usize {
    512
}

/// A folder of images and captions, and how to turn it into training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDatasetConfig {
    /// The dataset folder.
    pub dir: PathBuf,
    /// Repeats of images outside `N_name` folders (sd-scripts' `num_repeats`).
    #[serde(default = "one")]
    pub num_repeats: usize,
    /// Put first in every caption (once).
    #[serde(default)]
    pub trigger_word: Option<String>,
    /// Tag shuffling and dropout.
    #[serde(default)]
    pub captions: CaptionOptions,
    /// Training resolution: buckets hold at most `resolution²` pixels.
    #[serde(default = "default_resolution")]
    pub resolution: usize,
    /// Aspect-ratio buckets.
    #[serde(default)]
    pub buckets: BucketOptions,
    /// Captions replacing sidecars, by image path relative to `dir` (`/`-separated).
    #[serde(default)]
    pub caption_overrides: BTreeMap<String, String>,
    /// Where latents and text states are cached; `<output dir>/cache` when absent.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl ImageDatasetConfig {
    /// A dataset of `dir` at `resolution` with default settings.
    pub fn new(dir: impl Into<PathBuf>, resolution: usize) -> Self {
        Self {
            dir: dir.into(),
            num_repeats: 1,
            trigger_word: None,
            captions: CaptionOptions::default(),
            resolution,
            buckets: BucketOptions::default(),
            caption_overrides: BTreeMap::new(),
            cache_dir: None,
        }
    }

    /// Checks the values that do not need the model.
    pub fn validate(&self) -> Result<()> {
        if self.num_repeats == 0 {
            return Err(Error::invalid(
                "dataset.num_repeats",
                0,
                "must be at least 1",
            ));
        }
        if self.resolution < 8 {
            return Err(Error::invalid(
                "dataset.resolution",
                self.resolution,
                "must be at least 8 pixels",
            ));
        }
        self.captions.validate()
    }
}
