//! Chain verification on hand-built histories: each kind of tampering is
//! named at its event.

use serde_json::json;

use super::*;
use crate::chain::{event_hash_v1, head_message};
use crate::keys::AuditKey;

struct Built {
    key: AuditKey,
    events: Vec<RawEvent>,
    head: Head,
}

fn job() -> JobId {
    JobId::new("j")
}

/// `n` signed events, as the store writes them.
fn signed(n: u64) -> Built {
    let key = AuditKey::generate();
    let mut prev = GENESIS_HASH.to_owned();
    let events: Vec<RawEvent> = (1..=n)
        .map(|seq| {
            let payload = json!({"StepProgressed": {"b": seq, "a": [1.5, "x"]}});
            let mut meta = json!({
                "actor": "alice", "tenant": "acme", "recorded_at": format!("2026-01-01T00:00:0{seq}Z"),
                "chain": "2", "key_id": key.key_id(),
            });
            let mut e = RawEvent {
                position: seq * 10,
                job_id: job(),
                sequence: seq,
                event_type: "StepProgressed".into(),
                event_version: "1.0.0".into(),
                payload,
                metadata: meta.clone(),
            };
            let link = link_at(&e, &prev, seq);
            meta["prev_hash"] = json!(prev);
            meta["hash"] = json!(link);
            meta["sig"] = json!(key.sign(&event_message(&link)));
            e.metadata = meta;
            prev = link;
            e
        })
        .collect();
    let head = Head {
        job_id: "j".into(),
        sequence: n,
        link: prev.clone(),
        key_id: key.key_id().into(),
        sig: key.sign(&head_message("j", n, &prev)),
    };
    Built { key, events, head }
}

fn check(b: &Built, depth: Depth) -> ChainReport {
    let keys = Keyring::new([b.key.public_key()]);
    verify_job(&job(), &b.events, Some(&b.head), &keys, depth, None)
}

fn fault(b: &Built, depth: Depth) -> (ChainFault, u64, Position) {
    let f = check(b, depth)
        .first_problem()
        .expect("the tampering is detected");
    (f.fault, f.sequence, f.position)
}

/// Recompute every link from `from` on, as an attacker with database
/// access can (no key needed), keeping the old signatures.
fn relink(events: &mut [RawEvent], from: usize) {
    for i in from..events.len() {
        let prev = if i == 0 {
            GENESIS_HASH.to_owned()
        } else {
            events[i - 1].metadata["hash"].as_str().unwrap().to_owned()
        };
        let link = link_at(&events[i], &prev, events[i].sequence);
        events[i].metadata["prev_hash"] = json!(prev);
        events[i].metadata["hash"] = json!(link);
    }
}

#[test]
fn an_intact_chain_verifies_at_both_depths() {
    let b = signed(5);
    for depth in [Depth::Links, Depth::Full] {
        let r = check(&b, depth);
        assert!(r.is_valid(), "{r:?}");
        assert_eq!(r.events, 5);
    }
}

#[test]
fn an_edited_payload_or_metadata_is_named() {
    for (key, value) in [
        ("payload", json!({"StepProgressed": {"b": 99}})),
        ("actor", json!("mallory")),
        ("tenant", json!("other")),
        ("recorded_at", json!("2020-01-01T00:00:00Z")),
    ] {
        let mut b = signed(5);
        if key == "payload" {
            b.events[2].payload = value;
        } else {
            b.events[2].metadata[key] = value;
        }
        for depth in [Depth::Links, Depth::Full] {
            assert_eq!(fault(&b, depth), (ChainFault::Edited, 3, 30), "{key}");
        }
    }
}

#[test]
fn a_removed_middle_event_is_named_at_the_gap() {
    let mut b = signed(5);
    b.events.remove(1);
    assert_eq!(fault(&b, Depth::Links), (ChainFault::Removed, 2, 30));
}

#[test]
fn a_removed_event_with_later_ones_renumbered_is_removed() {
    let mut b = signed(5);
    b.events.remove(1);
    for e in &mut b.events[1..] {
        e.sequence -= 1;
    }
    b.head.sequence = 4;
    let (kind, seq, _) = fault(&b, Depth::Links);
    assert_eq!((kind, seq), (ChainFault::Removed, 2));
}

#[test]
fn swapped_sequences_are_reordered() {
    let mut b = signed(5);
    b.events.swap(2, 3);
    b.events[2].sequence = 3;
    b.events[3].sequence = 4;
    assert_eq!(fault(&b, Depth::Full), (ChainFault::Reordered, 3, 40));
}

#[test]
fn a_deleted_tail_is_truncated() {
    for cut in [1, 2] {
        let mut b = signed(5);
        b.events.truncate(5 - cut);
        let last = (5 - cut as u64) * 10;
        assert_eq!(
            fault(&b, Depth::Links),
            (ChainFault::Truncated, 6 - cut as u64, last)
        );
    }
    let b = signed(3);
    let keys = Keyring::new([b.key.public_key()]);
    let r = verify_job(&job(), &b.events, None, &keys, Depth::Links, Some(0));
    assert_eq!(
        r.fault.unwrap().fault,
        ChainFault::Truncated,
        "head deleted"
    );
}

#[test]
fn a_replaced_signature_is_a_bad_signature_and_only_full_depth_sees_it() {
    let mut b = signed(5);
    let other = b.events[0].metadata["sig"].clone();
    b.events[3].metadata["sig"] = other;
    assert!(check(&b, Depth::Links).is_valid());
    assert_eq!(fault(&b, Depth::Full), (ChainFault::BadSignature, 4, 40));
}

#[test]
fn an_edit_with_the_chain_rebuilt_is_caught_by_the_head() {
    let mut b = signed(5);
    b.events[1].payload = json!({"forged": true});
    relink(&mut b.events, 1);
    // The links verify; the head's signature does not cover the new ones.
    let (kind, _, _) = fault(&b, Depth::Links);
    assert_eq!(kind, ChainFault::Edited);
    // Full depth names the first event whose signature no longer fits.
    assert_eq!(fault(&b, Depth::Full), (ChainFault::Edited, 2, 20));
}

#[test]
fn a_chain_rebuilt_with_the_old_unkeyed_scheme_is_unsigned() {
    let mut b = signed(4);
    let mut prev = GENESIS_HASH.to_owned();
    for e in &mut b.events {
        let meta = e.metadata.as_object_mut().unwrap();
        for k in ["chain", "sig", "key_id"] {
            meta.remove(k);
        }
        let h = event_hash_v1(&prev, &e.event_type, &e.event_version, &e.payload);
        meta.insert("prev_hash".into(), json!(prev));
        meta.insert("hash".into(), json!(h));
        prev = h;
    }
    for depth in [Depth::Links, Depth::Full] {
        let r = check(&b, depth);
        assert!(r.fault.is_some(), "the head names the signed chain");
        let p = r.first_problem().unwrap();
        assert_eq!(
            (p.fault, p.sequence, p.position),
            (ChainFault::Unsigned, 1, 10)
        );
    }
    // Without its head (deleted too), a job newer than the start of signing
    // is refused on the command path.
    let keys = Keyring::new([b.key.public_key()]);
    let r = verify_job(&job(), &b.events, None, &keys, Depth::Links, Some(5));
    assert_eq!(r.fault.unwrap().fault, ChainFault::Unsigned);
    // A genuinely old job (before signing began) is accepted there, and
    // still reported as unsigned.
    let r = verify_job(&job(), &b.events, None, &keys, Depth::Links, Some(40));
    assert!(r.fault.is_none());
    assert_eq!(r.first_problem().unwrap().fault, ChainFault::Unsigned);
}

#[test]
fn signed_events_continue_an_unsigned_prefix() {
    let key = AuditKey::generate();
    let mut events = Vec::new();
    let mut prev = GENESIS_HASH.to_owned();
    for seq in 1..=4u64 {
        let payload = json!({"n": seq});
        let mut e = RawEvent {
            position: seq,
            job_id: job(),
            sequence: seq,
            event_type: "T".into(),
            event_version: "1".into(),
            payload: payload.clone(),
            metadata: json!({}),
        };
        let link = if seq <= 2 {
            event_hash_v1(&prev, "T", "1", &payload)
        } else {
            e.metadata = json!({"chain": "2", "key_id": key.key_id()});
            let l = link_at(&e, &prev, seq);
            e.metadata["sig"] = json!(key.sign(&event_message(&l)));
            l
        };
        e.metadata["prev_hash"] = json!(prev);
        e.metadata["hash"] = json!(link);
        prev = link;
        events.push(e);
    }
    let head = Head {
        job_id: "j".into(),
        sequence: 4,
        link: prev.clone(),
        key_id: key.key_id().into(),
        sig: key.sign(&head_message("j", 4, &prev)),
    };
    let keys = Keyring::new([key.public_key()]);
    let r = verify_job(&job(), &events, Some(&head), &keys, Depth::Full, None);
    assert!(r.fault.is_none(), "{r:?}");
    assert_eq!(
        r.unsigned,
        Some(UnsignedPrefix {
            first_position: 1,
            last_sequence: 2
        })
    );
    // An edit inside the unsigned prefix breaks the link the first signed
    // event covers.
    events[0].payload = json!({"n": 9});
    let r = verify_job(&job(), &events, Some(&head), &keys, Depth::Full, None);
    assert_eq!(r.fault.unwrap().fault, ChainFault::Edited);
}

#[test]
fn an_untrusted_key_is_a_bad_signature() {
    let b = signed(2);
    let stranger = Keyring::new([AuditKey::generate().public_key()]);
    let r = verify_job(
        &job(),
        &b.events,
        Some(&b.head),
        &stranger,
        Depth::Links,
        None,
    );
    let f = r.fault.unwrap();
    assert_eq!(f.fault, ChainFault::BadSignature);
    assert!(f.detail.contains("not trusted"), "{}", f.detail);
}
