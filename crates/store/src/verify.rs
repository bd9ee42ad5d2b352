//! Verifying a job's chain and head: the first bad event and what is wrong
//! with it ([`ChainFault`]).
//!
//! Two depths: [`Depth::Links`] recomputes every link (SHA-256, cheap) and
//! checks the head's signature only; one Ed25519 verification covers the
//! whole chain, since the head signs the last link and each link covers
//! the one before. The engine does this on every load of a job for a
//! command. [`Depth::Full`] also checks every event's own signature, which
//! tells a replaced signature from a rebuilt chain and names the first
//! event that was changed; `replay` and `audit verify` use it.

use loraflow_core::ids::JobId;
use serde_json::Value;

use crate::chain::{
    CHAIN_VERSION, GENESIS_HASH, Head, event_hash_v1, event_link, event_message, head_message,
};
use crate::event::{CHAIN, HASH, KEY_ID, PREV_HASH, Position, RawEvent, SIG};
use crate::keys::{Keyring, SigCheck};

/// What is wrong at the first event that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainFault {
    /// The event's content (payload, type, version or metadata) is not what
    /// was signed; or the chain was rebuilt after an edit.
    Edited,
    /// Events are missing before this one (a sequence gap, or later events
    /// renumbered to close it).
    Removed,
    /// The event was written at another sequence than it now has.
    Reordered,
    /// The job's signed head names more events than the store holds (its
    /// tail was deleted), or the head itself is missing.
    Truncated,
    /// A signature does not verify, is missing, or is by a key that is not
    /// trusted.
    BadSignature,
    /// Written by the old unkeyed scheme (before signing), or without any
    /// hash: anyone with write access to the database could have written it.
    Unsigned,
}

impl ChainFault {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Removed => "removed",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::BadSignature => "bad signature",
            Self::Unsigned => "unsigned (written before signing)",
        }
    }
}

impl std::fmt::Display for ChainFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first event of a job that does not verify. For [`ChainFault::Removed`]
/// `sequence` is the first missing sequence and `position` that of the event
/// after the gap; for [`ChainFault::Truncated`], `position` is the last event
/// left (the cut follows it; 0 when none is left).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the log of job {job_id} was tampered with: {fault} at sequence {sequence} (position {position}): {detail}"
)]
pub struct ChainError {
    pub job_id: JobId,
    pub sequence: u64,
    pub position: Position,
    pub fault: ChainFault,
    pub detail: String,
}

/// How much to check; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Links,
    Full,
}

/// Events of chain 1 at the start of a job (written before signing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedPrefix {
    pub first_position: Position,
    pub last_sequence: u64,
}

/// What verifying one job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub job_id: JobId,
    pub events: u64,
    /// The job's first events are of the old unkeyed scheme.
    pub unsigned: Option<UnsignedPrefix>,
    /// The first event that does not verify, beyond an unsigned prefix.
    pub fault: Option<ChainError>,
}

impl ChainReport {
    /// Whether every event is signed and verifies, and the head matches.
    pub fn is_valid(&self) -> bool {
        self.unsigned.is_none() && self.fault.is_none()
    }

    /// What an auditor is told first: an unsigned prefix (it starts the
    /// job, so it comes first), else the fault.
    pub fn first_problem(&self) -> Option<ChainError> {
        match (&self.unsigned, &self.fault) {
            (Some(u), fault) => Some(ChainError {
                job_id: self.job_id.clone(),
                sequence: 1,
                position: u.first_position,
                fault: ChainFault::Unsigned,
                detail: match fault {
                    None => format!(
                        "sequences 1 to {} have only an unkeyed hash; they chain intact, but anyone with write access to the database could have rewritten them",
                        u.last_sequence
                    ),
                    Some(f) => format!(
                        "sequences 1 to {} have only an unkeyed hash, and then: {} at sequence {} (position {}): {}",
                        u.last_sequence, f.fault, f.sequence, f.position, f.detail
                    ),
                },
            }),
            (None, fault) => fault.clone(),
        }
    }

    /// `Err` with the first problem the command path cannot accept: any
    /// fault. An unsigned prefix alone is accepted by the caller's rules
    /// (see [`verify_job`]'s `legacy_until`).
    pub fn into_result(self) -> Result<Self, ChainError> {
        match self.fault {
            Some(f) => Err(f),
            None => Ok(self),
        }
    }
}

fn field<'a>(e: &'a RawEvent, k: &str) -> Option<&'a str> {
    e.metadata.get(k).and_then(Value::as_str)
}

fn link_at(e: &RawEvent, prev: &str, sequence: u64) -> String {
    event_link(
        prev,
        e.job_id.as_str(),
        sequence,
        &e.event_type,
        &e.event_version,
        &e.payload,
        &e.metadata,
    )
}

/// Verify one job: `events` in sequence order (as the store returns them),
/// `head` as stored. `legacy_until`: where the store began signing; a job
/// with no head whose events are all unsigned is accepted as written
/// before signing only if its last event is at or before it (`None`: never
/// judged, the audit reports the unsigned prefix anyway).
pub fn verify_job(
    job_id: &JobId,
    events: &[RawEvent],
    head: Option<&Head>,
    keys: &Keyring,
    depth: Depth,
    legacy_until: Option<Position>,
) -> ChainReport {
    verify_job_inner(job_id, events, head, keys, depth, legacy_until, None)
}

/// [`verify_job`], skipping the head's signature check when its signature
/// is `known_sig` (one this process wrote or already verified: the same
/// bytes were signed by a trusted key).
pub(crate) fn verify_job_inner(
    job_id: &JobId,
    events: &[RawEvent],
    head: Option<&Head>,
    keys: &Keyring,
    depth: Depth,
    legacy_until: Option<Position>,
    known_sig: Option<&str>,
) -> ChainReport {
    let mut report = ChainReport {
        job_id: job_id.clone(),
        events: events.len() as u64,
        unsigned: None,
        fault: None,
    };
    let fail = |e: &RawEvent, sequence: u64, fault: ChainFault, detail: String| ChainError {
        job_id: job_id.clone(),
        sequence,
        position: e.position,
        fault,
        detail,
    };
    let mut prev = GENESIS_HASH.to_owned();
    let mut signed_seen = false;
    // Full depth: the first signed event whose signature fails.
    let mut bad_sig: Option<ChainError> = None;
    for (i, e) in events.iter().enumerate() {
        let next = i as u64 + 1;
        if e.sequence > next {
            report.fault = Some(fail(
                e,
                next,
                ChainFault::Removed,
                format!(
                    "sequence {next} to {} missing before this event",
                    e.sequence - 1
                ),
            ));
            return report;
        }
        if e.sequence < next {
            report.fault = Some(fail(
                e,
                e.sequence,
                ChainFault::Reordered,
                format!("sequence {} appears twice", e.sequence),
            ));
            return report;
        }
        let stored_link = field(e, HASH);
        let stored_prev = field(e, PREV_HASH);
        match field(e, CHAIN) {
            None => {
                if signed_seen {
                    report.fault = Some(fail(
                        e,
                        e.sequence,
                        ChainFault::Unsigned,
                        "an event of the old unkeyed scheme after signed ones".into(),
                    ));
                    return report;
                }
                // Events of releases before the hash chain carry no hash;
                // the next event chained from the genesis hash.
                let next_prev = match stored_link {
                    None => GENESIS_HASH.to_owned(),
                    Some(stored_link) => {
                        let expected =
                            event_hash_v1(&prev, &e.event_type, &e.event_version, &e.payload);
                        if stored_prev != Some(prev.as_str()) || stored_link != expected {
                            let (fault, detail) = classify_v1(events, i, &prev);
                            report.fault = Some(fail(e, e.sequence, fault, detail));
                            return report;
                        }
                        expected
                    }
                };
                match &mut report.unsigned {
                    Some(u) => u.last_sequence = e.sequence,
                    None => {
                        report.unsigned = Some(UnsignedPrefix {
                            first_position: e.position,
                            last_sequence: e.sequence,
                        })
                    }
                }
                prev = next_prev;
            }
            Some(CHAIN_VERSION) => {
                signed_seen = true;
                let expected = link_at(e, &prev, e.sequence);
                if stored_link != Some(expected.as_str()) {
                    let (fault, sequence, detail) = classify_v2(events, i, &prev);
                    let at = if sequence < e.sequence && i > 0 {
                        &events[i - 1]
                    } else {
                        e
                    };
                    report.fault = Some(fail(at, sequence, fault, detail));
                    return report;
                }
                if depth == Depth::Full && bad_sig.is_none() {
                    let why = match (field(e, KEY_ID), field(e, SIG)) {
                        (Some(key_id), Some(sig)) => {
                            match keys.check(key_id, &event_message(&expected), sig) {
                                SigCheck::Valid => None,
                                SigCheck::Invalid => Some(format!(
                                    "the signature by key {key_id} does not sign this event's link"
                                )),
                                SigCheck::UnknownKey => Some(unknown_key(key_id, keys)),
                            }
                        }
                        _ => Some("the event has no signature".to_owned()),
                    };
                    if let Some(why) = why {
                        bad_sig = Some(fail(e, e.sequence, ChainFault::BadSignature, why));
                    }
                }
                prev = expected;
            }
            Some(other) => {
                report.fault = Some(fail(
                    e,
                    e.sequence,
                    ChainFault::Edited,
                    format!("unknown chain scheme {other:?}"),
                ));
                return report;
            }
        }
    }
    let last = events.last();
    let last_position = last.map_or(0, |e| e.position);
    let last_sequence = last.map_or(0, |e| e.sequence);
    let at_last = |sequence: u64, fault: ChainFault, detail: String| ChainError {
        job_id: job_id.clone(),
        sequence,
        position: last_position,
        fault,
        detail,
    };
    let Some(head) = head else {
        if events.is_empty() {
            return report;
        }
        if signed_seen {
            report.fault = Some(at_last(
                last_sequence,
                ChainFault::Truncated,
                "the job's signed head is missing (deleted from job_heads)".into(),
            ));
        } else if let Some(until) = legacy_until
            && last_position > until
        {
            report.fault = Some(ChainError {
                job_id: job_id.clone(),
                sequence: 1,
                position: events[0].position,
                fault: ChainFault::Unsigned,
                detail: format!(
                    "written with the old unkeyed scheme after the store began signing (at position {until}), and without a signed head"
                ),
            });
        } else {
            report.fault = bad_sig;
        }
        return report;
    };
    let head_sig = if known_sig == Some(head.sig.as_str()) {
        SigCheck::Valid
    } else {
        keys.check(
            &head.key_id,
            &head_message(job_id.as_str(), head.sequence, &head.link),
            &head.sig,
        )
    };
    match head_sig {
        SigCheck::Valid => {}
        SigCheck::Invalid => {
            report.fault = Some(at_last(
                head.sequence,
                ChainFault::BadSignature,
                format!(
                    "the signature of the job's head by key {} does not verify",
                    head.key_id
                ),
            ));
            return report;
        }
        SigCheck::UnknownKey => {
            report.fault = Some(at_last(
                head.sequence,
                ChainFault::BadSignature,
                format!("the job's head: {}", unknown_key(&head.key_id, keys)),
            ));
            return report;
        }
    }
    if head.sequence > last_sequence {
        report.fault = Some(at_last(
            last_sequence + 1,
            ChainFault::Truncated,
            format!(
                "the job's signed head ends at sequence {}, but the store holds {last_sequence} event(s): the tail was deleted",
                head.sequence
            ),
        ));
        return report;
    }
    if head.sequence < last_sequence {
        let e = &events[head.sequence as usize];
        report.fault = Some(fail(
            e,
            e.sequence,
            ChainFault::Edited,
            format!(
                "not covered by the job's signed head, which ends at sequence {}: written outside the store, or the head was rolled back",
                head.sequence
            ),
        ));
        return report;
    }
    if head.link != prev {
        // The links verify, so the chain was rebuilt after a change; the
        // first event whose own signature fails is where it was changed.
        report.fault = Some(match bad_sig {
            Some(b) => ChainError {
                fault: ChainFault::Edited,
                detail: format!(
                    "changed, and the chain rebuilt from it: the links verify, but {}",
                    b.detail
                ),
                ..b
            },
            None => at_last(
                last_sequence,
                ChainFault::Edited,
                format!(
                    "the chain was rebuilt: the links verify, but the job's signed head names another last link ({}); run `loraflow audit verify` for the first changed event",
                    head.link
                ),
            ),
        });
        return report;
    }
    report.fault = bad_sig;
    report
}

fn unknown_key(key_id: &str, keys: &Keyring) -> String {
    let trusted: Vec<&str> = keys.key_ids().collect();
    format!(
        "signed by key {key_id}, which is not trusted (trusted: {}); add its public key to [audit] trusted_keys or --public-key",
        if trusted.is_empty() {
            "none".to_owned()
        } else {
            trusted.join(", ")
        }
    )
}

/// Why the signed event `events[i]` does not link: the kind, the sequence
/// to report, and a detail.
fn classify_v2(events: &[RawEvent], i: usize, prev: &str) -> (ChainFault, u64, String) {
    let e = &events[i];
    let stored_link = field(e, HASH).unwrap_or_default();
    let stored_prev = field(e, PREV_HASH).unwrap_or_default();
    if stored_prev != prev && link_at(e, stored_prev, e.sequence) == stored_link {
        // Intact as written, but its predecessor is not the one it chained
        // from: the event before it was changed (and its link recomputed).
        let sequence = e.sequence.saturating_sub(1).max(1);
        return (
            ChainFault::Edited,
            sequence,
            format!(
                "changed: the event after it chained from another link ({stored_prev}); its link was recomputed"
            ),
        );
    }
    let candidates = events.len() as u64 + 2;
    if let Some(written_at) = (1..=candidates)
        .filter(|s| *s != e.sequence)
        .find(|s| link_at(e, stored_prev, *s) == stored_link)
    {
        let predecessor_later = events[i + 1..]
            .iter()
            .any(|l| field(l, HASH) == Some(stored_prev));
        return if predecessor_later || written_at < e.sequence {
            (
                ChainFault::Reordered,
                e.sequence,
                format!(
                    "written at sequence {written_at}, now at sequence {}",
                    e.sequence
                ),
            )
        } else {
            (
                ChainFault::Removed,
                e.sequence,
                format!(
                    "written at sequence {written_at}: the events before it were removed and the later ones renumbered"
                ),
            )
        };
    }
    (
        ChainFault::Edited,
        e.sequence,
        "its content (payload, type, version or metadata) is not what its link covers".into(),
    )
}

/// Why the unsigned event `events[i]` does not link.
fn classify_v1(events: &[RawEvent], i: usize, prev: &str) -> (ChainFault, String) {
    let e = &events[i];
    let stored_prev = field(e, PREV_HASH).unwrap_or_default();
    if stored_prev != prev {
        if events[i + 1..]
            .iter()
            .any(|l| field(l, HASH) == Some(stored_prev))
        {
            return (
                ChainFault::Reordered,
                "its predecessor comes after it".into(),
            );
        }
        return (
            ChainFault::Removed,
            "the event it chained from is missing".into(),
        );
    }
    (
        ChainFault::Edited,
        "its content is not what its (unkeyed) hash covers".into(),
    )
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
