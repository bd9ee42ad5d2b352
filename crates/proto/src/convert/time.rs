//! `google.protobuf.Timestamp` ↔ `chrono::DateTime<Utc>` and
//! `google.protobuf.Duration` ↔ `std::time::Duration`.

use chrono::{DateTime, Utc};
use prost_types::{Duration as WireDuration, Timestamp};

use super::invalid;
use loraflow_core::validation::Violations;

const NANOS_PER_SECOND: i32 = 1_000_000_000;

pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// A wire timestamp as a point in time; out-of-range values are violations.
pub fn datetime(ts: Timestamp) -> Result<DateTime<Utc>, Violations> {
    if !(0..NANOS_PER_SECOND).contains(&ts.nanos) {
        return Err(invalid(format!(
            "nanos {} must be between 0 and 999999999",
            ts.nanos
        )));
    }
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
        .ok_or_else(|| invalid(format!("seconds {} is out of range", ts.seconds)))
}

/// A duration on the wire. Durations too long for the wire (hundreds of
/// billions of years) are clamped rather than refused: they mean "forever".
pub fn duration(d: std::time::Duration) -> WireDuration {
    WireDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A wire duration that may be zero but not negative.
pub fn non_negative_duration(d: WireDuration) -> Result<std::time::Duration, Violations> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(format!(
            "duration {} must not be negative",
            show(&d)
        )));
    }
    if d.nanos >= NANOS_PER_SECOND {
        return Err(invalid(format!(
            "duration nanos {} must be below 1000000000",
            d.nanos
        )));
    }
    Ok(std::time::Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A wire duration that must be longer than zero (timeouts, backoffs).
pub fn positive_duration(d: WireDuration) -> Result<std::time::Duration, Violations> {
    let shown = show(&d);
    match non_negative_duration(d) {
        Ok(d) if d.is_zero() => Err(invalid(format!("duration must be positive; got {shown}"))),
        Err(_) => Err(invalid(format!("duration must be positive; got {shown}"))),
        ok => ok,
    }
}

fn show(d: &WireDuration) -> String {
    if d.nanos == 0 {
        format!("{}s", d.seconds)
    } else {
        format!("{}s {}ns", d.seconds, d.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        let at = DateTime::from_timestamp(1_767_225_600, 123_456_789).unwrap();
        assert_eq!(datetime(timestamp(at)), Ok(at));
    }

    #[test]
    fn bad_timestamps_are_violations() {
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(datetime(bad).is_err());
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(datetime(far).is_err());
    }

    #[test]
    fn durations_round_trip() {
        let d = std::time::Duration::new(90, 5);
        assert_eq!(positive_duration(duration(d)), Ok(d));
        assert_eq!(
            non_negative_duration(duration(std::time::Duration::ZERO)),
            Ok(std::time::Duration::ZERO)
        );
    }

    #[test]
    fn zero_and_negative_durations_are_not_positive() {
        for (seconds, nanos) in [(0, 0), (-1, 0), (0, -5), (1, 1_000_000_000)] {
            let err = positive_duration(WireDuration { seconds, nanos }).unwrap_err();
            assert_eq!(err.0[0].field, "");
            assert!(err.0[0].description.contains("positive"), "{err}");
        }
    }

    #[test]
    fn huge_durations_clamp() {
        assert_eq!(duration(std::time::Duration::MAX).seconds, i64::MAX);
    }
}
