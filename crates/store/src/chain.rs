//! The audit hash chain. Each event's `hash` metadata is
//!
//! ```text
//! hex(SHA-256(prev_hash ‖ "\n" ‖ event_type ‖ "\n" ‖ event_version ‖ "\n" ‖ canonical_json(payload)))
//! ```
//!
//! where `prev_hash` is the `hash` of the job's previous event (64 zeros for
//! its first) and `canonical_json` writes the payload as stored (before any
//! upcasting) with object keys sorted and no whitespace. The newline
//! separators keep type and version from running into each other (neither
//! can contain one).
//!
//! Concurrency needs no lock: two writers that chain from the same
//! predecessor write the same (job, sequence) and one of them conflicts.

use std::collections::HashMap;
use std::fmt::Write as _;

use loraflow_core::ids::JobId;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::event::{HASH, PREV_HASH, Position, RawEvent};

/// The `prev_hash` of a job's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `value` as canonical JSON: sorted keys, no whitespace, serde_json's
/// number and string formatting.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// The chain hash of one event.
pub fn event_hash(
    prev_hash: &str,
    event_type: &str,
    event_version: &str,
    payload: &Value,
) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(event_type.as_bytes());
    h.update(b"\n");
    h.update(event_version.as_bytes());
    h.update(b"\n");
    h.update(canonical_json(payload).as_bytes());
    hex::encode(h.finalize())
}

/// What is wrong at the first event that does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFault {
    /// The event carries no `hash` (or no `prev_hash`).
    Unhashed,
    /// A sequence is missing before this event (an event was removed).
    Gap { expected_sequence: u64 },
    /// `prev_hash` is not the previous event's `hash`.
    BrokenLink { expected: String, found: String },
    /// `hash` does not match the event's content (it was altered).
    Altered { expected: String, found: String },
}

/// The first event of a job whose chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "hash chain of job {job_id} breaks at sequence {sequence} (position {position}): {fault:?}"
)]
pub struct ChainError {
    pub job_id: JobId,
    pub sequence: u64,
    pub position: Position,
    pub fault: ChainFault,
}

/// Verify the chains of the jobs in `events` (each job's events in sequence
/// order, from its first; jobs may be interleaved, as in the feed). Returns
/// the first event, in the order given, that does not verify.
pub fn verify_chain<'a>(events: impl IntoIterator<Item = &'a RawEvent>) -> Result<(), ChainError> {
    // Per job: the next sequence expected and the hash to chain from.
    let mut heads: HashMap<&JobId, (u64, String)> = HashMap::new();
    for e in events {
        let (next, prev) = heads
            .entry(&e.job_id)
            .or_insert_with(|| (1, GENESIS_HASH.to_owned()));
        let fail = |fault| ChainError {
            job_id: e.job_id.clone(),
            sequence: e.sequence,
            position: e.position,
            fault,
        };
        if e.sequence != *next {
            return Err(fail(ChainFault::Gap {
                expected_sequence: *next,
            }));
        }
        let field = |k: &str| e.metadata.get(k).and_then(Value::as_str);
        let (Some(hash), Some(prev_hash)) = (field(HASH), field(PREV_HASH)) else {
            return Err(fail(ChainFault::Unhashed));
        };
        if prev_hash != prev {
            return Err(fail(ChainFault::BrokenLink {
                expected: prev.clone(),
                found: prev_hash.to_owned(),
            }));
        }
        let expected = event_hash(prev, &e.event_type, &e.event_version, &e.payload);
        if hash != expected {
            return Err(fail(ChainFault::Altered {
                expected,
                found: hash.to_owned(),
            }));
        }
        *next += 1;
        *prev = hash.to_owned();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chain(n: u64) -> Vec<RawEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let payload = json!({"StepProgressed": {"b": seq, "a": [1.5, "x"]}});
                let hash = event_hash(&prev, "StepProgressed", "1.0.0", &payload);
                let e = RawEvent {
                    position: seq * 10,
                    job_id: JobId::new("j"),
                    sequence: seq,
                    event_type: "StepProgressed".into(),
                    event_version: "1.0.0".into(),
                    payload,
                    metadata: json!({ "hash": hash, "prev_hash": prev }),
                };
                prev = hash;
                e
            })
            .collect()
    }

    /// Regression: a `loraflow demo` job failed its audit at a progress
    /// event. serde_json's default float parsing is not correctly rounded,
    /// so a stored loss read back as a neighbouring f64 and the
    /// recomputed hash differed; the workspace enables `float_roundtrip`.
    #[test]
    fn hashes_survive_storing_floats_as_text() {
        let payload = json!({"StepProgressed": {
            "samples_per_sec": 52.39581158361363_f64,
            "loss": 1.1911007165908813_f64,
            "percent": 6.25_f64,
        }});
        let written = event_hash(GENESIS_HASH, "StepProgressed", "1.0.0", &payload);
        let stored = payload.to_string();
        let read: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, payload, "floats read back exactly");
        assert_eq!(
            event_hash(GENESIS_HASH, "StepProgressed", "1.0.0", &read),
            written
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = json!({"b": {"z": 1, "y": [true, null]}, "a": "é\"q", "c": 0.1});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"é\"q","b":{"y":[true,null],"z":1},"c":0.1}"#
        );
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(()));
    }

    #[test]
    fn the_first_altered_event_is_reported() {
        let mut events = chain(5);
        events[2].payload = json!({"StepProgressed": {"b": 99}});
        let err = verify_chain(&events).unwrap_err();
        assert_eq!((err.sequence, err.position), (3, 30));
        assert!(matches!(err.fault, ChainFault::Altered { .. }));
    }

    #[test]
    fn a_removed_event_is_reported() {
        let mut events = chain(5);
        events.remove(1);
        let err = verify_chain(&events).unwrap_err();
        assert_eq!(err.sequence, 3);
        assert_eq!(
            err.fault,
            ChainFault::Gap {
                expected_sequence: 2
            }
        );
    }

    #[test]
    fn a_rehashed_event_breaks_the_next_link() {
        let mut events = chain(4);
        // A forger recomputes the altered event's own hash ...
        events[1].payload = json!({"forged": true});
        let prev = events[0].metadata["hash"].as_str().unwrap().to_owned();
        let h = event_hash(&prev, "StepProgressed", "1.0.0", &events[1].payload);
        events[1].metadata["hash"] = json!(h);
        // ... and the next event's link gives it away.
        let err = verify_chain(&events).unwrap_err();
        assert_eq!(err.sequence, 3);
        assert!(matches!(err.fault, ChainFault::BrokenLink { .. }));
    }
}
