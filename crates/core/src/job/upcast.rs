//! Upcasters: old event shapes rewritten to the current one on load, so a log
//! written by any release replays in every later one.
//!
//! `JobCreated` 1.0 was flat:
//! `{"JobCreated": {"job_id", "tenant", "model", "engine", "params", "dataset_uri", "created_at"}}`.
//! 2.0 nests the client's request in `spec` and keeps the resolved `params`.
//!
//! Fields added later with a serde default need no new version: a payload
//! written before them loads as it is (`spec.webhooks` was added this way,
//! and a 2.0 `JobCreated` without it has no webhooks). They still bump the
//! minor version, so a reader can tell which payloads may carry them:
//! `StepLeased` 1.1 (`instance`) and `LeaseExpired` 1.1 (`restarted_as`, and
//! the cause `ExecutorRestarted`), `JobApproved` 1.1 (`step`) and
//! `StepProgressed` 1.1 (the progress' `outputs`) load 1.0 payloads
//! unchanged.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::{Value, json};

use super::events::JOB_CREATED_VERSION;

fn job_created_v1_to_v2(payload: Value) -> Value {
    let Some(old) = payload.get("JobCreated") else {
        return payload;
    };
    let field = |name: &str| old.get(name).cloned().unwrap_or(Value::Null);
    let job_id = field("job_id");
    let params = match field("params") {
        Value::Null => json!({}),
        p => p,
    };
    json!({
        "JobCreated": {
            "job_id": job_id,
            "spec": {
                "tenant": field("tenant"),
                "base_model": field("model"),
                "engine": field("engine"),
                "params": params,
                "dataset": { "uri": field("dataset_uri") },
                "sample_prompts": [],
                "priority": 0,
                // 1.0 had no naming: the job id is the only stable name there is.
                "naming": { "subject": job_id, "version": "v1" },
                "labels": {},
            },
            "params": params,
            "created_at": field("created_at"),
        }
    })
}

/// Every upcaster of `TrainingJob` events; give them to the event store.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "JobCreated",
        JOB_CREATED_VERSION,
        Box::new(job_created_v1_to_v2),
    ))]
}
