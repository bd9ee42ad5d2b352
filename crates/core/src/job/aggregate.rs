//! The `TrainingJob` aggregate: state folded from events, and the cqrs-es glue.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use super::commands::JobCommand;
use super::error::Error;
use super::events::*;
use super::handle;
use super::spec::{AdmittedDataset, JobSpec};
use super::state::{Failure, FailureReason, JobState};
use super::step::{Attempt, AttemptOutcome, StepRecord, StepStatus};
use crate::artifact::{Artifact, EpochOutput, Reviewables};
use crate::catalogue::{Catalogue, Params, StatusHandle};
use crate::clock::Clock;
use crate::executor::StepAssignment;
use crate::ids::{JobId, LeaseId, StepId};
use crate::workflow::{Dag, KnownKinds, Progress, WorkflowSpec};

/// What the aggregate consults while deciding: the catalogue, the operator's
/// current service status, the step kinds executors can run, and the clock.
#[derive(Debug, Clone)]
pub struct JobServices {
    pub catalogue: Arc<Catalogue>,
    pub status: StatusHandle,
    pub kinds: KnownKinds,
    pub clock: Arc<dyn Clock>,
    /// Limits on every input, checked when a job is created.
    pub limits: Arc<crate::limits::Limits>,
    /// What the deployment sets in the standard template (its
    /// schedule-to-start timeout).
    pub template: crate::workflow::TemplateOptions,
    /// Base models tenants registered (see
    /// [`crate::catalogue::custom`]); the engine keeps it filled.
    pub custom_models: crate::catalogue::TenantModels,
}

impl JobServices {
    /// Services over `catalogue` with its initial service status, the built-in
    /// step kinds, and the system clock.
    pub fn new(catalogue: Catalogue) -> Self {
        let status = StatusHandle::new(catalogue.service.clone());
        Self {
            catalogue: Arc::new(catalogue),
            status,
            kinds: KnownKinds::builtin(),
            clock: Arc::new(crate::clock::SystemClock),
            limits: Arc::default(),
            template: Default::default(),
            custom_models: Default::default(),
        }
    }

    pub fn with_template(mut self, template: crate::workflow::TemplateOptions) -> Self {
        self.template = template;
        self
    }

    pub fn with_limits(mut self, limits: crate::limits::Limits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_kinds(mut self, kinds: KnownKinds) -> Self {
        self.kinds = kinds;
        self
    }
}

/// Where the job is; `New` until created. Failed carries its reason, so a
/// failed job without a reason cannot be represented.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) enum Phase {
    #[default]
    New,
    Pending,
    Submitted,
    Processing,
    InReview,
    Approved,
    Published,
    Failed(Failure),
}

/// A LoRA training job. Its state is only the fold of its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingJob {
    pub(crate) job_id: Option<JobId>,
    /// Shared, not copied, when the job is cloned (the store keeps jobs in
    /// memory and decides each command on a clone): set once, by the
    /// creation, and read after.
    pub(crate) spec: Option<Arc<JobSpec>>,
    /// Shared as `spec` is; set once, by the creation.
    pub(crate) params: Arc<Params>,
    pub(crate) phase: Phase,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) dataset: Option<AdmittedDataset>,
    /// Shared as `spec` is; set once, by the submission.
    pub(crate) workflow: Option<Arc<WorkflowSpec>>,
    pub(crate) steps: BTreeMap<StepId, StepRecord>,
    pub(crate) outputs: Reviewables,
    pub(crate) approved: Option<JobApproved>,
    pub(crate) published: Option<Artifact>,
    /// The tenant's registered model the job trains against, as it was
    /// when the job was created; `None` for a catalogue model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) custom_model: Option<crate::catalogue::CustomModel>,
}

impl TrainingJob {
    pub fn id(&self) -> Option<&JobId> {
        self.job_id.as_ref()
    }

    /// `None` until the job is created.
    /// The tenant's registered model this job trains against, if it is one.
    pub fn custom_model(&self) -> Option<&crate::catalogue::CustomModel> {
        self.custom_model.as_ref()
    }

    /// The job's base model: its registered model, or the catalogue's.
    pub fn base_model(&self, catalogue: &Catalogue) -> Option<crate::catalogue::BaseModel> {
        match &self.custom_model {
            Some(m) => Some(m.as_base_model()),
            None => catalogue
                .base_model(&self.spec.as_deref()?.base_model)
                .cloned(),
        }
    }

    pub fn state(&self) -> Option<JobState> {
        Some(match self.phase {
            Phase::New => return None,
            Phase::Pending => JobState::Pending,
            Phase::Submitted => JobState::Submitted,
            Phase::Processing => JobState::Processing,
            Phase::InReview => JobState::InReview,
            Phase::Approved => JobState::Approved,
            Phase::Published => JobState::Published,
            Phase::Failed(_) => JobState::Failed,
        })
    }

    pub fn is_terminal(&self) -> bool {
        self.state().is_some_and(JobState::is_terminal)
    }

    pub fn failure(&self) -> Option<&Failure> {
        match &self.phase {
            Phase::Failed(f) => Some(f),
            _ => None,
        }
    }

    pub fn spec(&self) -> Option<&JobSpec> {
        self.spec.as_deref()
    }

    /// Resolved parameters (defaults, profile and the client's values).
    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at
    }

    pub fn dataset(&self) -> Option<&AdmittedDataset> {
        self.dataset.as_ref()
    }

    pub fn workflow(&self) -> Option<&WorkflowSpec> {
        self.workflow.as_deref()
    }

    pub fn steps(&self) -> &BTreeMap<StepId, StepRecord> {
        &self.steps
    }

    pub fn step(&self, id: &StepId) -> Option<&StepRecord> {
        self.steps.get(id)
    }

    /// The LoRAs and samples saved at each epoch's end, by epoch.
    pub fn epochs(&self) -> &BTreeMap<u32, EpochOutput> {
        &self.outputs.epochs
    }

    /// Everything a reviewer can look at: the epochs, and what was saved or
    /// sampled on request between them.
    pub fn reviewables(&self) -> &Reviewables {
        &self.outputs
    }

    pub fn approved(&self) -> Option<&JobApproved> {
        self.approved.as_ref()
    }

    pub fn published(&self) -> Option<&Artifact> {
        self.published.as_ref()
    }

    /// The parameters a step's next attempt runs with: the job's, with the
    /// step's retry adjustments applied in order.
    pub fn step_params(&self, step: &StepId) -> Params {
        let mut p = Params::clone(&self.params);
        if let Some(rec) = self.steps.get(step) {
            for a in &rec.adjustments {
                p.insert(a.param.clone(), a.to.clone());
            }
        }
        p
    }

    /// The step and attempt that hold `lease`.
    pub fn find_lease(&self, lease: &LeaseId) -> Option<(&StepId, &StepRecord, &Attempt)> {
        self.steps
            .iter()
            .find_map(|(id, rec)| rec.attempt(lease).map(|a| (id, rec, a)))
    }

    /// What the executor holding `lease` needs to run its step: the job's
    /// spec, the step's effective parameters, the artifacts of every step it
    /// depends on (directly or not), and the epochs so far. `None` unless the
    /// lease is the step's current one.
    pub fn assignment(&self, lease: &LeaseId, catalogue: &Catalogue) -> Option<StepAssignment> {
        let (step_id, rec, attempt) = self.find_lease(lease)?;
        if rec.current_lease() != Some(lease) {
            return None;
        }
        let spec = self.spec.as_deref()?;
        let dag = self.dag()?;
        let step = dag.step(step_id)?;
        let inputs = dag
            .topological()
            .filter(|s| dag.is_ancestor(&s.id, step_id))
            .flat_map(|s| {
                self.steps
                    .get(&s.id)
                    .map(|r| r.artifacts.clone())
                    .unwrap_or_default()
            })
            .collect();
        Some(StepAssignment {
            job_id: self.job_id.clone()?,
            step_id: step_id.clone(),
            kind: rec.kind.clone(),
            attempt: attempt.number,
            lease_id: lease.clone(),
            params: self.step_params(step_id),
            step_params: step.params.clone(),
            base_model: spec.base_model.clone(),
            engine: spec.engine,
            model_family: self.base_model(catalogue).map(|m| m.family),
            base_model_uri: self.custom_model.as_ref().map(|m| m.uri.clone()),
            dataset: spec.dataset.clone(),
            sample_prompts: spec.sample_prompts.clone(),
            naming: spec.naming.clone(),
            inputs,
            epochs: self.outputs.in_order().into_iter().cloned().collect(),
            approved_epoch: self.approved.as_ref().map(|a| a.epoch),
            approved_step: self.approved.as_ref().and_then(|a| a.step),
        })
    }

    pub(crate) fn dag(&self) -> Option<Dag> {
        self.workflow.as_deref().and_then(Dag::build)
    }

    pub(crate) fn progress_map(&self) -> BTreeMap<StepId, Progress> {
        self.steps
            .iter()
            .map(|(id, rec)| {
                let p = match rec.status {
                    StepStatus::Waiting => Progress::Waiting,
                    StepStatus::Completed => Progress::Done,
                    _ => Progress::Started,
                };
                (id.clone(), p)
            })
            .collect()
    }

    /// Decide which events `command` produces, without changing `self`. This
    /// is the whole domain logic; [`Aggregate::handle`] only forwards to it.
    pub fn decide(
        &self,
        command: JobCommand,
        services: &JobServices,
    ) -> Result<Vec<JobEvent>, Error> {
        handle::decide(self, command, services)
    }

    fn step_mut(&mut self, id: &StepId) -> &mut StepRecord {
        self.steps
            .get_mut(id)
            .unwrap_or_else(|| panic!("event names step {id}, which the workflow does not have"))
    }

    fn end_open_steps(&mut self) {
        for rec in self.steps.values_mut() {
            if !matches!(rec.status, StepStatus::Completed | StepStatus::Failed) {
                rec.status = StepStatus::Dropped;
            }
        }
    }

    fn fail(&mut self, reason: FailureReason, message: String) {
        self.end_open_steps();
        self.phase = Phase::Failed(Failure { reason, message });
    }

    fn end_attempt(&mut self, step: &StepId, lease: &LeaseId, outcome: AttemptOutcome) {
        let rec = self.step_mut(step);
        rec.status = match outcome {
            AttemptOutcome::Completed => StepStatus::Completed,
            _ => StepStatus::Failed,
        };
        if let Some(a) = rec.attempt_mut(lease) {
            a.outcome = Some(outcome);
        }
    }
}

impl Aggregate for TrainingJob {
    const TYPE: &'static str = "TrainingJob";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = Error;
    type Services = JobServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command, services)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            JobEvent::JobCreated(e) => {
                self.job_id = Some(e.job_id);
                self.spec = Some(Arc::new(e.spec));
                self.params = Arc::new(e.params);
                self.created_at = Some(e.created_at);
                self.custom_model = e.custom_model;
                self.phase = Phase::Pending;
            }
            JobEvent::JobSubmitted(e) => {
                self.steps = e
                    .workflow
                    .steps
                    .iter()
                    .map(|s| (s.id.clone(), StepRecord::new(s.kind.clone())))
                    .collect();
                self.dataset = Some(e.dataset);
                self.workflow = Some(Arc::new(e.workflow));
                self.phase = Phase::Submitted;
            }
            JobEvent::StepQueued(e) => {
                self.step_mut(&e.step_id).status = StepStatus::Queued {
                    attempt: e.attempt,
                    queued_at: e.queued_at,
                    not_before: e.not_before,
                };
            }
            JobEvent::StepLeased(e) => {
                let rec = self.step_mut(&e.step_id);
                rec.status = StepStatus::Leased {
                    attempt: e.attempt,
                    lease_id: e.lease_id.clone(),
                    executor_id: e.executor_id.clone(),
                    deadline: e.deadline,
                    close_by: e.close_by,
                };
                rec.progress = None;
                rec.attempts.push(Attempt {
                    number: e.attempt,
                    lease_id: e.lease_id,
                    executor_id: e.executor_id,
                    instance: e.instance,
                    leased_at: e.leased_at,
                    outcome: None,
                });
                if self.phase == Phase::Submitted {
                    self.phase = Phase::Processing;
                }
            }
            JobEvent::StepProgressed(e) => {
                let rec = self.step_mut(&e.step_id);
                if let StepStatus::Leased { deadline, .. } = &mut rec.status {
                    *deadline = e.deadline;
                }
                let mut progress = e.progress;
                let made = std::mem::take(&mut progress.outputs);
                rec.progress = Some(progress);
                for out in made {
                    self.outputs.absorb(out);
                }
            }
            JobEvent::StepCompleted(e) => {
                self.end_attempt(&e.step_id, &e.lease_id, AttemptOutcome::Completed);
                let rec = self.step_mut(&e.step_id);
                rec.artifacts = e.artifacts;
                rec.outputs = e.outputs;
                for out in e.epochs {
                    self.outputs.absorb(out);
                }
            }
            JobEvent::StepFailed(e) => {
                self.end_attempt(&e.step_id, &e.lease_id, AttemptOutcome::Failed(e.error));
            }
            JobEvent::LeaseExpired(e) => {
                self.end_attempt(&e.step_id, &e.lease_id, AttemptOutcome::Expired(e.cause));
            }
            JobEvent::StepRetried(e) => {
                self.step_mut(&e.step_id).adjustments.extend(e.adjustments);
            }
            JobEvent::ReviewRequested(e) => {
                self.step_mut(&e.step_id).status = StepStatus::AwaitingReview;
                self.phase = Phase::InReview;
            }
            JobEvent::JobApproved(e) => {
                for rec in self.steps.values_mut() {
                    if rec.status == StepStatus::AwaitingReview {
                        rec.status = StepStatus::Completed;
                    }
                }
                self.approved = Some(e);
                self.phase = Phase::Approved;
            }
            JobEvent::JobRejected(e) => {
                self.fail(FailureReason::Rejected, e.reason);
            }
            JobEvent::JobPublished(e) => {
                self.published = Some(e.artifact);
                self.phase = Phase::Published;
            }
            JobEvent::JobFailed(e) => {
                self.fail(e.reason, e.message);
            }
            JobEvent::JobCancelled(e) => {
                self.fail(FailureReason::Cancelled, e.reason);
            }
        }
    }
}

/// Rebuild a job from its events; what a store does on load.
pub fn replay(events: impl IntoIterator<Item = JobEvent>) -> TrainingJob {
    let mut job = TrainingJob::default();
    for e in events {
        job.apply(e);
    }
    job
}
