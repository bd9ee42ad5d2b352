//! Leasing a step to an executor, heartbeats, and expiry (at a deadline, or
//! at once when the executor restarted).

use chrono::Duration;

use super::Decision;
use super::outcome::{AttemptEnd, check_epochs, end_attempt};
use crate::ids::{LeaseId, StepId};
use crate::job::commands::{
    ExpireLease, ExpireQueuedStep, ExpireRestartedLease, Heartbeat, LeaseStep,
};
use crate::job::error::Error;
use crate::job::events::{JobEvent, StepLeased, StepProgressed};
use crate::job::state::{FailureReason, JobState};
use crate::job::step::{ExpiryCause, StepStatus};

/// States in which steps run: before review, and the publish step after approval.
pub(super) const RUNNING: [JobState; 3] = [
    JobState::Submitted,
    JobState::Processing,
    JobState::Approved,
];

fn to_chrono(d: std::time::Duration) -> Duration {
    Duration::from_std(d).unwrap_or(Duration::MAX)
}

pub(super) fn lease(d: &mut Decision, c: LeaseStep) -> Result<(), Error> {
    d.require(&RUNNING)?;
    let spec = d
        .step_spec(&c.step_id)
        .ok_or_else(|| Error::UnknownStep {
            step: c.step_id.clone(),
        })?
        .clone();
    let rec = &d.job.steps[&c.step_id];
    let StepStatus::Queued {
        attempt,
        not_before,
        ..
    } = rec.status
    else {
        return Err(Error::StepNotReady {
            step: c.step_id,
            action: "leased",
            status: rec.status.name(),
        });
    };
    if d.now < not_before {
        return Err(Error::StepNotDue {
            step: c.step_id,
            not_before,
        });
    }
    if d.used_leases().contains(&c.lease_id) || c.lease_id.as_str().is_empty() {
        return Err(Error::LeaseIdReused {
            lease_id: c.lease_id,
        });
    }
    d.emit(JobEvent::StepLeased(StepLeased {
        step_id: c.step_id,
        kind: spec.kind,
        attempt,
        lease_id: c.lease_id,
        executor_id: c.executor_id,
        instance: c.instance,
        leased_at: d.now,
        deadline: d.now + to_chrono(spec.timeouts.heartbeat),
        close_by: d.now + to_chrono(spec.timeouts.start_to_close),
    }));
    Ok(())
}

/// The step holding `lease` as its current lease, or the typed reason it is not.
pub(super) fn current(d: &Decision, lease: &LeaseId) -> Result<(StepId, u32), Error> {
    let (step, rec, attempt) = d.job.find_lease(lease).ok_or_else(|| Error::UnknownLease {
        lease_id: lease.clone(),
    })?;
    if rec.current_lease() != Some(lease) {
        return Err(Error::StaleLease {
            lease_id: lease.clone(),
            step: step.clone(),
        });
    }
    Ok((step.clone(), attempt.number))
}

pub(super) fn heartbeat(d: &mut Decision, c: Heartbeat) -> Result<(), Error> {
    d.require(&RUNNING)?;
    let (step_id, attempt) = current(d, &c.lease_id)?;
    if let Some(problem) = c.progress.problem() {
        return Err(Error::InvalidProgress(problem));
    }
    let mut v = crate::validation::Violations::default();
    check_epochs(&c.progress.outputs, "progress.outputs", &mut v);
    if !v.is_empty() {
        return Err(Error::InvalidOutput(v));
    }
    let spec = d
        .step_spec(&step_id)
        .expect("leased step is in the workflow");
    let deadline = d.now + to_chrono(spec.timeouts.heartbeat);
    d.emit(JobEvent::StepProgressed(StepProgressed {
        step_id,
        attempt,
        lease_id: c.lease_id,
        progress: c.progress,
        deadline,
        at: d.now,
    }));
    Ok(())
}

pub(super) fn expire_lease(d: &mut Decision, c: ExpireLease) -> Result<(), Error> {
    d.require(&RUNNING)?;
    let (step_id, _) = current(d, &c.lease_id)?;
    let StepStatus::Leased {
        deadline, close_by, ..
    } = d.job.steps[&step_id].status
    else {
        unreachable!("current() checked the step is leased")
    };
    let cause = if d.now >= close_by {
        ExpiryCause::StartToCloseTimeout
    } else if d.now >= deadline {
        ExpiryCause::HeartbeatTimeout
    } else {
        return Err(Error::LeaseNotExpired {
            lease_id: c.lease_id,
            deadline: deadline.min(close_by),
        });
    };
    end_attempt(d, step_id, c.lease_id, AttemptEnd::Expired(cause));
    Ok(())
}

/// End a lease whose executor registered again from another process. The
/// attempt counts (a step that kills its worker each time must not loop
/// forever), but the retry waits no backoff: the executor is back now.
pub(super) fn expire_restarted(d: &mut Decision, c: ExpireRestartedLease) -> Result<(), Error> {
    d.require(&RUNNING)?;
    let (step_id, _) = current(d, &c.lease_id)?;
    let attempt = d.job.steps[&step_id]
        .attempt(&c.lease_id)
        .expect("a current lease has an attempt");
    if attempt.executor_id != c.executor_id || attempt.instance.as_ref() == Some(&c.instance) {
        return Err(Error::LeaseHolderLive {
            lease_id: c.lease_id,
            executor_id: attempt.executor_id.clone(),
            instance: attempt.instance.clone(),
        });
    }
    end_attempt(d, step_id, c.lease_id, AttemptEnd::Restarted(c.instance));
    Ok(())
}

pub(super) fn expire_queued(d: &mut Decision, c: ExpireQueuedStep) -> Result<(), Error> {
    d.require(&RUNNING)?;
    let spec = d.step_spec(&c.step_id).ok_or_else(|| Error::UnknownStep {
        step: c.step_id.clone(),
    })?;
    let limit = spec.timeouts.schedule_to_start;
    let rec = &d.job.steps[&c.step_id];
    let StepStatus::Queued { queued_at, .. } = rec.status else {
        return Err(Error::StepNotReady {
            step: c.step_id,
            action: "expired",
            status: rec.status.name(),
        });
    };
    match limit {
        Some(limit) if d.now >= queued_at + to_chrono(limit) => {
            let message = match &c.unservable {
                // The reason names what is missing, as `waiting_for` did.
                Some(u) => format!(
                    "step {} was not started within its schedule-to-start timeout of {}s: {u}",
                    c.step_id,
                    limit.as_secs()
                ),
                None => format!(
                    "step {} waited longer than its schedule-to-start timeout of {}s for an executor",
                    c.step_id,
                    limit.as_secs()
                ),
            };
            d.fail_job(FailureReason::ScheduleTimeout, message, Some(c.step_id));
            Ok(())
        }
        _ => Err(Error::QueueNotExpired { step: c.step_id }),
    }
}
