//! The ai-toolkit engine: `train` steps run by ostris/ai-toolkit
//! (`python run.py <job config>`) as a subprocess, for SDXL and FLUX.1
//! LoRAs, with a generated job config and parsed progress.
//!
//! - [`options`]: what an operator configures (checkout, python, models,
//!   extra config keys, environment, timeout).
//! - [`params`]: a job's parameters checked into what ai-toolkit takes, and
//!   how epochs become its steps ([`params::StepPlan`]).
//! - [`config`]: the job config (YAML), in the shape of ai-toolkit's examples.
//! - [`progress`]: ai-toolkit's output lines (the job's tqdm bar with lr and
//!   loss, saves, errors) and the progress they add up to.
//! - [`outputs`]: the per-epoch LoRA files and samples ai-toolkit saved.
//! - [`check`]: the startup check of an installation.
//! - [`executor`]: [`AiToolkitTrainer`], the [`Executor`](loraflow_core::executor::Executor).
//! - [`error`]: [`Error`], and the step error each failure becomes.
//!
//! The child process, the image folder and parameter checks are shared with
//! the kohya engine ([`crate::external`]).

pub mod check;
pub mod config;
pub mod error;
pub mod executor;
pub mod options;
pub mod outputs;
pub mod params;
pub mod progress;

pub use check::{Installation, check_installation};
pub use error::{Error, Result};
pub use executor::AiToolkitTrainer;
pub use options::{AiToolkitModel, AiToolkitOptions};
