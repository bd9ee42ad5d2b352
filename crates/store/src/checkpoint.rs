//! Signed checkpoints of the global feed, and checking them against a feed.
//!
//! A checkpoint is (position, root), signed: the root is a running SHA-256
//! over every event up to the position, in feed order (see
//! [`next_root`]). Job heads reveal a job whose tail was cut; they cannot
//! reveal a job rolled back to an older genuine head together with its
//! events, or a job deleted with its head. A checkpoint can: any change to
//! the events before its position changes the root. An auditor who keeps the
//! checkpoints of an earlier export checks a later export (or the store)
//! against them with the public key alone.

use crate::chain::{Checkpoint, GENESIS_HASH, checkpoint_message, next_root};
use crate::event::{HASH, Position, RawEvent};
use crate::keys::{Keyring, SigCheck};

/// The running root over `events` (in feed order), starting from `root`.
pub fn fold_root<'a>(root: &str, events: impl IntoIterator<Item = &'a RawEvent>) -> String {
    let mut root = root.to_owned();
    for e in events {
        let link = e
            .metadata
            .get(HASH)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        root = next_root(&root, e.position, e.job_id.as_str(), e.sequence, link);
    }
    root
}

/// A checkpoint that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint at position {position}: {detail}")]
pub struct CheckpointError {
    pub position: Position,
    pub detail: String,
}

/// Check each checkpoint's signature, and its root against `events` (the
/// whole feed from its start, in feed order). Checkpoints past the last
/// event are checked only if they are at it. Returns the problems, in
/// checkpoint order.
pub fn verify_checkpoints(
    events: &[RawEvent],
    checkpoints: &[Checkpoint],
    keys: &Keyring,
) -> Vec<CheckpointError> {
    let mut problems = Vec::new();
    let mut sorted: Vec<&Checkpoint> = checkpoints.iter().collect();
    sorted.sort_by_key(|c| c.position);
    let last = events.last().map_or(0, |e| e.position);
    let mut root = GENESIS_HASH.to_owned();
    let mut i = 0;
    for c in sorted {
        let fail = |detail: String| CheckpointError {
            position: c.position,
            detail,
        };
        match keys.check(&c.key_id, &checkpoint_message(c.position, &c.root), &c.sig) {
            SigCheck::Valid => {}
            SigCheck::Invalid => {
                problems.push(fail(format!(
                    "its signature by key {} does not verify",
                    c.key_id
                )));
                continue;
            }
            SigCheck::UnknownKey => {
                problems.push(fail(format!(
                    "signed by key {}, which is not trusted",
                    c.key_id
                )));
                continue;
            }
        }
        if c.position > last {
            problems.push(fail(format!(
                "it covers events up to position {}, but the feed ends at {last}: events were removed from its end",
                c.position
            )));
            continue;
        }
        let start = i;
        while i < events.len() && events[i].position <= c.position {
            i += 1;
        }
        root = fold_root(&root, &events[start..i]);
        if root != c.root {
            problems.push(fail(
                "the events up to it are not the ones it signed: an event before it was changed, removed, added or reordered (a job rolled back to an older head shows here)"
                    .into(),
            ));
            // Carry on from the signed root, so that later checkpoints are
            // judged on their own stretch of the feed.
            root = c.root.clone();
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use loraflow_core::ids::JobId;
    use serde_json::json;

    use super::*;
    use crate::keys::AuditKey;

    fn feed(n: u64) -> Vec<RawEvent> {
        (1..=n)
            .map(|p| RawEvent {
                position: p * 2,
                job_id: JobId::new(format!("j{}", p % 3)),
                sequence: p,
                event_type: "T".into(),
                event_version: "1".into(),
                payload: json!({}),
                metadata: json!({ "hash": format!("{p:064x}") }),
            })
            .collect()
    }

    fn signed(key: &AuditKey, events: &[RawEvent], position: Position) -> Checkpoint {
        let root = fold_root(
            GENESIS_HASH,
            events.iter().filter(|e| e.position <= position),
        );
        Checkpoint {
            position,
            sig: key.sign(&checkpoint_message(position, &root)),
            root,
            key_id: key.key_id().into(),
            signed_at: "t".into(),
        }
    }

    #[test]
    fn checkpoints_catch_a_removed_or_changed_event_before_them() {
        let key = AuditKey::generate();
        let keys = Keyring::new([key.public_key()]);
        let events = feed(6);
        let cps = vec![signed(&key, &events, 4), signed(&key, &events, 12)];
        assert!(verify_checkpoints(&events, &cps, &keys).is_empty());

        let mut removed = events.clone();
        removed.remove(3);
        let problems = verify_checkpoints(&removed, &cps, &keys);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].position, 12);

        let cut = events[..4].to_vec();
        let problems = verify_checkpoints(&cut, &cps, &keys);
        assert!(problems[0].detail.contains("ends at 8"), "{problems:?}");

        let mut forged = cps.clone();
        forged[0].root = "0".repeat(64);
        assert!(
            verify_checkpoints(&events, &forged, &keys)[0]
                .detail
                .contains("does not verify")
        );
    }
}
