//! Cancel and fail: allowed from every state that is not terminal.

use super::{Decision, failed_with};
use crate::job::commands::{CancelJob, FailJob};
use crate::job::error::Error;
use crate::job::events::{JobCancelled, JobEvent, RunningLease};
use crate::job::state::{FailureReason, JobState};
use crate::job::step::StepStatus;

const OPEN: [JobState; 5] = [
    JobState::Pending,
    JobState::Submitted,
    JobState::Processing,
    JobState::InReview,
    JobState::Approved,
];

pub(super) fn cancel(d: &mut Decision, c: CancelJob) -> Result<(), Error> {
    // Cancelling a cancelled job is a repeat, not a mistake: nothing to do.
    if failed_with(&d.job, FailureReason::Cancelled) {
        return Ok(());
    }
    d.require(&OPEN)?;
    if c.cancelled_by.trim().is_empty() {
        return Err(Error::MissingField {
            field: "cancelled_by",
        });
    }
    let running = d
        .job
        .steps
        .iter()
        .filter_map(|(step_id, rec)| match &rec.status {
            StepStatus::Leased {
                lease_id,
                executor_id,
                ..
            } => Some(RunningLease {
                step_id: step_id.clone(),
                lease_id: lease_id.clone(),
                executor_id: executor_id.clone(),
            }),
            _ => None,
        })
        .collect();
    let reason = if c.reason.trim().is_empty() {
        "cancelled".to_owned()
    } else {
        c.reason
    };
    d.emit(JobEvent::JobCancelled(JobCancelled {
        reason,
        cancelled_by: c.cancelled_by,
        running,
        cancelled_at: d.now,
    }));
    Ok(())
}

pub(super) fn fail(d: &mut Decision, c: FailJob) -> Result<(), Error> {
    d.require(&OPEN)?;
    if c.message.trim().is_empty() {
        return Err(Error::MissingField { field: "message" });
    }
    d.fail_job(c.reason, c.message, None);
    Ok(())
}
