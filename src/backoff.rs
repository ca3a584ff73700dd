//! Every retry delay of the process, all exponential with ±10 % jitter so a burst of failures
//! (or nodes recovering from one outage) does not retry in lockstep:
//! - a failed job's retry, as Oban's default (`15 + 2^attempt` seconds): [`exponential`];
//! - engine and platform machinery retrying a dependency (writing outcomes, running hooks,
//!   reconnecting the relay, the event consumer, the job listener): [`capped`], or a
//!   [`Backoff`] that counts the consecutive failures itself.

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

/// The delay before retrying after the `failures`-th consecutive failure (1-based) of
/// machinery: `first`, doubling, at most `cap`, with the same jitter.
pub fn capped(failures: u32, first: Duration, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = first.saturating_mul(1 << exp).min(cap).as_secs_f64();
    let factor = 1.0 + rand::rng().random_range(-JITTER..=JITTER);
    Duration::from_secs_f64(base * factor)
}

/// [`capped`] for a retry loop: counts the consecutive failures; [`Backoff::reset`] after a
/// success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            failures: 0,
        }
    }

    /// Counts a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        capped(self.failures, self.first, self.cap)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
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
    fn the_stateful_backoff_counts_failures_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let around = |d: Duration, ms: f64| {
            let d = d.as_secs_f64() * 1000.0;
            d >= ms * (1.0 - JITTER) - 1e-6 && d <= ms * (1.0 + JITTER) + 1e-6
        };
        assert!(around(b.next_delay(), 100.0));
        assert!(around(b.next_delay(), 200.0));
        for _ in 0..20 {
            b.next_delay();
        }
        assert!(around(b.next_delay(), 5000.0));
        b.reset();
        assert!(around(b.next_delay(), 100.0));
    }

    #[test]
    fn jitter_actually_varies() {
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| exponential(8).as_millis()).collect();
        assert!(samples.len() > 1);
    }
}
