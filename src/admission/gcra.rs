//! The pace: a Generic Cell Rate Algorithm scheduler.
//!
//! GCRA keeps one number, the theoretical arrival time (`tat`) of the next
//! request. A request may start at `now` when `now >= tat - tolerance`, and
//! starting moves `tat` to `max(tat, now) + interval`. With `burst = 1` the
//! tolerance is zero, so starts are spaced at least `interval` apart: over
//! any window of length `w`, at most `floor(w / interval) + burst` requests
//! start, which is exactly "never above the configured rate".
//!
//! Hand-written rather than taken from `governor`: we need to *schedule* a
//! FIFO queue (ask "when is the next slot?", take it, and give it back when a
//! waiting client leaves) and to change the rate on the fly from learned
//! headers, none of which `governor`'s check-and-consume API exposes.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Gcra {
    interval: Duration,
    tolerance: Duration,
    tat: Instant,
}

impl Gcra {
    pub fn new(rps: f64, burst: u32, now: Instant) -> Self {
        let mut g = Gcra {
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            tat: now,
        };
        g.set_rate(rps, burst);
        g
    }

    /// Change the rate; takes effect for the very next start.
    ///
    /// The slot already promised to the next request is re-spaced with the
    /// new interval, so a lowered rate applies at once instead of after the
    /// old, faster slot.
    pub fn set_rate(&mut self, rps: f64, burst: u32) {
        let old = self.interval;
        self.interval = interval_for(rps);
        self.tolerance = self.interval * burst.max(1).saturating_sub(1);
        if !old.is_zero() && self.interval != old {
            // tat = last_start + old interval  →  last_start + new interval
            self.tat = self
                .tat
                .checked_sub(old)
                .map(|last| last + self.interval)
                .unwrap_or(self.tat);
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The earliest instant the next request may start.
    pub fn next_start(&self) -> Instant {
        self.tat.checked_sub(self.tolerance).unwrap_or(self.tat)
    }

    /// Take the slot at `now` (caller checked `now >= next_start()`).
    pub fn take(&mut self, now: Instant) {
        self.tat = self.tat.max(now) + self.interval;
    }

    /// Give back a slot taken by a request that never went out.
    pub fn give_back(&mut self) {
        if let Some(t) = self.tat.checked_sub(self.interval) {
            self.tat = t;
        }
    }

    /// When the `n`-th request from now (0-based) could start, if nothing
    /// else changes: a lower bound used for `Retry-After` and early rejects.
    pub fn start_of(&self, n: usize, now: Instant) -> Instant {
        let first = self.next_start().max(now);
        first + self.interval * (n as u32)
    }
}

/// `1 / rps`, rounded *up* to the nanosecond: a rounded-down interval
/// would let a long window hold a few more starts than `rps·w + burst`
/// (at 3,000 req/s, 333,333 ns is one start too many every 1,000 s).
fn interval_for(rps: f64) -> Duration {
    // Config and learned values are validated finite and > 0 before they get
    // here; guard anyway so a bad value can never panic.
    if rps.is_finite() && rps > 0.0 {
        let nanos = (1e9 / rps).ceil();
        if nanos < u64::MAX as f64 {
            return Duration::from_nanos((nanos as u64).max(1));
        }
    }
    Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_starts_by_the_interval() {
        let t0 = Instant::now();
        let mut g = Gcra::new(2.0, 1, t0);
        assert_eq!(g.next_start(), t0);
        g.take(t0);
        assert_eq!(g.next_start(), t0 + Duration::from_millis(500));
        g.take(g.next_start());
        assert_eq!(g.next_start(), t0 + Duration::from_secs(1));
    }

    #[test]
    fn burst_allows_that_many_at_once() {
        let t0 = Instant::now();
        let mut g = Gcra::new(10.0, 3, t0);
        for _ in 0..3 {
            assert!(g.next_start() <= t0);
            g.take(t0);
        }
        assert!(g.next_start() > t0);
    }

    #[test]
    fn idle_time_does_not_bank_more_than_the_burst() {
        let t0 = Instant::now();
        let mut g = Gcra::new(1.0, 1, t0);
        g.take(t0);
        let later = t0 + Duration::from_secs(100);
        g.take(later);
        assert_eq!(g.next_start(), later + Duration::from_secs(1));
    }

    #[test]
    fn give_back_restores_the_slot() {
        let t0 = Instant::now();
        let mut g = Gcra::new(1.0, 1, t0);
        g.take(t0);
        let before = g.next_start();
        g.take(before);
        g.give_back();
        assert_eq!(g.next_start(), before);
    }

    #[test]
    fn lowering_the_rate_applies_to_the_next_start() {
        let t0 = Instant::now();
        let mut g = Gcra::new(10.0, 1, t0);
        g.take(t0);
        g.set_rate(0.5, 1);
        assert_eq!(g.next_start(), t0 + Duration::from_secs(2));
        g.set_rate(100.0, 1);
        assert_eq!(g.next_start(), t0 + Duration::from_millis(10));
    }

    #[test]
    fn the_interval_is_never_shorter_than_one_over_the_rate() {
        for rps in [3000.0, 7.0, 10_000.0, 0.01, 2000.0, 9999.0] {
            let i = interval_for(rps);
            assert!(i.as_secs_f64() * rps >= 1.0, "{rps}: {i:?}");
            assert!(i.as_secs_f64() * rps < 1.0 + 1e-5, "{rps}: {i:?}");
        }
        assert_eq!(interval_for(f64::NAN), Duration::from_secs(1));
        assert_eq!(interval_for(1e-300), Duration::from_secs(1));
    }

    #[test]
    fn start_of_is_a_lower_bound_for_the_queue() {
        let t0 = Instant::now();
        let g = Gcra::new(4.0, 1, t0);
        assert_eq!(g.start_of(0, t0), t0);
        assert_eq!(g.start_of(4, t0), t0 + Duration::from_secs(1));
    }
}
