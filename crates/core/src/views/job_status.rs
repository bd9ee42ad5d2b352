//! `JobStatus`: one job as a client sees it, folded from its events. It never
//! loads the aggregate: everything it shows is carried by the events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::EventMeta;
use crate::artifact::{Artifact, EpochOutput, absorb_into};
use crate::catalogue::Engine;
use crate::catalogue::Params;
use crate::ids::{BaseModelId, ExecutorId, JobId, StepId, TenantId};
use crate::job::events::JobCreated;
use crate::job::{
    Failure, FailureReason, JobEvent, JobSpec, JobState, Naming, StepError, StepErrorKind,
    StepProgress, StepStatus,
};
use crate::workflow::StepKind;

/// One step of a job as a status page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StepView {
    pub id: StepId,
    pub kind: StepKind,
    /// Where the step is; the same vocabulary as the aggregate's.
    pub status: StepStatus,
    /// The current (or last) attempt; 0 before the first is queued.
    pub attempt: u32,
    /// Attempts allowed in all, when known (from the workflow, then from retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The executor of the current (or last) attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorId>,
    /// The last progress the executor reported for the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<StepProgress>,
    /// Why the last attempt ended without success, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
}

/// A job's status: state, steps, training progress and outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobStatus {
    pub job_id: JobId,
    pub tenant: TenantId,
    pub base_model: BaseModelId,
    pub engine: Engine,
    pub state: JobState,
    /// Set when `state` is `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// In workflow order; empty until the job is submitted.
    pub steps: Vec<StepView>,
    /// The training epoch last reported or produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u32>,
    /// The training loss last reported or produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_loss: Option<f64>,
    /// Saved epochs with their LoRA, samples and loss, keyed by epoch number
    /// (in JSON a decimal string: `{"1": {...}}`).
    #[cfg_attr(feature = "utoipa", schema(value_type = BTreeMap<String, EpochOutput>))]
    pub epochs: BTreeMap<u32, EpochOutput>,
    /// LoRAs and samples made on `save-now`/`sample-now` requests between
    /// epochs, keyed by the optimisation step they were made at (in JSON a
    /// decimal string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = BTreeMap<String, EpochOutput>))]
    pub requested: BTreeMap<u64, EpochOutput>,
    /// Artifacts that belong to no epoch (manifest, labels, reports).
    pub artifacts: Vec<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_epoch: Option<u32>,
    /// Set when the reviewer chose the LoRA saved at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_step: Option<u64>,
    /// What a client should know about how the job will run (a job without
    /// sample prompts gets default ones, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Artifact>,
    pub created_at: DateTime<Utc>,
    /// When the store recorded the job's last event.
    pub updated_at: DateTime<Utc>,
    /// The job's last event sequence: the etag a client quotes.
    pub sequence: u64,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub naming: Naming,
    /// The global position of the last event folded in.
    pub last_position: u64,
    /// The spec as created, and the parameters it resolved to.
    pub spec: JobSpec,
    #[cfg_attr(feature = "utoipa", schema(value_type = std::collections::BTreeMap<String, crate::catalogue::ParamValue>))]
    pub params: Params,
}

impl JobStatus {
    /// The status right after `JobCreated`.
    pub fn created(meta: EventMeta, e: &JobCreated) -> Self {
        Self {
            job_id: e.job_id.clone(),
            tenant: e.spec.tenant.clone(),
            base_model: e.spec.base_model.clone(),
            engine: e.spec.engine,
            state: JobState::Pending,
            failure: None,
            steps: Vec::new(),
            current_epoch: None,
            last_loss: None,
            epochs: BTreeMap::new(),
            requested: BTreeMap::new(),
            artifacts: Vec::new(),
            approved_epoch: None,
            approved_step: None,
            warnings: crate::sampling::warnings(&e.spec, &e.params),
            published: None,
            created_at: e.created_at,
            updated_at: meta.recorded_at,
            sequence: meta.sequence,
            labels: e.spec.labels.clone(),
            priority: e.spec.priority,
            naming: e.spec.naming.clone(),
            last_position: meta.position,
            spec: e.spec.clone(),
            params: e.params.clone(),
        }
    }

    /// Fold one event into an optional status: `JobCreated` starts it, every
    /// other event updates it. An event for a job without status (which a
    /// complete feed never delivers) is ignored.
    pub fn fold(status: Option<Self>, meta: EventMeta, event: &JobEvent) -> Option<Self> {
        match (status, event) {
            (None, JobEvent::JobCreated(e)) => Some(Self::created(meta, e)),
            (None, _) => None,
            (Some(mut s), e) => {
                s.apply(meta, e);
                Some(s)
            }
        }
    }

    /// Every reviewable output in training order (see
    /// [`Reviewables::in_order`](crate::artifact::Reviewables::in_order)).
    pub fn reviewables(&self) -> crate::artifact::Reviewables {
        crate::artifact::Reviewables {
            epochs: self.epochs.clone(),
            requested: self.requested.clone(),
        }
    }

    /// The epoch to suggest to a reviewer: the lowest validation loss, else
    /// the lowest training loss.
    pub fn suggestion(&self) -> Option<crate::artifact::Suggestion> {
        crate::artifact::Suggestion::among(self.epochs.values())
    }

    pub fn step(&self, id: &StepId) -> Option<&StepView> {
        self.steps.iter().find(|s| &s.id == id)
    }

    fn step_mut(&mut self, id: &StepId) -> Option<&mut StepView> {
        self.steps.iter_mut().find(|s| &s.id == id)
    }

    /// Fold one event in. Events at or below the status' sequence were folded
    /// already and are ignored, so a replayed delivery cannot count twice.
    pub fn apply(&mut self, meta: EventMeta, event: &JobEvent) {
        if meta.sequence <= self.sequence {
            return;
        }
        self.sequence = meta.sequence;
        self.last_position = meta.position;
        self.updated_at = meta.recorded_at;
        match event {
            // A second creation cannot be emitted; nothing to do.
            JobEvent::JobCreated(_) => {}
            JobEvent::JobSubmitted(e) => {
                self.steps = e
                    .workflow
                    .steps
                    .iter()
                    .map(|s| StepView {
                        id: s.id.clone(),
                        kind: s.kind.clone(),
                        status: StepStatus::Waiting,
                        attempt: 0,
                        max_attempts: Some(s.retry.max_attempts),
                        executor: None,
                        progress: None,
                        last_error: None,
                    })
                    .collect();
                self.state = JobState::Submitted;
            }
            JobEvent::StepQueued(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    s.status = StepStatus::Queued {
                        attempt: e.attempt,
                        queued_at: e.queued_at,
                        not_before: e.not_before,
                    };
                    s.attempt = e.attempt;
                }
            }
            JobEvent::StepLeased(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    s.status = StepStatus::Leased {
                        attempt: e.attempt,
                        lease_id: e.lease_id.clone(),
                        executor_id: e.executor_id.clone(),
                        deadline: e.deadline,
                        close_by: e.close_by,
                    };
                    s.attempt = e.attempt;
                    s.executor = Some(e.executor_id.clone());
                    s.progress = None;
                }
                if self.state == JobState::Submitted {
                    self.state = JobState::Processing;
                }
            }
            JobEvent::StepProgressed(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    if let StepStatus::Leased { deadline, .. } = &mut s.status {
                        *deadline = e.deadline;
                    }
                    s.progress = Some(StepProgress {
                        outputs: Vec::new(),
                        ..e.progress.clone()
                    });
                }
                for out in &e.progress.outputs {
                    absorb_into(&mut self.epochs, &mut self.requested, out.clone());
                }
                if let Some(epoch) = e.progress.epoch {
                    self.current_epoch = Some(epoch);
                }
                if let Some(loss) = e.progress.loss {
                    self.last_loss = Some(loss);
                }
            }
            JobEvent::StepCompleted(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    s.status = StepStatus::Completed;
                }
                self.artifacts.extend(e.artifacts.iter().cloned());
                for out in &e.epochs {
                    absorb_into(&mut self.epochs, &mut self.requested, out.clone());
                }
                // The last epoch training produced is where training ended.
                if let Some(last) = e
                    .epochs
                    .iter()
                    .filter(|o| o.lora.is_some())
                    .max_by_key(|o| o.epoch)
                {
                    self.current_epoch = Some(last.epoch);
                    if let Some(loss) = last.loss {
                        self.last_loss = Some(loss);
                    }
                }
            }
            JobEvent::StepFailed(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    s.status = StepStatus::Failed;
                    s.last_error = Some(e.error.clone());
                }
            }
            JobEvent::LeaseExpired(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    s.status = StepStatus::Failed;
                    s.last_error = Some(StepError {
                        kind: StepErrorKind::Unavailable,
                        message: format!(
                            "lease {} of executor {} expired ({:?})",
                            e.lease_id, e.executor_id, e.cause
                        ),
                        retryable: true,
                    });
                }
            }
            JobEvent::StepRetried(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    s.max_attempts = Some(e.max_attempts);
                }
            }
            JobEvent::ReviewRequested(e) => {
                if let Some(s) = self.step_mut(&e.step_id) {
                    s.status = StepStatus::AwaitingReview;
                }
                self.state = JobState::InReview;
            }
            JobEvent::JobApproved(e) => {
                for s in &mut self.steps {
                    if s.status == StepStatus::AwaitingReview {
                        s.status = StepStatus::Completed;
                    }
                }
                self.approved_epoch = Some(e.epoch);
                self.approved_step = e.step;
                self.state = JobState::Approved;
            }
            JobEvent::JobRejected(e) => self.fail(FailureReason::Rejected, &e.reason),
            JobEvent::JobPublished(e) => {
                self.published = Some(e.artifact.clone());
                self.state = JobState::Published;
            }
            JobEvent::JobFailed(e) => self.fail(e.reason, &e.message),
            JobEvent::JobCancelled(e) => self.fail(FailureReason::Cancelled, &e.reason),
        }
    }

    fn fail(&mut self, reason: FailureReason, message: &str) {
        for s in &mut self.steps {
            if !matches!(s.status, StepStatus::Completed | StepStatus::Failed) {
                s.status = StepStatus::Dropped;
            }
        }
        self.failure = Some(Failure {
            reason,
            message: message.to_owned(),
        });
        self.state = JobState::Failed;
    }
}
