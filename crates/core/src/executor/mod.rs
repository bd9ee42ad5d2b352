//! Executors: the code that runs steps. The same [`Executor`] trait runs
//! in-process (embedded engine) and behind gRPC in a worker.
//!
//! - [`Capabilities`]: what an executor offers, matched against a step's requirements.
//! - [`StepAssignment`] / [`StepOutput`]: what a step gets and returns.
//! - [`StepContext`] / [`StepHandle`]: progress, cancellation, signals, artifact I/O.
//! - [`ArtifactIo`]: the artifact store as executors see it.

mod artifacts;
mod assignment;
mod capabilities;
mod context;

use async_trait::async_trait;

pub use artifacts::{ArtifactError, ArtifactIo};
pub use assignment::{StepAssignment, StepOutput};
pub use capabilities::{Capabilities, InstalledModel, MAX_POLL_STEPS, loads_base_model};
pub use context::{StepContext, StepHandle};

use crate::catalogue::Engine;
use crate::job::StepError;
use crate::workflow::StepKind;

/// Runs steps of some kinds.
///
/// `run` should report progress through the context, stop promptly once the
/// context is cancelled (returning a `Cancelled` error), and return a typed
/// [`StepError`]: `retryable` says whether another attempt could succeed.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The step kinds this executor runs.
    fn kinds(&self) -> Vec<StepKind>;

    /// The training engines it drives (for `train` executors).
    fn engines(&self) -> Vec<Engine> {
        Vec::new()
    }

    /// The base models it has installed, per engine; empty when it cannot
    /// tell (it is then offered any model of its engines).
    fn base_models(&self) -> Vec<InstalledModel> {
        Vec::new()
    }

    async fn run(&self, step: &StepAssignment, ctx: &StepContext) -> Result<StepOutput, StepError>;
}
