//! A `JobCreated` written by release 1.0 of the event schema still loads.

use cqrs_es::persist::SerializedEvent;
use serde_json::json;

use crate::catalogue::{Engine, ParamValue};
use crate::job::upcast::upcasters;
use crate::job::{JobEvent, JobState, replay};

fn old_job_created() -> SerializedEvent {
    SerializedEvent {
        aggregate_id: "job-legacy".into(),
        sequence: 1,
        aggregate_type: "TrainingJob".into(),
        event_type: "JobCreated".into(),
        event_version: "1.0".into(),
        payload: json!({
            "JobCreated": {
                "job_id": "job-legacy",
                "tenant": "acme",
                "model": "sd15",
                "engine": "kohya",
                "params": { "epochs": 4, "learning_rate": 0.0002 },
                "dataset_uri": "s3://bucket/ds.zip",
                "created_at": "2025-03-01T10:00:00Z"
            }
        }),
        metadata: json!({}),
    }
}

#[test]
fn job_created_v1_is_upcast_to_the_current_shape() {
    let upcasters = upcasters();
    let mut event = old_job_created();
    for u in &upcasters {
        if u.can_upcast(&event.event_type, &event.event_version) {
            event = u.upcast(event);
        }
    }
    assert_eq!(event.event_version, "2.0.0");
    let event: JobEvent =
        serde_json::from_value(event.payload).expect("upcast payload deserialises");
    let JobEvent::JobCreated(created) = &event else {
        panic!("{event:?}")
    };
    assert_eq!(created.spec.engine, Engine::Kohya);
    assert_eq!(created.spec.base_model.as_str(), "sd15");
    assert_eq!(created.spec.dataset.uri, "s3://bucket/ds.zip");
    assert_eq!(created.spec.naming.subject, "job-legacy");
    assert_eq!(created.params["epochs"], ParamValue::Int(4));
    let job = replay([event]);
    assert_eq!(job.state(), Some(JobState::Pending));
}

#[test]
fn current_events_are_left_alone() {
    let upcasters = upcasters();
    assert!(
        !upcasters
            .iter()
            .any(|u| u.can_upcast("JobCreated", "2.0.0"))
    );
    assert!(
        !upcasters
            .iter()
            .any(|u| u.can_upcast("StepQueued", "1.0.0"))
    );
}
