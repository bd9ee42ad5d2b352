//! The review gate: approve an epoch, or reject the result.

use super::Decision;
use crate::job::commands::{ApproveJob, RejectJob};
use crate::job::error::Error;
use crate::job::events::{JobApproved, JobEvent, JobRejected};
use crate::job::state::JobState;

pub(super) fn approve(d: &mut Decision, c: ApproveJob) -> Result<(), Error> {
    d.require(&[JobState::InReview])?;
    if c.approved_by.trim().is_empty() {
        return Err(Error::MissingField {
            field: "approved_by",
        });
    }
    let lora = d
        .job
        .epochs
        .get(&c.epoch)
        .and_then(|e| e.lora.clone())
        .ok_or_else(|| Error::UnknownEpoch {
            epoch: c.epoch,
            available: d
                .job
                .epochs
                .values()
                .filter(|e| e.lora.is_some())
                .map(|e| e.epoch)
                .collect(),
        })?;
    d.emit(JobEvent::JobApproved(JobApproved {
        epoch: c.epoch,
        lora,
        approved_by: c.approved_by,
        approved_at: d.now,
    }));
    d.queue_ready();
    Ok(())
}

pub(super) fn reject(d: &mut Decision, c: RejectJob) -> Result<(), Error> {
    d.require(&[JobState::InReview])?;
    if c.reason.trim().is_empty() {
        return Err(Error::MissingField { field: "reason" });
    }
    if c.rejected_by.trim().is_empty() {
        return Err(Error::MissingField {
            field: "rejected_by",
        });
    }
    d.emit(JobEvent::JobRejected(JobRejected {
        reason: c.reason,
        rejected_by: c.rejected_by,
        rejected_at: d.now,
    }));
    Ok(())
}
