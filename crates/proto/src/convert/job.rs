//! The `Job` resource, built from the `JobStatus` view (status queries
//! never load the aggregate). A few fields come from the live scheduler
//! rather than from events (queue position, estimated time left); the caller
//! passes them in [`JobMeta`].

use std::collections::BTreeMap;
use std::time::Duration;

use loraflow_core::ids::StepId;
use loraflow_core::views::{JobStatus, StepView};

use super::params::params_to_wire;
use super::time::{duration, timestamp};
use crate::aip;
use crate::pb::v1 as pb;

/// What the `Job` resource shows that the events do not hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMeta {
    /// Queued steps ahead of this job's, while it waits for an executor.
    pub queue_position: Option<u32>,
    /// Estimated time left in the running step, when one can be estimated.
    pub eta: Option<Duration>,
    /// Queued steps no connected executor could run: what each waits for.
    pub waiting_for: BTreeMap<StepId, String>,
}

/// The `Job` resource for a job's status view.
pub fn job_to_wire(status: &JobStatus, meta: JobMeta) -> pb::Job {
    let suggestion = status.suggestion();
    pb::Job {
        name: aip::job_name(&status.job_id),
        job_id: status.job_id.0.clone(),
        tenant: status.tenant.0.clone(),
        etag: aip::etag(status.sequence),
        state: pb::JobState::from(status.state) as i32,
        failure: status.failure.clone().map(Into::into),
        spec: Some(status.spec.clone().into()),
        resolved_params: params_to_wire(status.params.clone()),
        steps: status
            .steps
            .iter()
            .map(|s| step_to_wire(s, meta.waiting_for.get(&s.id)))
            .collect(),
        epochs: status
            .reviewables()
            .in_order()
            .into_iter()
            .cloned()
            .map(Into::into)
            .collect(),
        approved_epoch: status.approved_epoch,
        approved_step: status.approved_step,
        suggested_epoch: suggestion.as_ref().map(|s| s.epoch),
        suggestion_reason: suggestion.map(|s| s.reason()).unwrap_or_default(),
        warnings: status.warnings.clone(),
        published_artifact: status.published.clone().map(Into::into),
        current_epoch: status.current_epoch,
        last_loss: status.last_loss,
        queue_position: meta.queue_position,
        eta: meta.eta.map(duration),
        create_time: Some(timestamp(status.created_at)),
        update_time: Some(timestamp(status.updated_at)),
        last_position: status.last_position,
        reports: status
            .artifacts
            .iter()
            .filter(|a| a.kind == loraflow_core::artifact::ArtifactKind::Report)
            .cloned()
            .map(Into::into)
            .collect(),
    }
}

fn step_to_wire(step: &StepView, waiting_for: Option<&String>) -> pb::Step {
    use loraflow_core::job::StepStatus;
    let not_before = match &step.status {
        StepStatus::Queued { not_before, .. } => Some(timestamp(*not_before)),
        _ => None,
    };
    pb::Step {
        id: step.id.0.clone(),
        kind: step.kind.0.clone(),
        status: pb::StepStatus::from(&step.status) as i32,
        attempt: step.attempt,
        executor_id: step
            .executor
            .as_ref()
            .map(|e| e.0.clone())
            .unwrap_or_default(),
        progress: step.progress.clone().map(Into::into),
        not_before,
        last_error: step.last_error.clone().map(Into::into),
        waiting_for: match step.status {
            StepStatus::Queued { .. } => waiting_for.cloned().unwrap_or_default(),
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::job::canned::{Driver, histories};
    use loraflow_core::job::{FailureReason, JobEvent, JobState, replay};
    use loraflow_core::views::EventMeta;

    fn meta() -> JobMeta {
        JobMeta {
            queue_position: Some(2),
            eta: Some(Duration::from_secs(600)),
            waiting_for: BTreeMap::new(),
        }
    }

    /// The status view of a history, positions starting at 1227.
    fn status(events: &[JobEvent]) -> JobStatus {
        let mut s = None;
        for (i, e) in events.iter().enumerate() {
            let meta = EventMeta {
                position: 1227 + i as u64,
                sequence: i as u64 + 1,
                recorded_at: chrono::Utc::now(),
            };
            s = JobStatus::fold(s, meta, e);
        }
        s.expect("the history starts with JobCreated")
    }

    fn steps(job: &pb::Job) -> Vec<(&str, pb::StepStatus)> {
        job.steps
            .iter()
            .map(|s| (s.id.as_str(), pb::StepStatus::try_from(s.status).unwrap()))
            .collect()
    }

    #[test]
    fn a_created_job_shows_spec_and_resolved_params() {
        let events = histories::created();
        let job = replay(events.clone());
        let wire = job_to_wire(&status(&events), meta());
        assert_eq!(wire.name, "jobs/job-1");
        assert_eq!(wire.tenant, "acme");
        assert_eq!(wire.etag, "1");
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
        assert_eq!(wire.last_position, 1227);
    }

    #[test]
    fn a_job_in_review_lists_steps_in_workflow_order_and_epochs() {
        let wire = job_to_wire(&status(&histories::in_review()), meta());
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
        // Training losses only: the lowest, and the reason says so.
        assert_eq!(wire.suggested_epoch, Some(2));
        assert_eq!(
            wire.suggestion_reason,
            "epoch 2: lowest training loss 0.100 of 2 saved epochs (no validation loss was recorded)"
        );
        assert!(wire.warnings.is_empty(), "the canned job has prompts");
    }

    #[test]
    fn a_published_job_shows_its_artifact() {
        let wire = job_to_wire(&status(&histories::published()), meta());
        assert_eq!(wire.state, pb::JobState::Published as i32);
        assert_eq!(wire.approved_epoch, Some(2));
        assert_eq!(
            wire.published_artifact.unwrap().name,
            "corgi-v1.safetensors"
        );
    }

    #[test]
    fn a_cancelled_job_shows_its_failure_and_dropped_steps() {
        let events = histories::cancelled_while_training();
        let job = replay(events.clone());
        let wire = job_to_wire(&status(&events), meta());
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
        let wire = job_to_wire(&status(&d.events), meta());
        let label = &wire.steps[1];
        assert_eq!(label.status, pb::StepStatus::Leased as i32);
        assert_eq!(label.executor_id, "gpu-0");
        assert_eq!(label.progress.as_ref().unwrap().percent, 50.0);
        assert_eq!(wire.steps[2].status, pb::StepStatus::Waiting as i32);
    }

    #[test]
    fn a_queued_step_no_executor_can_run_says_what_it_waits_for() {
        let events = histories::submitted();
        let text = "waiting for an executor with kind=validate_dataset; none connected";
        let waiting: BTreeMap<StepId, String> = [
            ("validate".into(), text.to_owned()),
            // Only a queued step shows it.
            ("label".into(), "stale".to_owned()),
        ]
        .into();
        let wire = job_to_wire(
            &status(&events),
            JobMeta {
                waiting_for: waiting,
                ..meta()
            },
        );
        assert_eq!(wire.steps[0].status, pb::StepStatus::Queued as i32);
        assert_eq!(wire.steps[0].waiting_for, text);
        assert_eq!(wire.steps[1].waiting_for, "");
        // Without a reason (executors able to run it are only busy), empty.
        let wire = job_to_wire(&status(&events), meta());
        assert_eq!(wire.steps[0].waiting_for, "");
    }
}
