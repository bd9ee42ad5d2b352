//! How an attempt ends: completion, failure, or expiry; and what follows
//! (the next steps, a retry with backoff, or the job's failure).

use chrono::Duration;
use sha2::Digest;

use super::Decision;
use super::lease::{RUNNING, current};
use crate::artifact::{Artifact, ArtifactKind, EpochOutput};
use crate::catalogue::ParamValue;
use crate::ids::{InstanceId, LeaseId, StepId};
use crate::job::commands::{CompleteStep, FailStep};
use crate::job::error::Error;
use crate::job::events::*;
use crate::job::state::FailureReason;
use crate::job::step::{AttemptOutcome, ExpiryCause, ParamAdjustment, StepError, StepErrorKind};
use crate::validation::Violations;
use crate::workflow::StepKind;

fn check_artifacts(artifacts: &[Artifact], field: &str, v: &mut Violations) {
    for (i, a) in artifacts.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if a.uri.trim().is_empty() {
            v.push(
                format!("{f}.uri"),
                format!("artifact {:?} has no uri", a.name),
            );
        }
        let hex = a.sha256.as_str();
        if hex.len() != 64
            || !hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            v.push(
                format!("{f}.sha256"),
                format!(
                    "artifact {:?} has sha256 {hex:?}, expected 64 lower-case hex digits",
                    a.name
                ),
            );
        }
    }
}

/// Checks reported epochs: their artifacts, losses, and that a report made
/// on request names the step it was made at (its only identifier).
pub(super) fn check_epochs(epochs: &[EpochOutput], field: &str, v: &mut Violations) {
    for (i, e) in epochs.iter().enumerate() {
        check_artifacts(e.lora.as_slice(), &format!("{field}[{i}].lora"), v);
        check_artifacts(&e.samples, &format!("{field}[{i}].samples"), v);
        if e.loss.is_some_and(|l| !l.is_finite()) {
            v.push(format!("{field}[{i}].loss"), "loss is not a finite number");
        }
        if let Some(l) = e.validation_loss.filter(|l| !l.is_finite() || *l < 0.0) {
            v.push(
                format!("{field}[{i}].validation_loss"),
                format!("validation loss {l} must be a non-negative number"),
            );
        }
        if e.requested && e.step.is_none() {
            v.push(
                format!("{field}[{i}].step"),
                "an output made on request must name the step it was made at",
            );
        }
    }
}

pub(super) fn complete(d: &mut Decision, c: CompleteStep) -> Result<(), Error> {
    // A repeat of a completion that was recorded is answered as a success and
    // writes nothing: executors retry calls whose answer they did not see.
    if let Some((_, _, attempt)) = d.job.find_lease(&c.lease_id)
        && attempt.outcome == Some(AttemptOutcome::Completed)
    {
        return Ok(());
    }
    d.require(&RUNNING)?;
    let (step_id, attempt) = current(d, &c.lease_id)?;
    let kind = d.job.steps[&step_id].kind.clone();

    let mut v = Violations::default();
    check_artifacts(&c.artifacts, "artifacts", &mut v);
    check_epochs(&c.epochs, "epochs", &mut v);
    let published: Vec<_> = c
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactKind::Published)
        .cloned()
        .collect();
    if kind.is(StepKind::PUBLISH) && published.len() != 1 {
        v.push(
            "artifacts",
            format!(
                "a publish step must return exactly one artifact of kind published, got {}",
                published.len()
            ),
        );
    }
    if !v.is_empty() {
        return Err(Error::InvalidOutput(v));
    }

    d.emit(JobEvent::StepCompleted(StepCompleted {
        step_id,
        kind: kind.clone(),
        attempt,
        lease_id: c.lease_id,
        outputs: c.outputs,
        artifacts: c.artifacts,
        epochs: c.epochs,
        completed_at: d.now,
    }));
    if kind.is(StepKind::PUBLISH) {
        let epoch = d
            .job
            .approved
            .as_ref()
            .map(|a| a.epoch)
            .expect("publish runs after approval");
        let artifact = published.into_iter().next().expect("checked above");
        d.emit(JobEvent::JobPublished(JobPublished {
            epoch,
            artifact,
            published_at: d.now,
        }));
    } else {
        d.queue_ready();
    }
    Ok(())
}

pub(super) fn fail(d: &mut Decision, c: FailStep) -> Result<(), Error> {
    if let Some((_, _, attempt)) = d.job.find_lease(&c.lease_id)
        && matches!(attempt.outcome, Some(AttemptOutcome::Failed(_)))
    {
        return Ok(());
    }
    d.require(&RUNNING)?;
    let (step_id, _) = current(d, &c.lease_id)?;
    end_attempt(d, step_id, c.lease_id, AttemptEnd::Failed(c.error));
    Ok(())
}

pub(super) enum AttemptEnd {
    Failed(StepError),
    Expired(ExpiryCause),
    /// The executor registered again as this new process.
    Restarted(InstanceId),
}

/// Record the end of an unsuccessful attempt, then retry or fail the job.
pub(super) fn end_attempt(d: &mut Decision, step_id: StepId, lease_id: LeaseId, end: AttemptEnd) {
    let rec = &d.job.steps[&step_id];
    let attempt = rec
        .attempt(&lease_id)
        .expect("current lease has an attempt")
        .clone();
    let kind = rec.kind.clone();
    match &end {
        AttemptEnd::Failed(error) => d.emit(JobEvent::StepFailed(StepFailed {
            step_id: step_id.clone(),
            kind: kind.clone(),
            attempt: attempt.number,
            lease_id,
            error: error.clone(),
            failed_at: d.now,
        })),
        AttemptEnd::Expired(cause) => d.emit(JobEvent::LeaseExpired(LeaseExpired {
            step_id: step_id.clone(),
            attempt: attempt.number,
            lease_id,
            executor_id: attempt.executor_id.clone(),
            cause: *cause,
            restarted_as: None,
            expired_at: d.now,
        })),
        AttemptEnd::Restarted(instance) => d.emit(JobEvent::LeaseExpired(LeaseExpired {
            step_id: step_id.clone(),
            attempt: attempt.number,
            lease_id,
            executor_id: attempt.executor_id.clone(),
            cause: ExpiryCause::ExecutorRestarted,
            restarted_as: Some(instance.clone()),
            expired_at: d.now,
        })),
    }

    let spec = d
        .step_spec(&step_id)
        .expect("step is in the workflow")
        .clone();
    let max_attempts = spec
        .retry
        .max_attempts
        .min(d.services.status.get().max_retries + 1);
    let what = match &end {
        AttemptEnd::Failed(e) => format!("failed ({}): {}", e.kind, e.message),
        AttemptEnd::Expired(ExpiryCause::HeartbeatTimeout) => {
            format!("lost its executor {} (no heartbeat)", attempt.executor_id)
        }
        AttemptEnd::Expired(ExpiryCause::StartToCloseTimeout) => {
            "ran past its start-to-close timeout".to_owned()
        }
        AttemptEnd::Expired(ExpiryCause::ExecutorRestarted) | AttemptEnd::Restarted(_) => {
            format!(
                "lost its executor {} (it restarted as a new process)",
                attempt.executor_id
            )
        }
    };
    let story = format!(
        "step {step_id} {what} on attempt {} of {max_attempts}",
        attempt.number
    );

    let mut adjustments = Vec::new();
    if let AttemptEnd::Failed(e) = &end {
        if !e.retryable || e.kind == StepErrorKind::InvalidInput {
            d.fail_job(
                final_reason(&kind, &end, max_attempts),
                story,
                Some(step_id),
            );
            return;
        }
        if e.kind == StepErrorKind::OutOfMemory
            && kind.is(StepKind::TRAIN)
            && auto_adjust(d, &step_id)
        {
            match oom_adjustment(d, &step_id) {
                Some(adj) => adjustments.push(adj),
                None => {
                    d.fail_job(
                        FailureReason::OutOfMemory,
                        format!("{story}; batch_size and resolution are already at their minimum"),
                        Some(step_id),
                    );
                    return;
                }
            }
        }
    }
    if attempt.number >= max_attempts {
        d.fail_job(
            final_reason(&kind, &end, max_attempts),
            story,
            Some(step_id),
        );
        return;
    }

    let next_attempt = attempt.number + 1;
    // The executor of a restart is back already: waiting helps nobody.
    let backoff = match &end {
        AttemptEnd::Restarted(_) => std::time::Duration::ZERO,
        _ => spec
            .retry
            .backoff(next_attempt, jitter_seed(d, &step_id, next_attempt)),
    };
    let not_before = d.now + Duration::from_std(backoff).unwrap_or(Duration::MAX);
    let job = d.job.spec.as_deref().expect("a running job has a spec");
    let (tenant, priority) = (job.tenant.clone(), job.priority);
    d.emit(JobEvent::StepRetried(StepRetried {
        step_id: step_id.clone(),
        next_attempt,
        max_attempts,
        backoff_ms: backoff.as_millis() as u64,
        adjustments,
    }));
    d.emit(JobEvent::StepQueued(StepQueued {
        step_id,
        kind: spec.kind,
        attempt: next_attempt,
        tenant,
        priority,
        requires: spec.requires,
        queued_at: d.now,
        not_before,
    }));
}

/// Why the job fails when this attempt was its step's last. A lease that
/// expired on the last of several attempts exhausted the retries; with a
/// single attempt allowed, there was nothing to retry and the executor was
/// simply lost.
fn final_reason(kind: &StepKind, end: &AttemptEnd, max_attempts: u32) -> FailureReason {
    match end {
        _ if kind.is(StepKind::PUBLISH) => FailureReason::PublishFailed,
        AttemptEnd::Expired(_) | AttemptEnd::Restarted(_) if max_attempts > 1 => {
            FailureReason::RetriesExhausted
        }
        AttemptEnd::Expired(_) | AttemptEnd::Restarted(_) => FailureReason::ExecutorLost,
        AttemptEnd::Failed(e) => match e.kind {
            StepErrorKind::OutOfMemory => FailureReason::OutOfMemory,
            StepErrorKind::InvalidInput
                if kind.is(StepKind::VALIDATE_DATASET) || kind.is(StepKind::LABEL) =>
            {
                FailureReason::InvalidDataset
            }
            _ if e.retryable => FailureReason::RetriesExhausted,
            _ => FailureReason::StepFailed,
        },
    }
}

/// A deterministic stand-in for randomness: the jitter of a retry is a
/// function of job, step and attempt, so replaying the log decides the same.
fn jitter_seed(d: &Decision, step: &StepId, attempt: u32) -> u64 {
    let job = d
        .job
        .job_id
        .as_ref()
        .map(|j| j.as_str())
        .unwrap_or_default();
    let digest = sha2::Sha256::digest(format!("{job}/{step}/{attempt}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn auto_adjust(d: &Decision, step: &StepId) -> bool {
    d.job
        .step_params(step)
        .get("auto_adjust")
        .and_then(ParamValue::as_bool)
        .unwrap_or(false)
}

/// Halve the batch size, or when it is at its minimum, the resolution, within
/// the schema's bounds for this model and engine.
fn oom_adjustment(d: &Decision, step: &StepId) -> Option<ParamAdjustment> {
    let spec = d.job.spec.as_deref()?;
    let model = d.job.base_model(&d.services.catalogue)?;
    let model = &model;
    let params = d.job.step_params(step);
    // A halved value is rounded down to the parameter's step (the engine's
    // `multiple_of`), else to `unit(value)`.
    let lower = |name: &str, unit: fn(i64) -> i64| -> Option<ParamAdjustment> {
        let current = params.get(name)?.as_i64()?;
        let p = d
            .services
            .catalogue
            .schema
            .effective(name, model, spec.engine)?;
        let half = current / 2;
        let step = p
            .multiple_of
            .map(i64::from)
            .unwrap_or_else(|| unit(half))
            .max(1);
        let mut min = p.min.map(|m| m.ceil() as i64).unwrap_or(1).max(1);
        min = (min + step - 1) / step * step;
        let next = (half / step * step).max(min);
        (next < current).then(|| ParamAdjustment {
            param: name.to_owned(),
            from: ParamValue::Int(current),
            to: ParamValue::Int(next),
        })
    };
    lower("batch_size", |_| 1).or_else(|| lower("resolution", |r| if r >= 64 { 64 } else { 8 }))
}
