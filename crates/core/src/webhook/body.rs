//! The JSON body of a webhook request, and event ids.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event_types::event_type;
use crate::ids::{JobId, TenantId};
use crate::job::JobEvent;

/// The id of a job's event: `{job_id}:{sequence}`. It is the same on every
/// attempt and every URL, so a receiver can drop repeats by it.
pub fn event_id(job_id: &JobId, sequence: u64) -> String {
    format!("{job_id}:{sequence}")
}

/// What a webhook request carries, as JSON. The fields are stable; `payload`
/// is the event's current shape (old stored versions are upcast first), as
/// versioned by `event_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// [`event_id`]; also sent as the `Loraflow-Event-Id` header.
    pub id: String,
    /// The webhook event type (`step:completed`, see [`super::EVENT_TYPES`]).
    #[serde(rename = "type")]
    pub event_type: String,
    pub job_id: JobId,
    pub tenant: TenantId,
    /// The event's position in the global feed (increasing, with gaps).
    pub position: u64,
    /// The event's sequence in its job, from 1, without gaps.
    pub sequence: u64,
    /// When the event was recorded.
    pub timestamp: DateTime<Utc>,
    /// The job event's type name (`StepCompleted`, `JobCancelled`, ...).
    pub event: String,
    pub event_version: String,
    /// The job event's fields.
    pub payload: Value,
}

impl WebhookBody {
    pub fn new(
        job_id: &JobId,
        tenant: &TenantId,
        position: u64,
        sequence: u64,
        recorded_at: DateTime<Utc>,
        event: &JobEvent,
    ) -> Self {
        // Events serialize as `{"StepCompleted": {...}}`; the body gives the
        // name and the fields separately.
        let payload = match serde_json::to_value(event) {
            Ok(Value::Object(mut m)) if m.len() == 1 => m
                .remove(event.name())
                .unwrap_or(Value::Object(Default::default())),
            Ok(other) => other,
            Err(_) => Value::Null,
        };
        Self {
            id: event_id(job_id, sequence),
            event_type: event_type(event).to_owned(),
            job_id: job_id.clone(),
            tenant: tenant.clone(),
            position,
            sequence,
            timestamp: recorded_at,
            event: event.name().to_owned(),
            event_version: event.event_version(),
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::canned::Driver;

    #[test]
    fn the_body_names_the_event_and_carries_its_fields() {
        let mut d = Driver::new();
        d.create();
        let created = &d.events[0];
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let body = WebhookBody::new(&"j1".into(), &"acme".into(), 42, 1, at, created);
        assert_eq!(body.id, "j1:1");
        assert_eq!(body.event_type, "workflow:created");
        assert_eq!(body.event, "JobCreated");
        assert_eq!(body.event_version, "2.0.0");
        assert_eq!(body.payload["spec"]["tenant"], "acme");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["type"], "workflow:created");
        assert_eq!(json["position"], 42);
        assert_eq!(json["timestamp"], "2026-01-01T00:00:00Z");
        let back: WebhookBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);
    }
}
