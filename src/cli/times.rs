//! Wire timestamps as the CLI shows them: RFC 3339 in UTC, or how long ago.

use chrono::{DateTime, SecondsFormat, Utc};
use loraflow_proto::convert::time::datetime;
use prost_types::Timestamp;

/// The instant a wire timestamp names, if it is set and valid.
pub fn at(ts: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| datetime(*t).ok())
}

/// RFC 3339 with seconds (`2026-12-02T12:00:05Z`); `-` when unset.
pub fn rfc3339(ts: Option<&Timestamp>) -> String {
    at(ts)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

/// How long before `now` (`4s ago`, `3m ago`, `2h ago`, `5d ago`); `-`
/// when unset.
pub fn ago(ts: Option<&Timestamp>, now: DateTime<Utc>) -> String {
    let Some(t) = at(ts) else {
        return "-".into();
    };
    let s = (now - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .to_utc();
        let before = |s: i64| Timestamp {
            seconds: now.timestamp() - s,
            nanos: 0,
        };
        assert_eq!(ago(Some(&before(4)), now), "4s ago");
        assert_eq!(ago(Some(&before(200)), now), "3m ago");
        assert_eq!(ago(Some(&before(7300)), now), "2h ago");
        assert_eq!(ago(None, now), "-");
        assert_eq!(rfc3339(Some(&before(5))), "2026-12-02T11:59:55Z");
    }
}
