//! The queue view: steps waiting for an executor, served by priority (higher
//! first) and then by age (the global position of their `StepQueued`).
//!
//! The fold is split in two so stores can persist it row by row:
//! [`QueueView::changes`] turns an event into [`QueueChange`]s, and
//! [`QueueView::apply`] applies one to the in-memory view.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::EventMeta;
use crate::ids::{JobId, StepId, TenantId};
use crate::job::JobEvent;
use crate::workflow::{Requirements, StepKind};

/// A step waiting for an executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedStep {
    pub job_id: JobId,
    pub step_id: StepId,
    pub kind: StepKind,
    pub attempt: u32,
    pub tenant: TenantId,
    pub priority: i32,
    pub requires: Requirements,
    pub queued_at: DateTime<Utc>,
    /// Not to be leased before this instant (retry backoff).
    pub not_before: DateTime<Utc>,
    /// The global position of the `StepQueued` event: the step's age in the queue.
    pub position: u64,
}

/// A queued step and its place in the queue (1 is served next).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub place: usize,
    #[serde(flatten)]
    pub step: QueuedStep,
}

/// What one event does to the queue.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueChange {
    /// The step is queued (a new attempt replaces an older entry).
    Upsert(QueuedStep),
    /// The step left the queue (it was leased).
    Remove { job_id: JobId, step_id: StepId },
    /// The job ended: none of its steps waits any longer.
    RemoveJob { job_id: JobId },
}

/// The serving order: priority descending, then position ascending.
pub fn queue_order(a: &QueuedStep, b: &QueuedStep) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.position.cmp(&b.position))
}

/// All queued steps, keyed by job and step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    steps: BTreeMap<(JobId, StepId), QueuedStep>,
}

impl QueueView {
    /// The queue changes `event` of `job_id` makes.
    pub fn changes(job_id: &JobId, meta: EventMeta, event: &JobEvent) -> Vec<QueueChange> {
        match event {
            JobEvent::StepQueued(e) => vec![QueueChange::Upsert(QueuedStep {
                job_id: job_id.clone(),
                step_id: e.step_id.clone(),
                kind: e.kind.clone(),
                attempt: e.attempt,
                tenant: e.tenant.clone(),
                priority: e.priority,
                requires: e.requires.clone(),
                queued_at: e.queued_at,
                not_before: e.not_before,
                position: meta.position,
            })],
            JobEvent::StepLeased(e) => vec![QueueChange::Remove {
                job_id: job_id.clone(),
                step_id: e.step_id.clone(),
            }],
            JobEvent::JobFailed(_)
            | JobEvent::JobCancelled(_)
            | JobEvent::JobRejected(_)
            | JobEvent::JobPublished(_) => vec![QueueChange::RemoveJob {
                job_id: job_id.clone(),
            }],
            _ => Vec::new(),
        }
    }

    pub fn apply(&mut self, change: QueueChange) {
        match change {
            QueueChange::Upsert(s) => {
                self.steps.insert((s.job_id.clone(), s.step_id.clone()), s);
            }
            QueueChange::Remove { job_id, step_id } => {
                self.steps.remove(&(job_id, step_id));
            }
            QueueChange::RemoveJob { job_id } => {
                self.steps.retain(|(j, _), _| j != &job_id);
            }
        }
    }

    /// Fold one event in.
    pub fn apply_event(&mut self, job_id: &JobId, meta: EventMeta, event: &JobEvent) {
        for c in Self::changes(job_id, meta, event) {
            self.apply(c);
        }
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The queue in serving order, with places.
    pub fn entries(&self) -> Vec<QueueEntry> {
        Self::ranked(self.steps.values().cloned().collect())
    }

    /// Sort `steps` into serving order and number them from 1.
    pub fn ranked(mut steps: Vec<QueuedStep>) -> Vec<QueueEntry> {
        steps.sort_by(queue_order);
        steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| QueueEntry { place: i + 1, step })
            .collect()
    }
}
