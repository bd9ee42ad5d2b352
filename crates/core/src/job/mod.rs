//! The `TrainingJob` aggregate: its state machine, commands, events and errors.
//!
//! - [`aggregate`]: state folded from events; `decide` (pure) and the cqrs-es glue.
//! - [`commands`] / [`events`]: the vocabulary.
//! - `handle/`: one file per group of commands.
//! - [`step`]: a step's life inside the job (attempts, leases, progress).
//! - [`upcast`]: old event shapes to new.

pub mod aggregate;
pub mod commands;
mod error;
pub mod events;
mod handle;
mod spec;
mod state;
pub mod step;
pub mod upcast;

#[cfg(any(test, feature = "testing"))]
pub mod canned;

pub use aggregate::{JobServices, TrainingJob, replay};
pub use commands::*;
pub use error::{Error, Result};
pub use events::JobEvent;
pub use spec::{
    AdmittedDataset, DatasetRef, JobSpec, MAX_PROMPT_CHARS, MAX_SAMPLE_PROMPTS, Naming,
};
pub use state::{Failure, FailureReason, JobState};
pub use step::{StepError, StepErrorKind, StepProgress, StepStatus};

#[cfg(test)]
mod tests;
