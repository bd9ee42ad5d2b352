//! The kohya engine: `train` steps run by kohya-ss/sd-scripts
//! (`train_network.py`, `sdxl_train_network.py`, `flux_train_network.py`)
//! as a subprocess, with generated configs and parsed progress.
//!
//! - [`options`]: what an operator configures (checkout, launcher, scripts,
//!   checkpoints per base model, extra arguments, timeout).
//! - [`params`]: a job's parameters checked into what sd-scripts takes.
//! - [`layout`]: the dataset as a `<num_repeats>_<subject>` folder of images
//!   and `.txt` captions (the shared [`crate::external::image_folder`]).
//! - [`config`]: the dataset-config and training-config TOML.
//! - [`progress`]: sd-scripts' output lines (tqdm bar, epochs, saves,
//!   out-of-memory) and the progress they add up to.
//! - [`process`]: the child process (the shared [`crate::external::process`]):
//!   streaming output, deadline, stopping its whole process group.
//! - [`outputs`]: the per-epoch LoRA files and samples sd-scripts saved.
//! - [`install`]: whether the checkout, launcher and checkpoints are there.
//! - [`executor`]: [`KohyaTrainer`], the [`Executor`](loraflow_core::executor::Executor).
//! - [`error`]: [`Error`], and the step error each failure becomes.

pub mod config;
pub mod error;
pub mod executor;
pub mod install;
pub mod layout;
pub mod options;
pub mod outputs;
pub mod params;
pub mod progress;

/// The child process, shared with the other external engines.
pub use crate::external::process;

pub use error::{Error, Result};
pub use executor::KohyaTrainer;
pub use options::{KohyaModel, KohyaOptions, MixedPrecision, Scripts};
