//! Every saved LoRA is reviewable: a `save-now` LoRA is listed with its step
//! and approved by step; what a request produced reaches the job while the
//! step runs; the suggested epoch; sample settings in the catalogue.

use cqrs_es::test::{AggregateTestExecutor, TestFramework};

use crate::artifact::{ArtifactKind, EpochOutput, SuggestionBasis};
use crate::catalogue::{Catalogue, ParamValue, Params};
use crate::executor::StepAssignment;
use crate::ids::StepId;
use crate::job::canned::{Driver, artifact, outputs_for, sample_spec};
use crate::job::events::*;
use crate::job::*;
use crate::limits::Limits;
use crate::sampling::{SampleOverrides, SampleSettings, warnings};
use crate::views::{EventMeta, JobStatus};
use crate::workflow::StepKind;

fn given(d: &Driver) -> AggregateTestExecutor<TrainingJob> {
    TestFramework::with(d.services.clone()).given(d.events.clone())
}

/// What a `save-now` request during epoch 2 produced at step 15.
fn saved_on_request() -> EpochOutput {
    EpochOutput {
        epoch: 2,
        lora: Some(artifact(
            ArtifactKind::Lora,
            "corgi-step00000015.safetensors",
            Some(2),
        )),
        loss: Some(0.15),
        step: Some(15),
        requested: true,
        ..Default::default()
    }
}

fn sampled_on_request() -> EpochOutput {
    EpochOutput {
        epoch: 2,
        samples: vec![artifact(ArtifactKind::Sample, "step15-00.png", Some(2))],
        step: Some(15),
        requested: true,
        ..Default::default()
    }
}

/// Through validate and label, with train leased: its lease.
fn training(d: &mut Driver) -> crate::ids::LeaseId {
    d.create().submit();
    d.run("validate").run("label");
    d.lease("train")
}

/// Train completes with its two epochs and the LoRA saved on request;
/// sample renders every LoRA; the job is in review.
fn review_with_a_save_now_lora(d: &mut Driver) {
    let lease = training(d);
    let mut done = outputs_for(&StepKind::new(StepKind::TRAIN), lease);
    done.epochs.push(saved_on_request());
    d.exec(JobCommand::CompleteStep(done)).unwrap();
    let lease = d.lease("sample");
    let mut samples = outputs_for(&StepKind::new(StepKind::SAMPLE), lease);
    samples.epochs.push(sampled_on_request());
    d.exec(JobCommand::CompleteStep(samples)).unwrap();
    assert_eq!(d.job.state(), Some(JobState::InReview));
}

#[test]
fn a_save_now_lora_is_listed_with_its_step_beside_the_epochs() {
    let mut d = Driver::new();
    review_with_a_save_now_lora(&mut d);
    let out = d.job.reviewables();
    assert_eq!(out.epochs.keys().copied().collect::<Vec<_>>(), [1, 2]);
    let saved = &out.requested[&15];
    assert_eq!(saved.epoch, 2);
    assert!(saved.lora.is_some() && saved.requested);
    assert_eq!(saved.samples.len(), 1, "its samples sit beside it");
    // Training order: epoch 1, the request made during epoch 2, epoch 2.
    let order: Vec<_> = out.in_order().iter().map(|e| (e.epoch, e.step)).collect();
    assert_eq!(order, [(1, None), (2, Some(15)), (2, None)]);
    // The reviewer is offered all three.
    let review = d
        .events
        .iter()
        .find_map(|e| match e {
            JobEvent::ReviewRequested(r) => Some(r.epochs.len()),
            _ => None,
        })
        .unwrap();
    assert_eq!(review, 3);
}

#[test]
fn a_save_now_lora_is_approved_by_step_and_published() {
    let mut d = Driver::new();
    review_with_a_save_now_lora(&mut d);
    let now = d.clock_now();
    given(&d)
        .when(JobCommand::Approve(ApproveJob {
            epoch: 0,
            step: Some(15),
            approved_by: "bob".into(),
        }))
        .then_expect_events(vec![
            JobEvent::JobApproved(JobApproved {
                epoch: 2,
                step: Some(15),
                lora: saved_on_request().lora.unwrap(),
                approved_by: "bob".into(),
                approved_at: now,
            }),
            JobEvent::StepQueued(StepQueued {
                step_id: StepId::new("publish"),
                kind: StepKind::new(StepKind::PUBLISH),
                attempt: 1,
                tenant: sample_spec().tenant,
                priority: 0,
                requires: d
                    .job
                    .workflow()
                    .unwrap()
                    .step(&StepId::new("publish"))
                    .unwrap()
                    .requires
                    .clone(),
                queued_at: now,
                not_before: now,
            }),
        ]);

    // The publish step is handed the LoRA saved at step 15.
    d.exec(JobCommand::Approve(ApproveJob {
        epoch: 0,
        step: Some(15),
        approved_by: "bob".into(),
    }))
    .unwrap();
    let lease = d.lease("publish");
    let a: StepAssignment = d
        .job
        .assignment(&lease, &d.services.catalogue)
        .expect("the publish step's assignment");
    assert_eq!(a.approved_step, Some(15));
    assert_eq!(a.approved_lora(), saved_on_request().lora.as_ref());
}

#[test]
fn approving_an_unknown_step_or_epoch_names_what_can_be_approved() {
    let mut d = Driver::new();
    review_with_a_save_now_lora(&mut d);
    given(&d)
        .when(JobCommand::Approve(ApproveJob {
            epoch: 0,
            step: Some(16),
            approved_by: "bob".into(),
        }))
        .then_expect_error(Error::UnknownSave {
            step: 16,
            available: vec![15],
        });
    given(&d)
        .when(JobCommand::Approve(ApproveJob {
            epoch: 3,
            step: None,
            approved_by: "bob".into(),
        }))
        .then_expect_error(Error::UnknownEpoch {
            epoch: 3,
            available: vec![1, 2],
            steps: vec![15],
        });
    let message = Error::UnknownEpoch {
        epoch: 3,
        available: vec![1, 2],
        steps: vec![15],
    }
    .to_string();
    assert!(message.contains("approved by step: [15]"), "{message}");
    // Approving by epoch still chooses the epoch's own LoRA, not the request's.
    d.approve(2);
    assert_eq!(d.job.approved().unwrap().lora.name, "corgi-e2.safetensors");
}

#[test]
fn outputs_made_on_request_reach_the_job_and_its_view_while_training_runs() {
    let mut d = Driver::new();
    let lease = training(&mut d);
    let refused = given(&d)
        .when(JobCommand::Heartbeat(Heartbeat {
            lease_id: lease.clone(),
            progress: StepProgress {
                percent: 40.0,
                outputs: vec![EpochOutput {
                    step: None,
                    ..sampled_on_request()
                }],
                ..Default::default()
            },
        }))
        .inspect_result()
        .unwrap_err();
    let Error::InvalidOutput(v) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(v.iter().next().unwrap().field, "progress.outputs[0].step");
    d.exec(JobCommand::Heartbeat(Heartbeat {
        lease_id: lease.clone(),
        progress: StepProgress {
            percent: 40.0,
            outputs: vec![sampled_on_request()],
            ..Default::default()
        },
    }))
    .unwrap();
    assert_eq!(d.job.state(), Some(JobState::Processing));
    assert_eq!(d.job.reviewables().requested[&15].samples.len(), 1);
    // The progress kept for the step does not carry them again.
    let rec = d.job.step(&StepId::new("train")).unwrap();
    assert!(rec.progress.as_ref().unwrap().outputs.is_empty());

    // The completion reports the same file again: it counts once.
    let mut done = outputs_for(&StepKind::new(StepKind::TRAIN), lease);
    done.epochs.push(sampled_on_request());
    d.exec(JobCommand::CompleteStep(done)).unwrap();
    assert_eq!(d.job.reviewables().requested[&15].samples.len(), 1);

    // The view folds the same events to the same outputs.
    let mut status: Option<JobStatus> = None;
    for (i, e) in d.events.iter().enumerate() {
        let meta = EventMeta {
            sequence: i as u64 + 1,
            position: i as u64 + 1,
            recorded_at: d.clock_now(),
        };
        status = JobStatus::fold(status, meta, e);
    }
    let status = status.unwrap();
    assert_eq!(&status.epochs, d.job.epochs());
    assert_eq!(status.requested, d.job.reviewables().requested);
}

#[test]
fn the_suggested_epoch_has_the_lowest_validation_loss_else_training_loss() {
    let epoch = |n: u32, loss: f64, val: Option<f64>| EpochOutput {
        epoch: n,
        lora: Some(artifact(ArtifactKind::Lora, &format!("e{n}"), Some(n))),
        loss: Some(loss),
        validation_loss: val,
        ..Default::default()
    };
    let by_val = crate::artifact::Suggestion::among(&[
        epoch(1, 0.30, Some(0.20)),
        epoch(2, 0.10, Some(0.113)),
        epoch(3, 0.05, Some(0.15)),
    ])
    .unwrap();
    assert_eq!(
        (by_val.epoch, by_val.basis),
        (2, SuggestionBasis::ValidationLoss)
    );
    assert_eq!(
        by_val.reason(),
        "epoch 2: lowest validation loss 0.113 of 3 saved epochs"
    );
    let by_train =
        crate::artifact::Suggestion::among(&[epoch(1, 0.3, None), epoch(2, 0.1, None)]).unwrap();
    assert_eq!(
        (by_train.epoch, by_train.basis),
        (2, SuggestionBasis::TrainingLoss)
    );
    assert!(
        by_train.reason().contains("no validation loss"),
        "{}",
        by_train.reason()
    );
    let no_lora = EpochOutput {
        lora: None,
        ..epoch(4, 0.01, Some(0.01))
    };
    assert_eq!(crate::artifact::Suggestion::among(&[no_lora]), None);

    // The aggregate's canned review (training losses only) suggests its lowest.
    let mut d = Driver::new();
    d.run_to_review();
    let s = d.job.reviewables().suggestion().unwrap();
    assert_eq!((s.epoch, s.basis), (2, SuggestionBasis::TrainingLoss));
}

#[test]
fn sample_settings_are_job_parameters_with_the_catalogues_limits() {
    let mut d = Driver::new();
    let mut spec = sample_spec();
    spec.params
        .insert("sample_steps".into(), ParamValue::Int(500));
    spec.params
        .insert("sample_sampler".into(), ParamValue::Str("plms".into()));
    let err = given(&d)
        .when(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec: spec.clone(),
        }))
        .inspect_result()
        .unwrap_err();
    let Error::InvalidSpec(v) = err else {
        panic!("{err:?}")
    };
    let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["params.sample_sampler", "params.sample_steps"]);
    assert!(
        v.iter().any(|v| v
            .description
            .contains("sample_steps 500 is above the maximum 150")),
        "{v:?}"
    );

    spec.params
        .insert("sample_steps".into(), ParamValue::Int(8));
    spec.params
        .insert("sample_sampler".into(), ParamValue::Str("euler".into()));
    spec.sample_prompts.clear();
    d.create_with(spec);
    let params = d.job.params().clone();
    let s = SampleSettings::of(&params, &[], &SampleSettings::default());
    assert_eq!((s.steps, s.sampler.as_str()), (8, "euler"));
    assert_eq!((s.width, s.height, s.seed), (512, 512, 42));
    // A job without prompts is told it gets default ones.
    let w = warnings(d.job.spec().unwrap(), &params);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("default prompts"), "{w:?}");
    assert!(warnings(&sample_spec(), &Params::new()).is_empty());
}

#[test]
fn sample_now_overrides_are_checked_against_the_job_model_and_engine() {
    let catalogue = Catalogue::builtin();
    let limits = Limits::default();
    let mut tiny = sample_spec();
    tiny.base_model = "tiny-sd".into();
    let ok = SampleOverrides {
        prompts: vec!["a red circle".into()],
        steps: Some(4),
        width: Some(128),
        height: Some(64),
        ..Default::default()
    };
    assert_eq!(ok.check(&tiny, &catalogue, &limits), Ok(()));
    let bad = SampleOverrides {
        prompts: vec![" ".into()],
        steps: Some(0),
        width: Some(512),
        guidance_scale: Some(f64::NAN),
        ..Default::default()
    };
    let v = bad.check(&tiny, &catalogue, &limits).unwrap_err();
    let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["prompts[0]", "guidance_scale", "steps", "width"]);
    let width = v.iter().find(|v| v.field == "width").unwrap();
    assert!(
        width
            .description
            .contains("sample_width 512 is above the maximum 256 for base model tiny-sd"),
        "{width:?}"
    );
}
