//! Events as the store returns them: with their global position, sequence,
//! metadata and the time they were recorded.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use loraflow_core::ids::{JobId, TenantId};
use loraflow_core::job::{JobEvent, TrainingJob};
use loraflow_core::views::EventMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// A global position in the event feed. Positions grow in the order events
/// become readable; they have gaps (see `crates/store/README.md`). 0 is
/// "before the first event".
pub type Position = u64;

/// Metadata of a command, stored with each of its events (request id, user,
/// trace id, ...). The keys in [`RESERVED_METADATA`] are written by the store.
pub type Metadata = BTreeMap<String, String>;

/// When the store recorded the event (RFC 3339, UTC).
pub const RECORDED_AT: &str = "recorded_at";
/// The job's tenant.
pub const TENANT: &str = "tenant";
/// Hex SHA-256 of this event in the job's hash chain: its link.
pub const HASH: &str = "hash";
/// `HASH` of the job's previous event (64 zeros for the first).
pub const PREV_HASH: &str = "prev_hash";
/// The chain scheme of the event: `"2"` (keyed: the link covers the
/// metadata, and `sig` signs it). Events written before signing have none.
pub const CHAIN: &str = "chain";
/// The Ed25519 signature of the event's link (hex), by the key `key_id`.
pub const SIG: &str = "sig";
/// The id of the key that signed the event (see `crate::keys`).
pub const KEY_ID: &str = "key_id";
/// Metadata keys the store writes; a caller's values for them are replaced.
pub const RESERVED_METADATA: [&str; 7] = [RECORDED_AT, TENANT, HASH, PREV_HASH, CHAIN, SIG, KEY_ID];

/// The most events one job may have. Positions on PostgreSQL keep the
/// sequence in their low 20 bits.
pub const MAX_JOB_EVENTS: u64 = (1 << 20) - 1;

/// An event as stored, before upcasting: what the hash chain covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    pub position: Position,
    pub job_id: JobId,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
}

/// An event as the store returns it, upcast to the current shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub position: Position,
    pub job_id: JobId,
    pub sequence: u64,
    pub event_type: String,
    /// The version as stored; `payload` is upcast to the current version.
    pub event_version: String,
    pub payload: JobEvent,
    pub metadata: Metadata,
    /// From the `recorded_at` metadata; the Unix epoch for events written
    /// without it (by other tools).
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    pub fn tenant(&self) -> Option<TenantId> {
        self.metadata.get(TENANT).map(|t| TenantId::new(t.clone()))
    }

    pub fn hash(&self) -> Option<&str> {
        self.metadata.get(HASH).map(String::as_str)
    }

    /// What view folds need besides the event.
    pub fn meta(&self) -> EventMeta {
        EventMeta {
            position: self.position,
            sequence: self.sequence,
            recorded_at: self.recorded_at,
        }
    }
}

/// A metadata JSON object as a string map (non-string values as their JSON).
pub(crate) fn metadata_map(v: &Value) -> Metadata {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        _ => Metadata::new(),
    }
}

impl RawEvent {
    /// Upcast and deserialize.
    pub fn to_stored(&self, upcasters: &[Box<dyn EventUpcaster>]) -> Result<StoredEvent> {
        let needs_upcast = upcasters
            .iter()
            .any(|u| u.can_upcast(&self.event_type, &self.event_version));
        let payload: JobEvent = if needs_upcast {
            let mut e = SerializedEvent::new(
                self.job_id.to_string(),
                self.sequence as usize,
                <TrainingJob as cqrs_es::Aggregate>::TYPE.to_owned(),
                self.event_type.clone(),
                self.event_version.clone(),
                self.payload.clone(),
                Value::Null,
            );
            // The same fold cqrs-es applies on load.
            for u in upcasters {
                if u.can_upcast(&e.event_type, &e.event_version) {
                    e = u.upcast(e);
                }
            }
            serde_json::from_value(e.payload)?
        } else {
            JobEvent::deserialize(&self.payload).map_err(|e| {
                Error::serialization(format!(
                    "event {} of job {} ({} {}): {e}",
                    self.sequence, self.job_id, self.event_type, self.event_version
                ))
            })?
        };
        let metadata = metadata_map(&self.metadata);
        let recorded_at = metadata
            .get(RECORDED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::UNIX_EPOCH);
        Ok(StoredEvent {
            position: self.position,
            job_id: self.job_id.clone(),
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            payload,
            metadata,
            recorded_at,
        })
    }
}
