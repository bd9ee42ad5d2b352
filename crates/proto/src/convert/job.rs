//! The `Job` resource, built from a `TrainingJob`.
//!
//! The aggregate knows the job's own facts; a few fields of the resource
//! come from elsewhere (the event store's sequence and global position, the
//! queue view's position and estimate), so the caller passes them in
//! [`JobMeta`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use loraflow_core::job::step::{AttemptOutcome, StepRecord};
use loraflow_core::job::{StepStatus, TrainingJob};
use loraflow_core::workflow::StepKind;

use super::params::params_to_wire;
use super::time::{duration, timestamp};
use crate::aip;
use crate::pb::v1 as pb;

/// What the `Job` resource shows that the aggregate does not hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMeta {
    /// The job's last event sequence: the etag.
    pub sequence: u64,
    /// Global position of the job's last event.
    pub last_position: u64,
    /// When the job's last event was recorded.
    pub update_time: Option<DateTime<Utc>>,
    /// Jobs ahead of this one in the queue, while it waits for an executor.
    pub queue_position: Option<u32>,
    /// Estimated time to review, when one can be estimated.
    pub eta: Option<Duration>,
}

/// The `Job` resource for `job`; `None` for a job that was never created.
pub fn job_to_wire(job: &TrainingJob, meta: JobMeta) -> Option<pb::Job> {
    let job_id = job.id()?;
    let state = job.state()?;
    let spec = job.spec()?;
    let steps = job
        .workflow()
        .map(|w| {
            w.steps
                .iter()
                .filter_map(|s| Some(step_to_wire(s.id.as_str(), job.step(&s.id)?)))
                .collect()
        })
        .unwrap_or_default();
    let training = job
        .steps()
        .values()
        .filter(|r| r.kind.is(StepKind::TRAIN))
        .filter_map(|r| r.progress.as_ref())
        .next_back();
    let last_epoch = job.epochs().values().next_back();
    Some(pb::Job {
        name: aip::job_name(job_id),
        job_id: job_id.0.clone(),
        tenant: spec.tenant.0.clone(),
        etag: aip::etag(meta.sequence),
        state: pb::JobState::from(state) as i32,
        failure: job.failure().cloned().map(Into::into),
        spec: Some(spec.clone().into()),
        resolved_params: params_to_wire(job.params().clone()),
        steps,
        epochs: job.epochs().values().cloned().map(Into::into).collect(),
        approved_epoch: job.approved().map(|a| a.epoch),
        published_artifact: job.published().cloned().map(Into::into),
        current_epoch: training
            .and_then(|p| p.epoch)
            .or(last_epoch.map(|e| e.epoch)),
        last_loss: training
            .and_then(|p| p.loss)
            .or(last_epoch.and_then(|e| e.loss)),
        queue_position: meta.queue_position,
        eta: meta.eta.map(duration),
        create_time: job.created_at().map(timestamp),
        update_time: meta.update_time.map(timestamp),
        last_position: meta.last_position,
    })
}

fn step_to_wire(id: &str, rec: &StepRecord) -> pb::Step {
    let last = rec.attempts.last();
    let (attempt, executor_id, not_before) = match &rec.status {
        StepStatus::Queued {
            attempt,
            not_before,
            ..
        } => (
            *attempt,
            last.map(|a| a.executor_id.0.clone()),
            Some(*not_before),
        ),
        StepStatus::Leased {
            attempt,
            executor_id,
            ..
        } => (*attempt, Some(executor_id.0.clone()), None),
        _ => (
            last.map_or(0, |a| a.number),
            last.map(|a| a.executor_id.0.clone()),
            None,
        ),
    };
    let last_error = rec.attempts.iter().rev().find_map(|a| match &a.outcome {
        Some(AttemptOutcome::Failed(e)) => Some(e.clone().into()),
        _ => None,
    });
    pb::Step {
        id: id.to_owned(),
        kind: rec.kind.0.clone(),
        status: pb::StepStatus::from(&rec.status) as i32,
        attempt,
        executor_id: executor_id.unwrap_or_default(),
        progress: rec.progress.clone().map(Into::into),
        not_before: not_before.map(timestamp),
        last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::job::canned::{Driver, histories};
    use loraflow_core::job::{FailureReason, JobState, replay};

    fn meta() -> JobMeta {
        JobMeta {
            sequence: 7,
            last_position: 1234,
            update_time: None,
            queue_position: Some(2),
            eta: Some(Duration::from_secs(600)),
        }
    }

    fn steps(job: &pb::Job) -> Vec<(&str, pb::StepStatus)> {
        job.steps
            .iter()
            .map(|s| (s.id.as_str(), pb::StepStatus::try_from(s.status).unwrap()))
            .collect()
    }

    #[test]
    fn a_job_never_created_has_no_resource() {
        assert_eq!(job_to_wire(&TrainingJob::default(), meta()), None);
    }

    #[test]
    fn a_created_job_shows_spec_and_resolved_params() {
        let job = replay(histories::created());
        let wire = job_to_wire(&job, meta()).unwrap();
        assert_eq!(wire.name, "jobs/job-1");
        assert_eq!(wire.tenant, "acme");
        assert_eq!(wire.etag, "7");
        assert_eq!(wire.state, pb::JobState::Pending as i32);
        assert_eq!(
            wire.spec.unwrap().into_domain("acme".into()).as_ref(),
            Ok(job.spec().unwrap())
        );
        assert_eq!(
            super::super::params::params_from_wire(wire.resolved_params).as_ref(),
            Ok(job.params())
        );
        assert!(wire.steps.is_empty());
        assert!(wire.create_time.is_some());
        assert_eq!(wire.queue_position, Some(2));
        assert_eq!(wire.last_position, 1234);
    }

    #[test]
    fn a_job_in_review_lists_steps_in_workflow_order_and_epochs() {
        let job = replay(histories::in_review());
        let wire = job_to_wire(&job, meta()).unwrap();
        assert_eq!(wire.state, pb::JobState::InReview as i32);
        use pb::StepStatus::*;
        assert_eq!(
            steps(&wire),
            [
                ("validate", Completed),
                ("label", Completed),
                ("train", Completed),
                ("sample", Completed),
                ("review", AwaitingReview),
                ("publish", Waiting),
            ]
        );
        assert_eq!(wire.steps[2].attempt, 1);
        assert_eq!(wire.steps[2].executor_id, "gpu-0");
        assert_eq!(
            wire.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(wire.current_epoch, Some(2));
        assert_eq!(wire.last_loss, Some(0.1));
    }

    #[test]
    fn a_published_job_shows_its_artifact() {
        let job = replay(histories::published());
        let wire = job_to_wire(&job, meta()).unwrap();
        assert_eq!(wire.state, pb::JobState::Published as i32);
        assert_eq!(wire.approved_epoch, Some(2));
        assert_eq!(
            wire.published_artifact.unwrap().name,
            "corgi-v1.safetensors"
        );
    }

    #[test]
    fn a_cancelled_job_shows_its_failure_and_dropped_steps() {
        let job = replay(histories::cancelled_while_training());
        let wire = job_to_wire(&job, meta()).unwrap();
        assert_eq!(job.state(), Some(JobState::Failed));
        let failure = wire.failure.clone().unwrap();
        assert_eq!(failure.reason, pb::FailureReason::Cancelled as i32);
        assert_eq!(failure.message, "wrong dataset");
        assert_eq!(
            steps(&wire)[2],
            ("train", pb::StepStatus::Dropped),
            "the leased step ends with the job"
        );
        assert_eq!(FailureReason::Cancelled, job.failure().unwrap().reason);
    }

    #[test]
    fn a_leased_step_shows_its_executor_and_progress() {
        let mut d = Driver::new();
        d.create().submit().run("validate");
        let lease = d.lease("label");
        d.exec(loraflow_core::job::JobCommand::Heartbeat(
            loraflow_core::job::Heartbeat {
                lease_id: lease,
                progress: loraflow_core::job::StepProgress {
                    percent: 50.0,
                    ..Default::default()
                },
            },
        ))
        .unwrap();
        let wire = job_to_wire(&d.job, meta()).unwrap();
        let label = &wire.steps[1];
        assert_eq!(label.status, pb::StepStatus::Leased as i32);
        assert_eq!(label.executor_id, "gpu-0");
        assert_eq!(label.progress.as_ref().unwrap().percent, 50.0);
        assert_eq!(wire.steps[2].status, pb::StepStatus::Waiting as i32);
    }
}
