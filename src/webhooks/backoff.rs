//! Retry delays: exponential, capped, with jitter.

use std::time::Duration;

/// The delay after the `failures`-th failed attempt (from 1): `initial`
/// doubled for each earlier failure, capped at `max`, then "equal jitter":
/// half of it fixed, the other half scaled by `unit` (uniform in 0..1). The
/// fixed half keeps the schedule's growth; the random half spreads out the
/// retries of URLs that failed together (one receiver down for many jobs).
pub(crate) fn delay(failures: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let full = initial.saturating_mul(1u32 << doublings).min(max);
    full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        for (failures, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (60, 300)] {
            let full = Duration::from_secs(full);
            assert_eq!(delay(failures, S, CAP, 0.0), full / 2, "{failures}");
            assert_eq!(delay(failures, S, CAP, 1.0), full, "{failures}");
            let mid = delay(failures, S, CAP, 0.5);
            assert!(mid > full / 2 && mid < full, "{failures}: {mid:?}");
        }
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(delay(u32::MAX, Duration::from_secs(3600), CAP, 1.0), CAP);
        assert_eq!(delay(0, S, CAP, 1.0), S);
    }
}
