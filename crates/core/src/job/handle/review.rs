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
    let outputs = &d.job.outputs;
    let chosen = match c.step {
        Some(step) => outputs.at_step(step).ok_or_else(|| Error::UnknownSave {
            step,
            available: outputs.with_lora().iter().filter_map(|e| e.step).collect(),
        })?,
        None => outputs
            .epochs
            .get(&c.epoch)
            .filter(|e| e.lora.is_some())
            .ok_or_else(|| Error::UnknownEpoch {
                epoch: c.epoch,
                available: outputs
                    .epochs
                    .values()
                    .filter(|e| e.lora.is_some())
                    .map(|e| e.epoch)
                    .collect(),
                steps: outputs
                    .requested
                    .values()
                    .filter(|e| e.lora.is_some())
                    .filter_map(|e| e.step)
                    .collect(),
            })?,
    };
    let epoch = chosen.epoch;
    let lora = chosen
        .lora
        .clone()
        .expect("only entries with a LoRA are chosen");
    d.emit(JobEvent::JobApproved(JobApproved {
        epoch,
        step: c.step,
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
