//! Command handlers: one file per group of commands. Each reads the job,
//! checks the command, and emits events through a [`Decision`], which applies
//! them to a scratch copy so later decisions in the same command see earlier
//! events (a completion that makes the next step ready, say).

mod create;
mod lease;
mod outcome;
mod review;
mod terminal;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;

use super::aggregate::{JobServices, Phase, TrainingJob};
use super::commands::JobCommand;
use super::error::Error;
use super::events::*;
use super::state::{FailureReason, JobState};
use crate::ids::StepId;
use crate::workflow::StepSpec;

pub(crate) struct Decision<'a> {
    pub job: TrainingJob,
    pub events: Vec<JobEvent>,
    pub services: &'a JobServices,
    pub now: DateTime<Utc>,
    pub command: &'static str,
}

impl<'a> Decision<'a> {
    pub fn emit(&mut self, event: JobEvent) {
        self.job.apply(event.clone());
        self.events.push(event);
    }

    /// The typed refusal for this command in the job's current state.
    pub fn illegal(&self) -> Error {
        match self.job.state() {
            None => Error::NotFound,
            Some(state) => Error::IllegalTransition {
                command: self.command,
                state,
            },
        }
    }

    /// Refuse unless the job is in one of `states`.
    pub fn require(&self, states: &[JobState]) -> Result<(), Error> {
        match self.job.state() {
            Some(s) if states.contains(&s) => Ok(()),
            _ => Err(self.illegal()),
        }
    }

    pub fn step_spec(&self, id: &StepId) -> Option<&StepSpec> {
        self.job.workflow.as_deref()?.step(id)
    }

    /// Queue every step whose dependencies are now done; open the review
    /// when its gate becomes ready.
    pub fn queue_ready(&mut self) {
        let Some(dag) = self.job.dag() else { return };
        let spec = self
            .job
            .spec
            .as_deref()
            .expect("a submitted job has a spec");
        let (tenant, priority) = (spec.tenant.clone(), spec.priority);
        let ready: Vec<StepSpec> = dag
            .ready(&self.job.progress_map())
            .into_iter()
            .cloned()
            .collect();
        for step in ready {
            if step.kind.is_gate() {
                self.open_review(step.id);
            } else {
                self.emit(JobEvent::StepQueued(StepQueued {
                    step_id: step.id,
                    kind: step.kind,
                    attempt: 1,
                    tenant: tenant.clone(),
                    priority,
                    requires: step.requires,
                    queued_at: self.now,
                    not_before: self.now,
                }));
            }
        }
    }

    fn open_review(&mut self, gate: StepId) {
        let epochs: Vec<_> = self.job.outputs.with_lora().into_iter().cloned().collect();
        if epochs.is_empty() {
            self.fail_job(
                FailureReason::NoOutput,
                "the workflow reached review without any LoRA epoch to review".to_owned(),
                Some(gate),
            );
        } else {
            self.emit(JobEvent::ReviewRequested(ReviewRequested {
                step_id: gate,
                epochs,
                requested_at: self.now,
            }));
        }
    }

    pub fn fail_job(&mut self, reason: FailureReason, message: String, step_id: Option<StepId>) {
        self.emit(JobEvent::JobFailed(JobFailed {
            reason,
            message,
            step_id,
            failed_at: self.now,
        }));
    }

    /// Lease ids already used by this job.
    pub fn used_leases(&self) -> BTreeSet<&crate::ids::LeaseId> {
        self.job
            .steps
            .values()
            .flat_map(|r| r.attempts.iter().map(|a| &a.lease_id))
            .collect()
    }
}

pub(crate) fn decide(
    job: &TrainingJob,
    command: JobCommand,
    services: &JobServices,
) -> Result<Vec<JobEvent>, Error> {
    let mut d = Decision {
        job: job.clone(),
        events: Vec::new(),
        services,
        now: services.clock.now(),
        command: command.name(),
    };
    match command {
        JobCommand::Create(c) => create::create(&mut d, c)?,
        JobCommand::Submit(c) => create::submit(&mut d, c)?,
        JobCommand::LeaseStep(c) => lease::lease(&mut d, c)?,
        JobCommand::Heartbeat(c) => lease::heartbeat(&mut d, c)?,
        JobCommand::ExpireLease(c) => lease::expire_lease(&mut d, c)?,
        JobCommand::ExpireRestartedLease(c) => lease::expire_restarted(&mut d, c)?,
        JobCommand::ExpireQueuedStep(c) => lease::expire_queued(&mut d, c)?,
        JobCommand::CompleteStep(c) => outcome::complete(&mut d, c)?,
        JobCommand::FailStep(c) => outcome::fail(&mut d, c)?,
        JobCommand::Approve(c) => review::approve(&mut d, c)?,
        JobCommand::Reject(c) => review::reject(&mut d, c)?,
        JobCommand::Cancel(c) => terminal::cancel(&mut d, c)?,
        JobCommand::Fail(c) => terminal::fail(&mut d, c)?,
    }
    debug_assert!(
        !job.is_terminal() || d.events.is_empty(),
        "a terminal job emitted events"
    );
    Ok(d.events)
}

/// True when the phase is `Failed` for this reason.
pub(crate) fn failed_with(job: &TrainingJob, reason: FailureReason) -> bool {
    matches!(&job.phase, Phase::Failed(f) if f.reason == reason)
}
