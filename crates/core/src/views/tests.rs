//! The view folds against canned histories: each must agree with the
//! aggregate's own state after the same events.

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::ids::{JobId, StepId};
use crate::job::canned::{Driver, histories};
use crate::job::{JobEvent, JobState, StepStatus, replay};

fn at(i: usize) -> EventMeta {
    let t0 = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap();
    EventMeta {
        position: 100 + i as u64,
        sequence: i as u64 + 1,
        recorded_at: t0 + Duration::seconds(i as i64),
    }
}

fn fold(events: &[JobEvent]) -> JobStatus {
    events
        .iter()
        .enumerate()
        .fold(None, |s, (i, e)| JobStatus::fold(s, at(i), e))
        .expect("history starts with JobCreated")
}

fn queue(events: &[JobEvent]) -> QueueView {
    let mut q = QueueView::default();
    let job = JobId::new("job-1");
    for (i, e) in events.iter().enumerate() {
        q.apply_event(&job, at(i), e);
    }
    q
}

/// The status agrees with the aggregate on everything both know.
fn assert_agrees(events: &[JobEvent]) {
    let status = fold(events);
    let job = replay(events.iter().cloned());
    assert_eq!(Some(status.state), job.state());
    assert_eq!(status.failure.as_ref(), job.failure());
    assert_eq!(status.sequence, events.len() as u64);
    assert_eq!(status.last_position, 100 + events.len() as u64 - 1);
    for s in &status.steps {
        let rec = job.step(&s.id).expect("step in both");
        assert_eq!(s.status, rec.status, "step {}", s.id);
        assert_eq!(s.kind, rec.kind);
    }
    assert_eq!(&status.epochs, job.epochs());
    assert_eq!(status.requested, job.reviewables().requested);
    assert_eq!(status.approved_step, job.approved().and_then(|a| a.step));
    assert_eq!(status.suggestion(), job.reviewables().suggestion());
    assert_eq!(status.published.as_ref(), job.published());
    assert_eq!(status.approved_epoch, job.approved().map(|a| a.epoch));
}

#[test]
fn created_job_is_pending_with_its_spec() {
    let s = fold(&histories::created());
    assert_eq!(s.state, JobState::Pending);
    assert_eq!(s.tenant.as_str(), "acme");
    assert_eq!(s.base_model.as_str(), "sd15");
    assert_eq!(s.naming.subject, "corgi");
    assert!(s.steps.is_empty());
    assert_eq!(s.sequence, 1);
}

#[test]
fn every_canned_history_agrees_with_the_aggregate() {
    for h in [
        histories::created(),
        histories::submitted(),
        histories::in_review(),
        histories::published(),
        histories::cancelled_while_training(),
    ] {
        assert_agrees(&h);
    }
}

#[test]
fn published_job_shows_outputs_and_approval() {
    let s = fold(&histories::published());
    assert_eq!(s.state, JobState::Published);
    assert_eq!(s.approved_epoch, Some(2));
    assert_eq!(s.current_epoch, Some(2));
    assert_eq!(s.last_loss, Some(0.1));
    assert!(s.published.is_some());
    assert_eq!(s.epochs.len(), 2);
    assert!(s.artifacts.iter().any(|a| a.name == "manifest.json"));
    let train = s.step(&StepId::new("train")).unwrap();
    assert_eq!(train.attempt, 1);
    assert_eq!(train.executor.as_ref().map(|e| e.as_str()), Some("gpu-0"));
    assert_eq!(train.max_attempts, Some(3));
}

#[test]
fn heartbeats_show_progress_epoch_and_loss() {
    let mut d = Driver::new();
    d.create().submit().run("validate").run("label");
    let lease = d.lease("train");
    d.exec(crate::job::JobCommand::Heartbeat(crate::job::Heartbeat {
        lease_id: lease,
        progress: crate::job::StepProgress {
            percent: 40.0,
            epoch: Some(3),
            loss: Some(0.25),
            ..Default::default()
        },
    }))
    .unwrap();
    let s = fold(&d.events);
    assert_eq!(s.state, JobState::Processing);
    assert_eq!(s.current_epoch, Some(3));
    assert_eq!(s.last_loss, Some(0.25));
    let train = s.step(&StepId::new("train")).unwrap();
    assert!(matches!(train.status, StepStatus::Leased { .. }));
    assert_eq!(train.progress.as_ref().unwrap().percent, 40.0);
    assert_agrees(&d.events);
}

#[test]
fn cancelled_job_drops_open_steps_and_empties_the_queue() {
    let h = histories::cancelled_while_training();
    let s = fold(&h);
    assert_eq!(s.state, JobState::Failed);
    assert_eq!(
        s.failure.as_ref().unwrap().reason,
        crate::job::FailureReason::Cancelled
    );
    assert_eq!(
        s.step(&StepId::new("train")).unwrap().status,
        StepStatus::Dropped
    );
    assert!(queue(&h).is_empty());
}

#[test]
fn a_repeated_event_is_not_folded_twice() {
    let h = histories::published();
    let mut s = fold(&h);
    let before = s.clone();
    s.apply(at(5), &h[5]);
    assert_eq!(s, before);
}

#[test]
fn queue_holds_submitted_steps_until_leased() {
    let q = queue(&histories::submitted());
    let entries = q.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].place, 1);
    assert_eq!(entries[0].step.step_id.as_str(), "validate");
    assert_eq!(entries[0].step.tenant.as_str(), "acme");
    assert!(queue(&histories::in_review()).is_empty());
}

#[test]
fn queue_serves_priority_then_age() {
    let mut q = QueueView::default();
    let mk = |job: &str, prio: i32, pos: u64| {
        let mut d = Driver::new();
        d.job_id = JobId::new(job);
        let mut spec = crate::job::canned::sample_spec();
        spec.priority = prio;
        d.create_with(spec).submit();
        let queued = d.events.last().unwrap().clone();
        let meta = EventMeta {
            position: pos,
            sequence: 3,
            recorded_at: Utc::now(),
        };
        (JobId::new(job), meta, queued)
    };
    for (job, meta, e) in [mk("a", 0, 10), mk("b", 5, 20), mk("c", 0, 5)] {
        q.apply_event(&job, meta, &e);
    }
    let order: Vec<_> = q
        .entries()
        .into_iter()
        .map(|e| (e.place, e.step.job_id.0))
        .collect();
    assert_eq!(
        order,
        vec![(1, "b".into()), (2, "c".into()), (3, "a".into())]
    );
}

#[test]
fn list_filter_matches_fields_and_labels() {
    let mut s = fold(&histories::submitted());
    s.labels.insert("team".into(), "vision".into());
    let mut f = JobListFilter {
        tenant: Some("acme".into()),
        state: Some(JobState::Submitted),
        ..Default::default()
    };
    assert!(f.matches(&s));
    f.labels.insert("team".into(), "vision".into());
    assert!(f.matches(&s));
    f.labels.insert("team".into(), "audio".into());
    assert!(!f.matches(&s));
    let f = JobListFilter {
        tenant: Some("other".into()),
        ..Default::default()
    };
    assert!(!f.matches(&s));
    assert_eq!(JobSummary::from(&s).state, JobState::Submitted);
}
