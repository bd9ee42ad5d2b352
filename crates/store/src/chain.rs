//! The audit chain: how each event's link is computed, and what the server
//! key signs.
//!
//! # Links (chain `2`, written since events are signed)
//! Each event's `hash` metadata is its link:
//!
//! ```text
//! hex(SHA-256(canonical_json(["loraflow/chain/2", prev_link, job_id, sequence,
//!                             event_type, event_version, payload, metadata])))
//! ```
//!
//! where `prev_link` is the `hash` of the job's previous event (64 zeros for
//! its first), `payload` is the payload as stored (before any upcasting) and
//! `metadata` is every metadata key except the link fields themselves
//! (`hash`, `prev_hash`, `sig`): actor, tenant, `recorded_at`, request id,
//! `chain` and `key_id` are all covered. `canonical_json` writes object keys
//! sorted and no whitespace. `sig` is the Ed25519 signature (hex) of
//! [`event_message`] by the key `key_id`; a job's head and the feed's
//! checkpoints are signed the same way ([`head_message`],
//! [`checkpoint_message`]). Each message starts with its own tag, so no
//! signature can be passed off as another kind.
//!
//! # Links of chain 1 (before signing)
//! Events written before signing carry no `chain` key and an unkeyed hash
//! over the previous hash, type, version and payload ([`event_hash_v1`]).
//! They still verify as a chain, but anyone with write access to the
//! database can recompute them, so an audit reports them as unsigned, never
//! as valid. Signed events continue a job's chain from its last unkeyed hash.
//!
//! Concurrency needs no lock: two writers that chain from the same
//! predecessor write the same (job, sequence) and one of them conflicts.

use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::event::{HASH, PREV_HASH, Position, SIG};

/// The `prev_hash` of a job's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `value` as canonical JSON: sorted keys, no whitespace, serde_json's
/// number and string formatting.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &[], &mut out);
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// A string as JSON, escaped as serde_json escapes it.
fn write_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// `value` as canonical JSON into `out`, leaving out the top-level object
/// keys in `skip`. Writes into one buffer, without copying the value.
fn write_canonical(value: &Value, skip: &[&str], out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> =
                map.keys().filter(|k| !skip.contains(&k.as_str())).collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write_canonical(&map[k], &[], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, &[], out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// The current chain scheme, as written in the `chain` metadata.
pub const CHAIN_VERSION: &str = "2";

/// The unkeyed hash of an event written before signing (chain 1).
pub fn event_hash_v1(
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

/// The metadata a link covers: all of it but `hash`, `prev_hash` and `sig`.
pub fn covered_metadata(metadata: &Value) -> Value {
    let mut m = match metadata {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for k in [HASH, PREV_HASH, SIG] {
        m.remove(k);
    }
    Value::Object(m)
}

/// The link of an event (chain 2); `metadata` as stored (the link fields
/// are left out here). The hashed text is
/// `canonical_json(["loraflow/chain/2", prev_link, job_id, sequence,
/// event_type, event_version, payload, covered_metadata(metadata)])`,
/// written straight into one buffer (this runs for every event of a job on
/// every command).
pub fn event_link(
    prev_link: &str,
    job_id: &str,
    sequence: u64,
    event_type: &str,
    event_version: &str,
    payload: &Value,
    metadata: &Value,
) -> String {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"[\"loraflow/chain/2\",");
    for s in [prev_link, job_id] {
        write_str(s, &mut out);
        out.push(b',');
    }
    let _ = write!(out, "{sequence},");
    for s in [event_type, event_version] {
        write_str(s, &mut out);
        out.push(b',');
    }
    write_canonical(payload, &[], &mut out);
    out.push(b',');
    match metadata {
        Value::Object(_) => write_canonical(metadata, &[HASH, PREV_HASH, SIG], &mut out),
        _ => out.extend_from_slice(b"{}"),
    }
    out.push(b']');
    hex::encode(Sha256::digest(&out))
}

/// What an event's `sig` signs: its link.
pub fn event_message(link: &str) -> Vec<u8> {
    canonical_json(&json!(["loraflow/event/2", link])).into_bytes()
}

/// What a job head's signature signs.
pub fn head_message(job_id: &str, sequence: u64, link: &str) -> Vec<u8> {
    canonical_json(&json!(["loraflow/head/1", job_id, sequence, link])).into_bytes()
}

/// What a feed checkpoint's signature signs.
pub fn checkpoint_message(position: Position, root: &str) -> Vec<u8> {
    canonical_json(&json!(["loraflow/checkpoint/1", position, root])).into_bytes()
}

/// The feed's running root after one more event: SHA-256 over the root so
/// far, the event's position, job, sequence and link. The root of an empty
/// feed is [`GENESIS_HASH`].
pub fn next_root(
    root: &str,
    position: Position,
    job_id: &str,
    sequence: u64,
    link: &str,
) -> String {
    let text = canonical_json(&json!([
        "loraflow/root/1",
        root,
        position,
        job_id,
        sequence,
        link
    ]));
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A job's signed head: the last sequence and link the store wrote for it,
/// kept apart from the events (table `job_heads`) and written in the same
/// transaction. A head ahead of the events reveals a truncated tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub job_id: String,
    pub sequence: u64,
    pub link: String,
    pub key_id: String,
    /// Ed25519 signature (hex) of [`head_message`].
    pub sig: String,
}

/// A signed checkpoint of the global feed: the running root (see
/// [`next_root`]) over every event up to `position`, in feed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub position: Position,
    pub root: String,
    pub key_id: String,
    /// Ed25519 signature (hex) of [`checkpoint_message`].
    pub sig: String,
    /// When it was signed (RFC 3339).
    pub signed_at: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let meta = json!({"recorded_at": "2026-01-01T00:00:00Z", "chain": "2"});
        let written = event_link(
            GENESIS_HASH,
            "j",
            1,
            "StepProgressed",
            "1.0.0",
            &payload,
            &meta,
        );
        let stored = payload.to_string();
        let read: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, payload, "floats read back exactly");
        assert_eq!(
            event_link(
                GENESIS_HASH,
                "j",
                1,
                "StepProgressed",
                "1.0.0",
                &read,
                &meta
            ),
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
    fn the_link_is_the_hash_of_its_canonical_definition() {
        let p = json!({"B": {"z": [1, 2.5, "é\"q"], "a": null}});
        let m = json!({"actor": "a", "hash": "h", "sig": "s", "prev_hash": "x", "tenant": "t"});
        let text = canonical_json(&json!([
            "loraflow/chain/2",
            "p",
            "j",
            7,
            "T",
            "1.0",
            p,
            covered_metadata(&m)
        ]));
        assert_eq!(
            event_link("p", "j", 7, "T", "1.0", &p, &m),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
    }

    #[test]
    fn the_link_covers_every_field_but_the_link_fields() {
        let p = json!({"JobCancelled": {"reason": "r"}});
        let m = json!({"actor": "alice", "tenant": "acme", "recorded_at": "t", "chain": "2", "key_id": "k"});
        let base = event_link("p", "j", 3, "JobCancelled", "1.0", &p, &m);
        let mut differs = vec![
            event_link("q", "j", 3, "JobCancelled", "1.0", &p, &m),
            event_link("p", "k", 3, "JobCancelled", "1.0", &p, &m),
            event_link("p", "j", 4, "JobCancelled", "1.0", &p, &m),
            event_link("p", "j", 3, "JobCreated", "1.0", &p, &m),
            event_link("p", "j", 3, "JobCancelled", "1.1", &p, &m),
            event_link(
                "p",
                "j",
                3,
                "JobCancelled",
                "1.0",
                &json!({"JobCancelled": {"reason": "s"}}),
                &m,
            ),
        ];
        for key in ["actor", "tenant", "recorded_at", "chain", "key_id"] {
            let mut m2 = m.clone();
            m2[key] = json!("forged");
            differs.push(event_link("p", "j", 3, "JobCancelled", "1.0", &p, &m2));
        }
        for d in &differs {
            assert_ne!(d, &base);
        }
        let mut with_links = m.clone();
        with_links["hash"] = json!("h");
        with_links["prev_hash"] = json!("p");
        with_links["sig"] = json!("s");
        assert_eq!(
            event_link("p", "j", 3, "JobCancelled", "1.0", &p, &with_links),
            base
        );
    }
}
