//! Given/when/then: a base model a tenant registered. The create decision
//! finds it by name for that tenant only, checks the job against its
//! family's rules, and records it in `JobCreated`; the step assignment
//! carries its URI; the scheduler offers its steps to any executor of the
//! engine (none has it installed).

use chrono::DateTime;

use crate::catalogue::{CustomModel, Engine, ModelFamily, ParamValue};
use crate::clock::Clock;
use crate::executor::{Capabilities, InstalledModel};
use crate::ids::TenantId;
use crate::job::canned::{Driver, sample_spec};
use crate::job::*;
use crate::schedule::SchedulerState;
use crate::workflow::StepKind;

fn model() -> CustomModel {
    CustomModel {
        name: "studio-sd".into(),
        uri: "file:///srv/acme/models/studio-sd/".into(),
        label: String::new(),
        family: ModelFamily::Sd15,
        engines: vec![Engine::Native],
        min_vram_gb: 0,
        pixel_multiple: Some(16),
        evidence: "unet/config.json cross_attention_dim 32".into(),
        registered_at: DateTime::<chrono::Utc>::UNIX_EPOCH,
    }
}

fn driver() -> Driver {
    let d = Driver::new();
    d.services
        .custom_models
        .set(&TenantId::new("acme"), [model()]);
    d
}

fn spec() -> JobSpec {
    let mut spec = sample_spec();
    spec.base_model = "studio-sd".into();
    spec.params.insert("resolution".into(), ParamValue::Int(64));
    spec
}

#[test]
fn a_job_on_a_registered_model_records_it_and_hands_its_uri_to_the_executor() {
    let mut d = driver();
    d.create_with(spec()).submit();
    let JobEvent::JobCreated(created) = &d.events[0] else {
        panic!("{:?}", d.events)
    };
    assert_eq!(created.custom_model, Some(model()));
    assert_eq!(d.job.custom_model(), Some(&model()));
    // Resolved against the sd15 family's rules (its defaults filled in).
    assert_eq!(d.job.params().get("epochs"), Some(&ParamValue::Int(10)));
    assert_eq!(d.job.params().get("resolution"), Some(&ParamValue::Int(64)));
    let lease = d.lease("validate");
    d.complete("validate", lease);
    let lease = d.lease("label");
    d.complete("label", lease);
    let lease = d.lease("train");
    let a = d.job.assignment(&lease, &d.services.catalogue).unwrap();
    assert_eq!(a.base_model.as_str(), "studio-sd");
    assert_eq!(a.base_model_uri.as_deref(), Some(model().uri.as_str()));
    assert_eq!(a.model_family, Some(ModelFamily::Sd15));
}

#[test]
fn another_tenant_cannot_name_it() {
    let mut d = driver();
    let mut spec = spec();
    spec.tenant = TenantId::new("other");
    let err = d
        .exec(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec,
        }))
        .unwrap_err();
    let Error::InvalidSpec(v) = err else {
        panic!("{err:?}")
    };
    assert_eq!(v.0[0].field, "base_model", "{v:?}");
    assert!(d.events.is_empty());
}

#[test]
fn its_parameters_follow_its_family_and_engines() {
    let mut d = driver();
    let mut bad = spec();
    bad.engine = Engine::Kohya;
    let err = d
        .exec(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec: bad,
        }))
        .unwrap_err();
    assert!(err.to_string().contains("kohya"), "{err}");
    let mut bad = spec();
    bad.params
        .insert("learning_rate".into(), ParamValue::Float(5.0));
    let err = d
        .exec(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec: bad,
        }))
        .unwrap_err();
    let Error::InvalidSpec(v) = err else {
        panic!("{err:?}")
    };
    assert!(v.iter().any(|f| f.field.contains("learning_rate")), "{v:?}");
}

#[test]
fn its_steps_go_to_any_executor_of_the_engine() {
    let mut d = driver();
    d.create_with(spec()).submit();
    for step in ["validate", "label"] {
        let lease = d.lease(step);
        d.complete(step, lease);
    }
    let mut state = SchedulerState::new(d.services.catalogue.clone());
    for (i, e) in d.events.iter().enumerate() {
        state.apply(i as u64 + 1, d.job.id().unwrap(), e);
    }
    // A worker that lists only tiny-sd as installed still gets the train
    // step: it fetches the registered model.
    let caps = Capabilities {
        kinds: [StepKind::from("train")].into(),
        engines: [Engine::Native].into(),
        base_models: [InstalledModel::new(Engine::Native, "tiny-sd")].into(),
        ..Capabilities::default()
    };
    let picked = state.pick(&"w1".into(), &caps, d.clock.now());
    assert_eq!(picked.map(|s| s.kind.as_str()), Some("train"));
}
