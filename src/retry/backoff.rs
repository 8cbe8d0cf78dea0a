//! Exponential backoff with full jitter (SPEC §7: base 500 ms, cap 30 s).
//!
//! Full jitter (a uniform pick in `[0, min(cap, base·2ⁿ)]`) spreads the
//! retries of many clients that failed together, instead of having them
//! return in lock-step.

use std::time::Duration;

use rand::Rng;

pub const BASE: Duration = Duration::from_millis(500);
pub const CAP: Duration = Duration::from_secs(30);

/// The ceiling of the `n`-th retry's delay (n = 0 for the first retry).
pub fn ceiling(n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX);
    BASE.saturating_mul(factor).min(CAP)
}

/// A uniformly random delay in `[0, ceiling(n)]`.
pub fn full_jitter(n: u32) -> Duration {
    let max = ceiling(n).as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_to_the_cap() {
        assert_eq!(ceiling(0), Duration::from_millis(500));
        assert_eq!(ceiling(1), Duration::from_secs(1));
        assert_eq!(ceiling(5), Duration::from_secs(16));
        assert_eq!(ceiling(6), CAP);
        assert_eq!(ceiling(u32::MAX), CAP);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let picks: Vec<Duration> = (0..200).map(|_| full_jitter(2)).collect();
        assert!(picks.iter().all(|d| *d <= ceiling(2)));
        let first = picks[0];
        assert!(
            picks.iter().any(|d| *d != first),
            "200 equal picks: not random"
        );
    }
}
