//! Exponential backoff, the one schedule every retry loop uses: the n-th
//! wait (n = 0 for the first) is `base · 2ⁿ`, never more than `cap`.
//!
//! Two users, two ways to take it:
//! - proxy retries and job attempts ([`Exponential::full_jitter`], SPEC §7:
//!   base 500 ms, cap 30 s): a uniform pick in `[0, ceiling(n)]` spreads
//!   the retries of many clients that failed together, instead of having
//!   them return in lock-step;
//! - webhook deliveries ([`Exponential::ceiling`], SPEC §8: base
//!   `[webhooks] backoff`, cap `backoff_cap`): no jitter, because the
//!   schedule is what SPEC states and what the docs promise.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exponential {
    pub base: Duration,
    pub cap: Duration,
}

/// SPEC §7's schedule for proxy retries and job attempts.
pub const RETRY: Exponential = Exponential {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(30),
};

impl Exponential {
    /// The `n`-th wait without jitter (n = 0 for the first). Saturates: a
    /// huge `n` (or base) gives `cap`, never an overflow.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A uniformly random wait in `[0, ceiling(n)]`.
    pub fn full_jitter(&self, n: u32) -> Duration {
        let max = u64::try_from(self.ceiling(n).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_schedule_doubles_to_its_cap() {
        assert_eq!(RETRY.ceiling(0), Duration::from_millis(500));
        assert_eq!(RETRY.ceiling(1), Duration::from_secs(1));
        assert_eq!(RETRY.ceiling(5), Duration::from_secs(16));
        assert_eq!(RETRY.ceiling(6), RETRY.cap);
        assert_eq!(RETRY.ceiling(u32::MAX), RETRY.cap);
    }

    #[test]
    fn huge_bases_and_counts_saturate_at_the_cap() {
        let b = Exponential {
            base: Duration::from_secs(u64::MAX / 4),
            cap: Duration::from_secs(600),
        };
        assert_eq!(b.ceiling(0), Duration::from_secs(600));
        assert_eq!(b.ceiling(40), Duration::from_secs(600));
        let small = Exponential {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(150),
        };
        assert_eq!(small.ceiling(0), Duration::from_millis(100));
        assert_eq!(small.ceiling(1), Duration::from_millis(150));
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let picks: Vec<Duration> = (0..200).map(|_| RETRY.full_jitter(2)).collect();
        assert!(picks.iter().all(|d| *d <= RETRY.ceiling(2)));
        let first = picks[0];
        assert!(
            picks.iter().any(|d| *d != first),
            "200 equal picks: not random"
        );
    }
}
