//! Webhooks in the job spec: checked on creation, kept in `JobCreated`, and
//! absent from specs stored before they existed.

use cqrs_es::test::TestFramework;

use crate::job::canned::{Driver, sample_spec};
use crate::job::*;
use crate::webhook::WebhookSpec;

#[test]
fn webhooks_are_kept_in_the_created_event() {
    let d = Driver::new();
    let mut spec = sample_spec();
    spec.webhooks = vec![WebhookSpec::new(
        "https://example.com/hooks",
        ["workflow:*", "step:completed"],
    )];
    let events = TestFramework::<TrainingJob>::with(d.services.clone())
        .given_no_previous_events()
        .when(JobCommand::Create(CreateJob {
            job_id: "job-1".into(),
            spec: spec.clone(),
        }))
        .inspect_result()
        .unwrap();
    let [JobEvent::JobCreated(created)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(created.spec.webhooks, spec.webhooks);
}

#[test]
fn bad_webhooks_are_refused_by_field_and_write_nothing() {
    let d = Driver::new();
    let mut spec = sample_spec();
    spec.webhooks = vec![
        WebhookSpec::new("file:///etc/passwd", ["workflow:started"]),
        WebhookSpec::new(
            "https://example.com/ok",
            ["workflow:started", "step:finished"],
        ),
    ];
    let err = TestFramework::<TrainingJob>::with(d.services.clone())
        .given_no_previous_events()
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
    assert_eq!(fields, ["webhooks[0].url", "webhooks[1].events[1]"]);
}

#[test]
fn a_spec_without_webhooks_serializes_as_before_and_old_specs_load() {
    let spec = sample_spec();
    let json = serde_json::to_value(&spec).unwrap();
    assert!(
        json.get("webhooks").is_none(),
        "an empty list is left out, so stored specs keep their shape: {json}"
    );
    let back: JobSpec = serde_json::from_value(json).unwrap();
    assert!(back.webhooks.is_empty());

    let mut with = sample_spec();
    with.webhooks = vec![WebhookSpec::new("https://example.com/h", ["*"])];
    let json = serde_json::to_value(&with).unwrap();
    assert_eq!(json["webhooks"][0]["events"][0], "*");
    assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), with);
}
