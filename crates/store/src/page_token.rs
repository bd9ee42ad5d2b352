//! Opaque page tokens for job lists: a keyset cursor (the last job's creation
//! time and id), bound to the list's filters and sealed with a MAC.
//!
//! Layout before base64url: version (1 byte) ‖ filter fingerprint (8 bytes)
//! ‖ created_us (8 bytes, big-endian) ‖ job id (UTF-8) ‖ MAC (16 bytes,
//! HMAC-SHA256 truncated over all that precedes it).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use loraflow_core::views::JobListFilter;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::views::ListCursor;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const HEAD_LEN: usize = 1 + 8 + 8;

/// Used when the options give no key (see `StoreOptions::page_token_key`).
pub(crate) const DEFAULT_KEY: &[u8] = b"loraflow page token v1";

fn fingerprint(filter: &JobListFilter) -> [u8; 8] {
    // serde_json writes struct fields in declaration order and the label map
    // sorted, so equal filters give equal bytes.
    let json = serde_json::to_vec(filter).expect("a filter serialises");
    let digest = Sha256::digest(json);
    digest[..8].try_into().expect("8 bytes")
}

fn mac(key: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body);
    m.finalize().into_bytes()[..MAC_LEN]
        .try_into()
        .expect("16 bytes")
}

pub(crate) fn encode(key: &[u8], filter: &JobListFilter, cursor: &ListCursor) -> String {
    let mut body = Vec::with_capacity(HEAD_LEN + cursor.job_id.len() + MAC_LEN);
    body.push(VERSION);
    body.extend_from_slice(&fingerprint(filter));
    body.extend_from_slice(&cursor.created_us.to_be_bytes());
    body.extend_from_slice(cursor.job_id.as_bytes());
    let tag = mac(key, &body);
    body.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(body)
}

fn invalid(reason: &str) -> Error {
    Error::InvalidPageToken {
        reason: reason.to_owned(),
    }
}

pub(crate) fn decode(key: &[u8], filter: &JobListFilter, token: &str) -> Result<ListCursor, Error> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| {
        invalid("the token is not one this service issued; start again without a page token")
    })?;
    if bytes.len() < HEAD_LEN + MAC_LEN {
        return Err(invalid(
            "the token is truncated; start again without a page token",
        ));
    }
    let (body, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let expected = mac(key, body);
    // Constant-time comparison: a token is a credential of sorts.
    if tag
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        != 0
    {
        return Err(invalid(
            "the token was altered or issued by another deployment; start again without a page token",
        ));
    }
    if body[0] != VERSION {
        return Err(invalid(
            "the token is from another release; start again without a page token",
        ));
    }
    if body[1..9] != fingerprint(filter) {
        return Err(invalid(
            "the token belongs to a list with other filters; keep the filters of the first page, or start again",
        ));
    }
    let created_us = i64::from_be_bytes(body[9..17].try_into().expect("8 bytes"));
    let job_id =
        String::from_utf8(body[17..].to_vec()).map_err(|_| invalid("the token is malformed"))?;
    Ok(ListCursor { created_us, job_id })
}

#[cfg(test)]
mod tests {
    use loraflow_core::job::JobState;

    use super::*;

    fn cursor() -> ListCursor {
        ListCursor {
            created_us: 1_767_225_600_000_000,
            job_id: "job-42".into(),
        }
    }

    #[test]
    fn a_token_round_trips_for_the_same_filter() {
        let f = JobListFilter {
            tenant: Some("acme".into()),
            ..Default::default()
        };
        let t = encode(DEFAULT_KEY, &f, &cursor());
        assert_eq!(decode(DEFAULT_KEY, &f, &t).unwrap(), cursor());
    }

    #[test]
    fn a_token_of_another_filter_or_key_or_altered_is_refused() {
        let f = JobListFilter::default();
        let t = encode(DEFAULT_KEY, &f, &cursor());
        let other = JobListFilter {
            state: Some(JobState::Failed),
            ..Default::default()
        };
        let err = decode(DEFAULT_KEY, &other, &t).unwrap_err();
        assert!(err.to_string().contains("other filters"), "{err}");
        assert!(decode(b"another key", &f, &t).is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[12] ^= 1;
        assert!(decode(DEFAULT_KEY, &f, &URL_SAFE_NO_PAD.encode(bytes)).is_err());
        assert!(decode(DEFAULT_KEY, &f, "not a token!").is_err());
        // Not a plain offset either.
        assert!(decode(DEFAULT_KEY, &f, &URL_SAFE_NO_PAD.encode("50")).is_err());
    }
}
