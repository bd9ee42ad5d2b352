//! Read models: pure folds of the job events, as the projections of the global
//! event feed keep them. No I/O here; a store persists them.
//!
//! - [`job_status`]: one job as a client sees it (state, steps, progress, artifacts).
//! - [`job_list`]: the summary a job list shows, and its filters.
//! - [`queue`]: the steps waiting for an executor, in the order they are served.
//!
//! Every fold takes the event with its [`EventMeta`] (global position, per-job
//! sequence, time recorded) so that a view knows how far it is up to date.

pub mod job_list;
pub mod job_status;
pub mod queue;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use job_list::{JobListFilter, JobSummary};
pub use job_status::{JobStatus, StepView};
pub use queue::{QueueChange, QueueEntry, QueueView, QueuedStep};

/// Where an event sits in the store, given to every fold with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// The event's global position in the feed.
    pub position: u64,
    /// The event's sequence within its job (1 for `JobCreated`).
    pub sequence: u64,
    /// When the store recorded the event.
    pub recorded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests;
