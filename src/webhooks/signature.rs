//! Request signatures. Each webhook request carries
//!
//! ```text
//! Loraflow-Timestamp: 1767225600
//! Loraflow-Signature: v1=<hex HMAC-SHA256(secret, "1767225600." ‖ body)>
//! ```
//!
//! with the tenant's webhook secret as the key. Signing the timestamp with
//! the body lets a receiver refuse replays of old requests: [`verify`] checks
//! the signature in constant time and the timestamp against a tolerance.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `{job_id}:{sequence}`: the same on every attempt; drop repeats by it.
pub const EVENT_ID_HEADER: &str = "loraflow-event-id";
/// The webhook event type (`step:completed`).
pub const EVENT_TYPE_HEADER: &str = "loraflow-event-type";
/// Unix time in seconds when the request was signed.
pub const TIMESTAMP_HEADER: &str = "loraflow-timestamp";
/// `v1=<hex>`; several comma-separated entries may be accepted by [`verify`].
pub const SIGNATURE_HEADER: &str = "loraflow-signature";
/// Which attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "loraflow-attempt";

/// How far a timestamp may be from the receiver's clock by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `Loraflow-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The timestamp header is not a Unix time in seconds.
    #[error("the {TIMESTAMP_HEADER} header {0:?} is not a Unix time in seconds")]
    BadTimestamp(String),
    /// Signed too long ago (or ahead): a replay, or clocks out of step.
    #[error(
        "the request was signed at {timestamp}, {skew_secs} s away from now; at most {tolerance_secs} s are allowed"
    )]
    Stale {
        timestamp: i64,
        skew_secs: i64,
        tolerance_secs: u64,
    },
    /// The signature header has no `v1=<hex>` entry.
    #[error("the {SIGNATURE_HEADER} header has no v1=<hex> entry")]
    NoSignature,
    /// No entry matches: another secret, or an altered body or timestamp.
    #[error("no v1 signature matches the body and timestamp with this secret")]
    Mismatch,
}

/// Check a request as a receiver would: `timestamp` and `signature` are the
/// header values, `body` the raw bytes received, `now` the receiver's Unix
/// time in seconds.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp(timestamp.to_owned()))?;
    let skew = now.saturating_sub(ts).saturating_abs();
    if skew as u64 > tolerance.as_secs() {
        return Err(SignatureError::Stale {
            timestamp: ts,
            skew_secs: skew,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let candidates: Vec<Vec<u8>> = signature
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("v1="))
        .filter_map(|h| hex::decode(h).ok())
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    if candidates
        .iter()
        .any(|c| mac(secret, ts, body).verify_slice(c).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_767_225_600;

    #[test]
    fn a_known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec",b"1767225600.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"whsec", T, b"{}"),
            "v1=5ba148cb6916cb6116d779d0c88555b31ef0bec7b98ac2545ebcdbe03d55d9e2"
        );
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let sig = sign(b"secret", T, b"{\"a\":1}");
        let ok = |ts: &str, sig: &str, body: &[u8], secret: &[u8]| {
            verify(secret, ts, sig, body, T + 10, DEFAULT_TOLERANCE)
        };
        assert_eq!(ok("1767225600", &sig, b"{\"a\":1}", b"secret"), Ok(()));
        assert_eq!(
            ok(
                "1767225600",
                &format!("v1=00, {sig}"),
                b"{\"a\":1}",
                b"secret"
            ),
            Ok(())
        );
        assert_eq!(
            ok("1767225600", &sig, b"{\"a\":2}", b"secret"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ok("1767225601", &sig, b"{\"a\":1}", b"secret"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ok("1767225600", &sig, b"{\"a\":1}", b"other"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ok("1767225600", "sha256=abc", b"{}", b"secret"),
            Err(SignatureError::NoSignature)
        );
        assert!(matches!(
            ok("yesterday", &sig, b"{}", b"secret"),
            Err(SignatureError::BadTimestamp(_))
        ));
        assert!(matches!(
            verify(
                b"secret",
                "1767225600",
                &sig,
                b"{\"a\":1}",
                T + 3600,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Stale {
                skew_secs: 3600,
                ..
            })
        ));
    }
}
