//! `JobEventRecord`: one stored event on the wire.
//!
//! The payload travels as the JSON the store holds, not as a typed message,
//! so the wire contract does not change when an event's shape does; readers
//! switch on `event_type` and `event_version`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use loraflow_core::ids::JobId;
use loraflow_core::job::JobEvent;

use super::time::timestamp;
use crate::pb::v1 as pb;

/// A stored event, as the event store hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent<'a> {
    /// Position in the global feed.
    pub position: u64,
    /// Sequence within the job, from 1.
    pub sequence: u64,
    pub job_id: &'a JobId,
    pub event_type: &'a str,
    pub event_version: &'a str,
    /// The payload exactly as stored.
    pub payload: &'a serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    pub metadata: &'a BTreeMap<String, String>,
}

impl From<StoredEvent<'_>> for pb::JobEventRecord {
    fn from(e: StoredEvent<'_>) -> Self {
        Self {
            position: e.position,
            sequence: e.sequence,
            job_id: e.job_id.0.clone(),
            event_type: e.event_type.to_owned(),
            event_version: e.event_version.to_owned(),
            payload_json: e.payload.to_string(),
            recorded_at: Some(timestamp(e.recorded_at)),
            metadata: e.metadata.clone(),
        }
    }
}

impl pb::JobEventRecord {
    /// The record of `event` in its current version, serialised as the
    /// cqrs-es stores serialise payloads (`serde_json::to_value`).
    pub fn from_event(
        position: u64,
        sequence: u64,
        job_id: &JobId,
        event: &JobEvent,
        recorded_at: DateTime<Utc>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Self, serde_json::Error> {
        let payload = serde_json::to_value(event)?;
        Ok(Self {
            position,
            sequence,
            job_id: job_id.0.clone(),
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload_json: payload.to_string(),
            recorded_at: Some(timestamp(recorded_at)),
            metadata,
        })
    }

    /// The payload as a domain event. Works for payloads in the current
    /// version; older versions must go through the store's upcasters first.
    pub fn event(&self) -> Result<JobEvent, serde_json::Error> {
        serde_json::from_str(&self.payload_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::job::canned::histories;

    #[test]
    fn every_canned_event_round_trips_through_its_record() {
        let job_id = JobId::new("job-1");
        let at = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let meta: BTreeMap<_, _> = [("request_id".to_owned(), "r-1".to_owned())].into();
        for (i, event) in histories::published().iter().enumerate() {
            let seq = i as u64 + 1;
            let r =
                pb::JobEventRecord::from_event(100 + seq, seq, &job_id, event, at, meta.clone())
                    .unwrap();
            assert_eq!(r.event_type, event.name());
            assert_eq!(&r.event().unwrap(), event);
            assert_eq!(r.metadata, meta);
        }
    }

    #[test]
    fn stored_payloads_travel_as_they_are() {
        let payload = serde_json::json!({"JobCreated": {"old": "shape"}});
        let job_id = JobId::new("job-9");
        let meta = BTreeMap::new();
        let r = pb::JobEventRecord::from(StoredEvent {
            position: 5,
            sequence: 1,
            job_id: &job_id,
            event_type: "JobCreated",
            event_version: "1.0",
            payload: &payload,
            recorded_at: DateTime::from_timestamp(0, 0).unwrap(),
            metadata: &meta,
        });
        assert_eq!(r.event_version, "1.0");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&r.payload_json).unwrap(),
            payload
        );
    }
}
