//! Given/when/then: the base model a job names must be in the catalogue and
//! enabled, at create and again at submit.

use cqrs_es::test::TestFramework;

use crate::catalogue::Catalogue;
use crate::job::canned::{Driver, histories, sample_dataset, sample_spec};
use crate::job::*;
use crate::validation::{FieldViolation, Violations};

fn create(base_model: &str) -> JobCommand {
    let mut spec = sample_spec();
    spec.base_model = base_model.into();
    JobCommand::Create(CreateJob {
        job_id: "job-1".into(),
        spec,
    })
}

fn invalid_base_model(description: &str) -> Error {
    Error::InvalidSpec(Violations(vec![FieldViolation::new(
        "base_model",
        description,
    )]))
}

#[test]
fn create_with_an_unknown_base_model_lists_the_available_ones() {
    let d = Driver::new();
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given_no_previous_events()
        .when(create("sd35-turbo"))
        .then_expect_error(invalid_base_model(
            "unknown base model \"sd35-turbo\"; available: tiny-sd, sd15, sd21, sdxl, flux-dev (or a model the tenant registered: `loraflow models register`)",
        ));
}

#[test]
fn create_with_a_disabled_base_model_is_refused() {
    let mut catalogue = Catalogue::builtin();
    catalogue
        .base_models
        .iter_mut()
        .find(|m| m.id.as_str() == "sd15")
        .expect("sd15 is built in")
        .disabled = true;
    let d = Driver::with_catalogue(catalogue);
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given_no_previous_events()
        .when(create("sd15"))
        .then_expect_error(invalid_base_model(
            "base model sd15 is disabled by the operator",
        ));
    // Other models of the same catalogue are still accepted.
    let events = TestFramework::<TrainingJob>::with(d.services.clone())
        .given_no_previous_events()
        .when(create("sd21"))
        .inspect_result()
        .expect("sd21 is enabled");
    assert!(matches!(events.as_slice(), [JobEvent::JobCreated(_)]));
}

#[test]
fn submit_after_the_base_model_left_the_catalogue_is_refused() {
    let mut catalogue = Catalogue::builtin();
    catalogue.base_models.retain(|m| m.id.as_str() != "sd15");
    let d = Driver::with_catalogue(catalogue);
    TestFramework::<TrainingJob>::with(d.services.clone())
        .given(histories::created())
        .when(JobCommand::Submit(SubmitJob {
            dataset: sample_dataset(),
        }))
        .then_expect_error(invalid_base_model(
            "base model sd15 is no longer in the catalogue",
        ));
}
