//! Given/when/then tests of every transition, legal and illegal, with cqrs-es'
//! `TestFramework`. Errors are compared as typed values, never as strings.

use chrono::Duration;
use cqrs_es::test::{AggregateTestExecutor, TestFramework};

use crate::artifact::ArtifactKind;
use crate::catalogue::{ParamValue, Params};
use crate::ids::{ExecutorId, LeaseId, StepId};
use crate::job::canned::{Driver, artifact, histories, outputs_for, sample_dataset, sample_spec};
use crate::job::events::*;
use crate::job::step::{ExpiryCause, ParamAdjustment};
use crate::job::*;
use crate::workflow::{StepKind, StepSpec, WorkflowSpec};

fn given(d: &Driver) -> AggregateTestExecutor<TrainingJob> {
    TestFramework::with(d.services.clone()).given(d.events.clone())
}

fn illegal(command: &'static str, state: JobState) -> Error {
    Error::IllegalTransition { command, state }
}

fn lease_cmd(step: &str, lease: &str) -> JobCommand {
    JobCommand::LeaseStep(LeaseStep {
        step_id: StepId::new(step),
        lease_id: LeaseId::new(lease),
        executor_id: ExecutorId::new("gpu-0"),
        instance: None,
    })
}

fn fail_cmd(lease: &LeaseId, kind: StepErrorKind, retryable: bool) -> JobCommand {
    JobCommand::FailStep(FailStep {
        lease_id: lease.clone(),
        error: StepError {
            kind,
            message: "boom".into(),
            retryable,
        },
    })
}

fn cancel_cmd() -> JobCommand {
    JobCommand::Cancel(CancelJob {
        reason: "no longer needed".into(),
        cancelled_by: "alice".into(),
    })
}

// ---------------------------------------------------------------- create

#[test]
fn create_emits_job_created_with_resolved_params() {
    let d = Driver::new();
    let events = TestFramework::<TrainingJob>::with(d.services.clone())
        .given_no_previous_events()
        .when(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec: sample_spec(),
        }))
        .inspect_result()
        .unwrap();
    let [JobEvent::JobCreated(e)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(e.spec, sample_spec());
    assert_eq!(e.params["resolution"], ParamValue::Int(512));
    assert_eq!(e.created_at, d.clock_now());
}

#[test]
fn create_twice_is_refused() {
    let mut d = Driver::new();
    d.create();
    given(&d)
        .when(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec: sample_spec(),
        }))
        .then_expect_error(Error::AlreadyExists {
            job_id: "job-1".into(),
        });
}

#[test]
fn create_with_invalid_spec_lists_every_bad_field() {
    let d = Driver::new();
    let mut spec = sample_spec();
    spec.params = Params::from([
        ("learning_rate".to_owned(), ParamValue::Float(5.0)),
        ("epochs".to_owned(), ParamValue::Int(0)),
    ]);
    spec.priority = 1000;
    spec.sample_prompts.push(" ".into());
    let err = given(&d)
        .when(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec,
        }))
        .inspect_result()
        .unwrap_err();
    let Error::InvalidSpec(v) = err else {
        panic!("{err:?}")
    };
    let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "params.epochs",
            "params.learning_rate",
            "sample_prompts[1]",
            "priority"
        ]
    );
}

#[test]
fn create_refuses_unknown_model_and_unsupported_engine() {
    let d = Driver::new();
    let mut spec = sample_spec();
    spec.base_model = "tiny-sd".into(); // the tiny model is trained by the native engine only
    spec.engine = crate::catalogue::Engine::Kohya;
    let err = given(&d)
        .when(JobCommand::Create(CreateJob {
            job_id: "j".into(),
            spec,
        }))
        .inspect_result()
        .unwrap_err();
    let Error::InvalidSpec(v) = err else {
        panic!("{err:?}")
    };
    assert_eq!(v.0[0].field, "engine");
    assert!(
        v.0[0]
            .description
            .contains("engine kohya cannot train base model tiny-sd")
    );
}

#[test]
fn create_with_unknown_custom_step_kind_in_workflow_is_refused() {
    let d = Driver::new();
    let mut spec = sample_spec();
    spec.workflow = Some(WorkflowSpec {
        steps: vec![
            StepSpec::new("up", "upscale"),
            StepSpec::new("review", "review").after(&["up"]),
            StepSpec::new("publish", "publish").after(&["review"]),
        ],
    });
    let err = given(&d)
        .when(JobCommand::Create(CreateJob {
            job_id: "j".into(),
            spec,
        }))
        .inspect_result()
        .unwrap_err();
    let Error::InvalidSpec(v) = err else {
        panic!("{err:?}")
    };
    assert_eq!(v.0[0].field, "workflow.steps.up.kind");
}

#[test]
fn create_when_service_unavailable_or_model_blocked() {
    let d = Driver::new();
    d.services.status.update(|s| {
        s.available = false;
        s.message = Some("maintenance until 14:00".into());
    });
    given(&d)
        .when(JobCommand::Create(CreateJob {
            job_id: "j".into(),
            spec: sample_spec(),
        }))
        .then_expect_error(Error::ServiceUnavailable {
            message: "maintenance until 14:00".into(),
        });

    let d = Driver::new();
    d.services.status.update(|s| {
        s.blocked_models.insert("sd15".into());
        s.message = Some("sd15 queue is full".into());
    });
    given(&d)
        .when(JobCommand::Create(CreateJob {
            job_id: "j".into(),
            spec: sample_spec(),
        }))
        .then_expect_error(Error::ModelBlocked {
            model: "sd15".into(),
            message: "sd15 queue is full".into(),
        });
}

#[test]
fn commands_on_a_job_never_created_are_not_found() {
    let d = Driver::new();
    for cmd in [
        JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }),
        cancel_cmd(),
        lease_cmd("train", "l"),
    ] {
        given(&d).when(cmd).then_expect_error(Error::NotFound);
    }
}

// ---------------------------------------------------------------- submit

#[test]
fn submit_plans_the_workflow_and_queues_the_first_step() {
    let mut d = Driver::new();
    d.create();
    let now = d.clock_now();
    let catalogue = d.services.catalogue.clone();
    let workflow = crate::workflow::standard_lora(
        catalogue.base_model(&"sd15".into()).unwrap(),
        crate::catalogue::Engine::Native,
    );
    let validate = workflow.steps[0].clone();
    given(&d)
        .when(JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }))
        .then_expect_events(vec![
            JobEvent::JobSubmitted(JobSubmitted {
                dataset: sample_dataset(),
                workflow,
                submitted_at: now,
            }),
            JobEvent::StepQueued(StepQueued {
                step_id: "validate".into(),
                kind: StepKind::VALIDATE_DATASET.into(),
                attempt: 1,
                tenant: "acme".into(),
                priority: 0,
                requires: validate.requires,
                queued_at: now,
                not_before: now,
            }),
        ]);
}

#[test]
fn submit_twice_is_an_illegal_transition() {
    let mut d = Driver::new();
    d.create().submit();
    given(&d)
        .when(JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }))
        .then_expect_error(illegal("submit", JobState::Submitted));
}

#[test]
fn submit_refuses_datasets_over_the_service_limits() {
    let mut d = Driver::new();
    d.create();
    d.services.status.update(|s| s.max_images = 10);
    let mut dataset = sample_dataset();
    dataset.image_count = 11;
    let err = given(&d)
        .when(JobCommand::Submit(SubmitJob { dataset }))
        .inspect_result()
        .unwrap_err();
    let Error::DatasetRefused(v) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        v.0[0].description,
        "the dataset has 11 images; this service accepts at most 10"
    );
}

// ---------------------------------------------------------------- leases

#[test]
fn first_lease_moves_the_job_to_processing() {
    let mut d = Driver::new();
    d.create().submit();
    assert_eq!(d.job.state(), Some(JobState::Submitted));
    d.lease("validate");
    assert_eq!(d.job.state(), Some(JobState::Processing));
    let JobEvent::StepLeased(e) = d.events.last().unwrap() else {
        panic!()
    };
    assert_eq!(e.deadline - e.leased_at, Duration::minutes(2));
    assert_eq!(e.close_by - e.leased_at, Duration::minutes(30));
}

#[test]
fn leasing_a_step_that_is_not_queued_is_refused() {
    let mut d = Driver::new();
    d.create().submit();
    given(&d)
        .when(lease_cmd("train", "l9"))
        .then_expect_error(Error::StepNotReady {
            step: "train".into(),
            action: "leased",
            status: "waiting",
        });
    given(&d)
        .when(lease_cmd("nope", "l9"))
        .then_expect_error(Error::UnknownStep {
            step: "nope".into(),
        });
    let lease = d.lease("validate");
    given(&d)
        .when(lease_cmd("validate", "l9"))
        .then_expect_error(Error::StepNotReady {
            step: "validate".into(),
            action: "leased",
            status: "leased",
        });
    d.complete("validate", lease.clone());
    given(&d)
        .when(lease_cmd("label", lease.as_str()))
        .then_expect_error(Error::LeaseIdReused { lease_id: lease });
}

#[test]
fn leasing_before_submit_is_illegal() {
    let mut d = Driver::new();
    d.create();
    given(&d)
        .when(lease_cmd("validate", "l"))
        .then_expect_error(illegal("lease_step", JobState::Pending));
}

#[test]
fn heartbeat_records_progress_and_renews_the_deadline() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    d.advance(Duration::seconds(90));
    let now = d.clock_now();
    let progress = StepProgress {
        percent: 50.0,
        loss: Some(0.12),
        ..Default::default()
    };
    given(&d)
        .when(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: progress.clone(),
        }))
        .then_expect_events(vec![JobEvent::StepProgressed(StepProgressed {
            step_id: "validate".into(),
            attempt: 1,
            lease_id: lease.clone(),
            progress,
            deadline: now + Duration::minutes(2),
            at: now,
        })]);
    given(&d)
        .when(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease,
            progress: StepProgress {
                percent: 140.0,
                ..Default::default()
            },
        }))
        .then_expect_error(Error::InvalidProgress(
            "percent 140 is outside 0..=100".into(),
        ));
}

// ---------------------------------------------------------------- completion

#[test]
fn completing_a_step_queues_the_next() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    let events = given(&d)
        .when(JobCommand::CompleteStep(outputs_for(
            &StepKind::VALIDATE_DATASET.into(),
            lease,
        )))
        .inspect_result()
        .unwrap();
    let names: Vec<_> = events.iter().map(JobEvent::name).collect();
    assert_eq!(names, ["StepCompleted", "StepQueued"]);
    assert_eq!(events[1].step_id(), Some(&StepId::new("label")));
}

#[test]
fn duplicate_completion_of_the_same_lease_writes_nothing() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    d.complete("validate", lease.clone());
    given(&d)
        .when(JobCommand::CompleteStep(outputs_for(
            &StepKind::VALIDATE_DATASET.into(),
            lease,
        )))
        .then_expect_events(vec![]);
}

#[test]
fn completion_for_a_stale_lease_is_rejected() {
    let mut d = Driver::new();
    d.create().submit();
    let old = d.lease("validate");
    d.advance(Duration::minutes(3));
    d.exec(JobCommand::ExpireLease(ExpireLease {
        lease_id: old.clone(),
    }))
    .unwrap();
    d.advance(Duration::minutes(1));
    let _new = d.lease("validate");
    given(&d)
        .when(JobCommand::CompleteStep(outputs_for(
            &StepKind::VALIDATE_DATASET.into(),
            old.clone(),
        )))
        .then_expect_error(Error::StaleLease {
            lease_id: old,
            step: "validate".into(),
        });
    given(&d)
        .when(JobCommand::CompleteStep(outputs_for(
            &StepKind::VALIDATE_DATASET.into(),
            "ghost".into(),
        )))
        .then_expect_error(Error::UnknownLease {
            lease_id: "ghost".into(),
        });
}

#[test]
fn completion_with_bad_artifacts_is_refused() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    let mut c = outputs_for(&StepKind::VALIDATE_DATASET.into(), lease);
    c.artifacts[0].sha256 = crate::artifact::Sha256("xyz".into());
    let err = given(&d)
        .when(JobCommand::CompleteStep(c))
        .inspect_result()
        .unwrap_err();
    let Error::InvalidOutput(v) = err else {
        panic!("{err:?}")
    };
    assert_eq!(v.0[0].field, "artifacts[0].sha256");
}

// ---------------------------------------------------------------- failures and retries

#[test]
fn retryable_failure_schedules_a_retry_with_backoff() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    let events = given(&d)
        .when(fail_cmd(&lease, StepErrorKind::Unavailable, true))
        .inspect_result()
        .unwrap();
    let names: Vec<_> = events.iter().map(JobEvent::name).collect();
    assert_eq!(names, ["StepFailed", "StepRetried", "StepQueued"]);
    let (JobEvent::StepRetried(r), JobEvent::StepQueued(q)) = (&events[1], &events[2]) else {
        panic!()
    };
    assert_eq!((r.next_attempt, r.max_attempts, q.attempt), (2, 3, 2));
    // 10 s ± 20% jitter.
    assert!((8_000..=12_000).contains(&r.backoff_ms), "{}", r.backoff_ms);
    assert_eq!(
        q.not_before - q.queued_at,
        Duration::milliseconds(r.backoff_ms as i64)
    );
}

#[test]
fn a_retry_cannot_be_leased_during_backoff() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    d.exec(fail_cmd(&lease, StepErrorKind::Internal, true))
        .unwrap();
    let JobEvent::StepQueued(q) = d.events.last().unwrap().clone() else {
        panic!()
    };
    given(&d)
        .when(lease_cmd("validate", "l2"))
        .then_expect_error(Error::StepNotDue {
            step: "validate".into(),
            not_before: q.not_before,
        });
    d.advance(Duration::seconds(13));
    d.lease("validate");
}

#[test]
fn invalid_input_on_validation_fails_the_job_as_invalid_dataset() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    d.exec(fail_cmd(&lease, StepErrorKind::InvalidInput, false))
        .unwrap();
    let failure = d.job.failure().unwrap();
    assert_eq!(failure.reason, FailureReason::InvalidDataset);
    assert_eq!(
        failure.message,
        "step validate failed (InvalidInput): boom on attempt 1 of 3"
    );
    assert_eq!(
        d.job.step(&"label".into()).unwrap().status,
        StepStatus::Dropped
    );
}

#[test]
fn exhausted_retries_fail_the_job() {
    let mut d = Driver::new();
    d.create().submit();
    for _ in 0..3 {
        d.advance(Duration::minutes(5));
        let lease = d.lease("validate");
        d.exec(fail_cmd(&lease, StepErrorKind::Unavailable, true))
            .unwrap();
    }
    assert_eq!(
        d.job.failure().unwrap().reason,
        FailureReason::RetriesExhausted
    );
    assert_eq!(d.job.step(&"validate".into()).unwrap().attempts.len(), 3);
}

#[test]
fn service_max_retries_caps_a_step_policy() {
    let mut d = Driver::new();
    d.services.status.update(|s| s.max_retries = 0);
    d.create().submit();
    let lease = d.lease("validate");
    d.exec(fail_cmd(&lease, StepErrorKind::Unavailable, true))
        .unwrap();
    assert_eq!(
        d.job.failure().unwrap().reason,
        FailureReason::RetriesExhausted
    );
}

#[test]
fn out_of_memory_halves_batch_size_then_resolution_then_gives_up() {
    let mut d = Driver::new();
    d.services.status.update(|s| s.max_retries = 10);
    let mut spec = sample_spec();
    spec.params
        .insert("resolution".into(), ParamValue::Int(128));
    d.create_with(spec).submit().run("validate").run("label");
    let train = StepId::new("train");
    let mut seen = Vec::new();
    for _ in 0..6 {
        d.advance(Duration::hours(1));
        let lease = d.lease("train");
        d.exec(fail_cmd(&lease, StepErrorKind::OutOfMemory, true))
            .unwrap();
        match d.events.iter().rev().find_map(|e| match e {
            JobEvent::StepRetried(r) => Some(r.clone()),
            _ => None,
        }) {
            Some(r) if !d.job.is_terminal() => seen.push(r.adjustments.clone()),
            _ => break,
        }
        if d.job.is_terminal() {
            break;
        }
    }
    let adj = |p: &str, from, to| {
        vec![ParamAdjustment {
            param: p.into(),
            from: ParamValue::Int(from),
            to: ParamValue::Int(to),
        }]
    };
    // batch 2 → 1, then resolution 128 → 64 (the schema minimum), then nothing is left.
    assert_eq!(
        seen,
        vec![adj("batch_size", 2, 1), adj("resolution", 128, 64)]
    );
    assert_eq!(d.job.step_params(&train)["batch_size"], ParamValue::Int(1));
    assert_eq!(d.job.step_params(&train)["resolution"], ParamValue::Int(64));
    let failure = d.job.failure().unwrap();
    assert_eq!(failure.reason, FailureReason::OutOfMemory);
    assert!(
        failure
            .message
            .ends_with("batch_size and resolution are already at their minimum")
    );
}

#[test]
fn out_of_memory_on_sdxl_halves_within_the_sdxl_bounds() {
    let mut d = Driver::new();
    d.services.status.update(|s| s.max_retries = 10);
    let mut spec = sample_spec();
    spec.base_model = "sdxl".into();
    d.create_with(spec).submit().run("validate").run("label");
    let train = StepId::new("train");
    assert_eq!(
        d.job.step_params(&train)["resolution"],
        ParamValue::Int(1024),
        "the catalogue's SDXL default"
    );
    let mut seen = Vec::new();
    for _ in 0..8 {
        d.advance(Duration::hours(1));
        let lease = d.lease("train");
        d.exec(fail_cmd(&lease, StepErrorKind::OutOfMemory, true))
            .unwrap();
        if d.job.is_terminal() {
            break;
        }
        let retried = d.events.iter().rev().find_map(|e| match e {
            JobEvent::StepRetried(r) => Some(r.adjustments.clone()),
            _ => None,
        });
        seen.push(retried.unwrap());
    }
    let adj = |p: &str, from, to| {
        vec![ParamAdjustment {
            param: p.into(),
            from: ParamValue::Int(from),
            to: ParamValue::Int(to),
        }]
    };
    // The catalogue's SDXL defaults: batch 2 → 1, then 1024 px → 512 px (SDXL's minimum, not
    // the generic 64), then the job fails saying so.
    assert_eq!(
        seen,
        vec![adj("batch_size", 2, 1), adj("resolution", 1024, 512)]
    );
    let failure = d.job.failure().unwrap();
    assert_eq!(failure.reason, FailureReason::OutOfMemory);
    assert!(
        failure
            .message
            .ends_with("batch_size and resolution are already at their minimum"),
        "{}",
        failure.message
    );
}

#[test]
fn out_of_memory_without_auto_adjust_retries_unchanged() {
    let mut d = Driver::new();
    let mut spec = sample_spec();
    spec.params
        .insert("auto_adjust".into(), ParamValue::Bool(false));
    d.create_with(spec).submit().run("validate").run("label");
    let lease = d.lease("train");
    d.exec(fail_cmd(&lease, StepErrorKind::OutOfMemory, true))
        .unwrap();
    let JobEvent::StepRetried(r) = &d.events[d.events.len() - 2] else {
        panic!()
    };
    assert!(r.adjustments.is_empty());
}

#[test]
fn lease_expiry_is_refused_early_and_retries_when_due() {
    let mut d = Driver::new();
    d.create().submit();
    let lease = d.lease("validate");
    let deadline = d.clock_now() + Duration::minutes(2);
    given(&d)
        .when(JobCommand::ExpireLease(ExpireLease {
            lease_id: lease.clone(),
        }))
        .then_expect_error(Error::LeaseNotExpired {
            lease_id: lease.clone(),
            deadline,
        });
    d.advance(Duration::minutes(2));
    let events = d
        .exec(JobCommand::ExpireLease(ExpireLease {
            lease_id: lease.clone(),
        }))
        .unwrap();
    let JobEvent::LeaseExpired(e) = &events[0] else {
        panic!()
    };
    assert_eq!(e.cause, ExpiryCause::HeartbeatTimeout);
    assert_eq!(events.len(), 3);
    // The expired lease's late heartbeat is stale.
    given(&d)
        .when(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: StepProgress::default(),
        }))
        .then_expect_error(Error::StaleLease {
            lease_id: lease,
            step: "validate".into(),
        });
}

#[test]
fn losing_the_executor_on_every_attempt_fails_as_retries_exhausted() {
    let mut d = Driver::new();
    d.create().submit();
    for _ in 0..3 {
        d.advance(Duration::minutes(5));
        let lease = d.lease("validate");
        d.advance(Duration::minutes(3));
        d.exec(JobCommand::ExpireLease(ExpireLease { lease_id: lease }))
            .unwrap();
    }
    let failure = d.job.failure().unwrap();
    assert_eq!(failure.reason, FailureReason::RetriesExhausted);
    assert!(
        failure.message.contains("lost its executor") && failure.message.contains("attempt 3 of 3"),
        "{}",
        failure.message
    );
}

#[test]
fn a_step_waiting_past_schedule_to_start_fails_the_job() {
    let mut d = Driver::new();
    let mut spec = sample_spec();
    let mut wf = crate::workflow::standard_lora(
        d.services.catalogue.base_model(&"sd15".into()).unwrap(),
        crate::catalogue::Engine::Native,
    );
    wf.steps[0].timeouts.schedule_to_start = Some(std::time::Duration::from_secs(60));
    spec.workflow = Some(wf);
    d.create_with(spec).submit();
    let cmd = || {
        JobCommand::ExpireQueuedStep(ExpireQueuedStep {
            step_id: "validate".into(),
            unservable: None,
        })
    };
    given(&d)
        .when(cmd())
        .then_expect_error(Error::QueueNotExpired {
            step: "validate".into(),
        });
    d.advance(Duration::seconds(61));
    d.exec(cmd()).unwrap();
    assert_eq!(
        d.job.failure().unwrap().reason,
        FailureReason::ScheduleTimeout
    );
}

#[test]
fn a_schedule_to_start_timeout_with_nothing_able_to_run_the_step_names_what_is_missing() {
    let mut d = Driver::new();
    let mut spec = sample_spec();
    let mut wf = crate::workflow::standard_lora(
        d.services.catalogue.base_model(&"sd15".into()).unwrap(),
        crate::catalogue::Engine::Native,
    );
    wf.steps[0].timeouts.schedule_to_start = Some(std::time::Duration::from_secs(60));
    spec.workflow = Some(wf);
    d.create_with(spec).submit();
    d.advance(Duration::seconds(61));
    let unservable = crate::schedule::unservable(
        &crate::workflow::StepKind::from(crate::workflow::StepKind::VALIDATE_DATASET),
        &Default::default(),
        None,
        [],
    );
    d.exec(JobCommand::ExpireQueuedStep(ExpireQueuedStep {
        step_id: "validate".into(),
        unservable,
    }))
    .unwrap();
    let failure = d.job.failure().unwrap();
    assert_eq!(failure.reason, FailureReason::ScheduleTimeout);
    assert!(
        failure
            .message
            .contains("waiting for an executor with kind=validate_dataset; none connected"),
        "{}",
        failure.message
    );
}

// ---------------------------------------------------------------- review

#[test]
fn finishing_sampling_opens_the_review_with_every_epoch() {
    let mut d = Driver::new();
    d.run_to_review();
    assert_eq!(d.job.state(), Some(JobState::InReview));
    let JobEvent::ReviewRequested(r) = d.events.last().unwrap() else {
        panic!()
    };
    let epochs: Vec<_> = r
        .epochs
        .iter()
        .map(|e| (e.epoch, e.samples.len(), e.lora.is_some()))
        .collect();
    assert_eq!(epochs, [(1, 1, true), (2, 1, true)]);
}

#[test]
fn training_without_epochs_fails_with_no_output_at_the_gate() {
    let mut d = Driver::new();
    d.create().submit().run("validate").run("label");
    let lease = d.lease("train");
    d.exec(JobCommand::CompleteStep(CompleteStep {
        lease_id: lease,
        outputs: serde_json::Value::Null,
        artifacts: vec![],
        epochs: vec![],
    }))
    .unwrap();
    d.run("sample");
    assert_eq!(d.job.failure().unwrap().reason, FailureReason::NoOutput);
}

#[test]
fn approve_chooses_an_epoch_and_queues_publish() {
    let mut d = Driver::new();
    d.run_to_review();
    given(&d)
        .when(JobCommand::Approve(ApproveJob {
            epoch: 7,
            step: None,
            approved_by: "bob".into(),
        }))
        .then_expect_error(Error::UnknownEpoch {
            epoch: 7,
            available: vec![1, 2],
            steps: vec![],
        });
    given(&d)
        .when(JobCommand::Approve(ApproveJob {
            epoch: 1,
            step: None,
            approved_by: " ".into(),
        }))
        .then_expect_error(Error::MissingField {
            field: "approved_by",
        });
    let now = d.clock_now();
    let events = d
        .exec(JobCommand::Approve(ApproveJob {
            epoch: 2,
            step: None,
            approved_by: "bob".into(),
        }))
        .unwrap();
    assert_eq!(
        events[0],
        JobEvent::JobApproved(JobApproved {
            epoch: 2,
            step: None,
            lora: artifact(ArtifactKind::Lora, "corgi-e2.safetensors", Some(2)),
            approved_by: "bob".into(),
            approved_at: now,
        })
    );
    assert_eq!(events[1].step_id(), Some(&StepId::new("publish")));
    assert_eq!(d.job.state(), Some(JobState::Approved));
}

#[test]
fn approve_or_reject_outside_review_is_illegal() {
    let mut d = Driver::new();
    d.create().submit();
    d.lease("validate");
    given(&d)
        .when(JobCommand::Approve(ApproveJob {
            epoch: 1,
            step: None,
            approved_by: "bob".into(),
        }))
        .then_expect_error(illegal("approve", JobState::Processing));
    given(&d)
        .when(JobCommand::Reject(RejectJob {
            reason: "blurry".into(),
            rejected_by: "bob".into(),
        }))
        .then_expect_error(illegal("reject", JobState::Processing));
}

#[test]
fn reject_fails_the_job_as_rejected() {
    let mut d = Driver::new();
    d.run_to_review();
    d.exec(JobCommand::Reject(RejectJob {
        reason: "faces are distorted".into(),
        rejected_by: "bob".into(),
    }))
    .unwrap();
    let f = d.job.failure().unwrap();
    assert_eq!(
        (f.reason, f.message.as_str()),
        (FailureReason::Rejected, "faces are distorted")
    );
    assert_eq!(
        d.job.step(&"publish".into()).unwrap().status,
        StepStatus::Dropped
    );
}

// ---------------------------------------------------------------- publish

#[test]
fn completing_publish_publishes_the_job() {
    let events = histories::published();
    let job = replay(events.clone());
    assert_eq!(job.state(), Some(JobState::Published));
    let JobEvent::JobPublished(p) = events.last().unwrap() else {
        panic!()
    };
    assert_eq!(p.epoch, 2);
    assert_eq!(p.artifact.kind, ArtifactKind::Published);
}

#[test]
fn publish_must_return_a_published_artifact() {
    let mut d = Driver::new();
    d.run_to_review().approve(1);
    let lease = d.lease("publish");
    let err = given(&d)
        .when(JobCommand::CompleteStep(CompleteStep {
            lease_id: lease,
            outputs: serde_json::Value::Null,
            artifacts: vec![],
            epochs: vec![],
        }))
        .inspect_result()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOutput(_)), "{err:?}");
}

#[test]
fn publish_failing_for_good_fails_as_publish_failed() {
    let mut d = Driver::new();
    d.run_to_review().approve(1);
    let lease = d.lease("publish");
    d.exec(fail_cmd(&lease, StepErrorKind::Internal, false))
        .unwrap();
    assert_eq!(
        d.job.failure().unwrap().reason,
        FailureReason::PublishFailed
    );
}

// ---------------------------------------------------------------- cancel and terminal states

#[test]
fn cancel_is_allowed_from_every_non_terminal_state() {
    type Setup = Box<dyn Fn(&mut Driver)>;
    let setups: Vec<(JobState, Setup)> = vec![
        (
            JobState::Pending,
            Box::new(|d| {
                d.create();
            }),
        ),
        (
            JobState::Submitted,
            Box::new(|d| {
                d.create().submit();
            }),
        ),
        (
            JobState::Processing,
            Box::new(|d| {
                d.create().submit();
                d.lease("validate");
            }),
        ),
        (
            JobState::InReview,
            Box::new(|d| {
                d.run_to_review();
            }),
        ),
        (
            JobState::Approved,
            Box::new(|d| {
                d.run_to_review().approve(1);
            }),
        ),
    ];
    for (state, setup) in setups {
        let mut d = Driver::new();
        setup(&mut d);
        assert_eq!(d.job.state(), Some(state));
        let events = d.exec(cancel_cmd()).unwrap();
        assert_eq!(events.len(), 1, "{state}");
        assert_eq!(d.job.failure().unwrap().reason, FailureReason::Cancelled);
    }
}

#[test]
fn cancel_lists_running_leases_and_drops_queued_steps() {
    let job = replay(histories::cancelled_while_training());
    let last = histories::cancelled_while_training().pop().unwrap();
    let JobEvent::JobCancelled(c) = last else {
        panic!()
    };
    assert_eq!(c.running.len(), 1);
    assert_eq!(c.running[0].step_id, StepId::new("train"));
    assert!(
        job.steps()
            .values()
            .all(|s| matches!(s.status, StepStatus::Completed | StepStatus::Dropped))
    );
}

#[test]
fn repeated_cancel_is_a_no_op_and_terminal_states_refuse_the_rest() {
    let mut d = Driver::new();
    d.create();
    d.exec(cancel_cmd()).unwrap();
    given(&d).when(cancel_cmd()).then_expect_events(vec![]);
    given(&d)
        .when(JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }))
        .then_expect_error(illegal("submit", JobState::Failed));

    let published = histories::published();
    let d = {
        let mut d = Driver::new();
        d.events = published;
        d
    };
    given(&d)
        .when(cancel_cmd())
        .then_expect_error(illegal("cancel", JobState::Published));
}

#[test]
fn heartbeat_after_cancel_is_refused_so_the_executor_stops() {
    let mut d = Driver::new();
    d.create().submit().run("validate").run("label");
    let lease = d.lease("train");
    d.exec(cancel_cmd()).unwrap();
    given(&d)
        .when(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease,
            progress: StepProgress::default(),
        }))
        .then_expect_error(illegal("heartbeat", JobState::Failed));
}

#[test]
fn operator_fail_ends_the_job_with_the_given_reason() {
    let mut d = Driver::new();
    d.create().submit();
    d.exec(JobCommand::Fail(FailJob {
        reason: FailureReason::ExecutorLost,
        message: "GPU node decommissioned".into(),
    }))
    .unwrap();
    assert_eq!(d.job.failure().unwrap().reason, FailureReason::ExecutorLost);
}

impl Driver {
    pub(super) fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use crate::clock::Clock;
        self.clock.now()
    }
}

// ---------------------------------------------------------------- assignments

#[test]
fn an_assignment_carries_the_upstream_artifacts_and_effective_params() {
    let mut d = Driver::new();
    d.create().submit().run("validate").run("label");
    let lease = d.lease("train");
    let a = d.job.assignment(&lease, &d.services.catalogue).unwrap();
    assert_eq!(a.step_id, StepId::new("train"));
    assert_eq!(a.kind, StepKind::from(StepKind::TRAIN));
    assert_eq!(a.model_family, Some(crate::catalogue::ModelFamily::Sd15));
    let inputs: Vec<_> = a.inputs.iter().map(|i| i.kind).collect();
    assert_eq!(inputs, [ArtifactKind::Manifest, ArtifactKind::Labels]);
    assert_eq!(a.params["batch_size"], ParamValue::Int(2));
    assert!(
        d.job
            .assignment(&"ghost".into(), &d.services.catalogue)
            .is_none()
    );

    d.complete("train", lease.clone());
    assert!(
        d.job.assignment(&lease, &d.services.catalogue).is_none(),
        "a finished lease gets no assignment"
    );
    d.run("sample").approve(2);
    let publish = d.lease("publish");
    let a = d.job.assignment(&publish, &d.services.catalogue).unwrap();
    assert_eq!(a.approved_epoch, Some(2));
    assert_eq!(a.epochs.len(), 2);
    assert!(a.inputs.iter().any(|i| i.kind == ArtifactKind::Manifest));
}
