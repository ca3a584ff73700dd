//! Retry delays: exponential with jitter, as Oban's default (`15 + 2^attempt` seconds), so a
//! burst of failures does not retry in lockstep.

use std::time::Duration;

use rand::Rng;

/// Largest exponent used: attempts past it wait the same (about 12 days plus jitter).
const MAX_EXPONENT: i32 = 20;

/// Jitter as a fraction of the base delay, either way.
pub const JITTER: f64 = 0.1;

/// The base delay before retrying after failed attempt `attempt` (1-based), without jitter.
pub fn base(attempt: i32) -> Duration {
    let exp = attempt.clamp(0, MAX_EXPONENT) as u32;
    Duration::from_secs(15 + 2u64.pow(exp))
}

/// The delay with ±10 % jitter.
pub fn exponential(attempt: i32) -> Duration {
    let base = base(attempt).as_secs_f64();
    let factor = 1.0 + rand::rng().random_range(-JITTER..=JITTER);
    Duration::from_secs_f64(base * factor)
}

/// The delay before retrying after the `failures`-th consecutive failure (1-based) of engine
/// machinery (writing outcomes, running hooks): `first`, doubling, at most `cap`, with the same
/// jitter, so nodes recovering from one outage do not retry in lockstep.
pub fn capped(failures: u32, first: Duration, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = first.saturating_mul(1 << exp).min(cap).as_secs_f64();
    let factor = 1.0 + rand::rng().random_range(-JITTER..=JITTER);
    Duration::from_secs_f64(base * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_the_jitter_band() {
        assert_eq!(base(1), Duration::from_secs(17));
        assert_eq!(base(2), Duration::from_secs(19));
        assert_eq!(base(5), Duration::from_secs(47));
        assert_eq!(base(10), Duration::from_secs(1039));
        assert_eq!(base(100), base(MAX_EXPONENT));
        let mut previous = Duration::ZERO;
        for attempt in 1..=MAX_EXPONENT {
            let b = base(attempt);
            assert!(b > previous, "attempt {attempt}");
            previous = b;
            for _ in 0..50 {
                let d = exponential(attempt).as_secs_f64();
                let b = b.as_secs_f64();
                assert!(
                    d >= b * (1.0 - JITTER) - 1e-9 && d <= b * (1.0 + JITTER) + 1e-9,
                    "attempt {attempt}: {d} outside {b} ± 10%"
                );
            }
        }
    }

    #[test]
    fn capped_doubles_up_to_its_cap() {
        let first = Duration::from_millis(50);
        let cap = Duration::from_secs(2);
        let within = |d: Duration, b: f64| {
            let d = d.as_secs_f64();
            d >= b * (1.0 - JITTER) - 1e-9 && d <= b * (1.0 + JITTER) + 1e-9
        };
        assert!(within(capped(1, first, cap), 0.05));
        assert!(within(capped(2, first, cap), 0.1));
        assert!(within(capped(5, first, cap), 0.8));
        assert!(within(capped(7, first, cap), 2.0));
        assert!(within(capped(u32::MAX, first, cap), 2.0));
    }

    #[test]
    fn jitter_actually_varies() {
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| exponential(8).as_millis()).collect();
        assert!(samples.len() > 1);
    }
}
