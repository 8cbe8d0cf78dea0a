//! Waiting for an exact instant, for the pace's queued slots.
//!
//! Tokio's timer wheel has 1 ms ticks and a deadline fires at the first tick
//! at or after it: up to ~1 ms late, more under load. A queue released at
//! "now" after each late wake-up would never see more than ~1,000 starts per
//! second; one released at the slot's *scheduled* time (the old catch-up)
//! lets several slots leave in the same real instant, above `rps·w + burst`.
//! The pace therefore needs the real instant of a start to be the slot's
//! instant, which takes a finer wait than tokio's timer:
//!
//! 1. more than [`COARSE`] away: the caller sleeps on tokio's timer until
//!    `COARSE` before the slot (interruptible, costs nothing while waiting);
//! 2. then a thread of the blocking pool sleeps (`nanosleep`, ~55 µs late
//!    with Linux's default timer slack) until [`SPIN`] before the slot;
//! 3. the last [`SPIN`] is spent yielding to the scheduler until the clock
//!    reads the slot's instant (other tasks on the worker keep running).
//!
//! Only a dispatcher with requests waiting on the pace does this, and only
//! in the last 2 ms before each slot. Measured cost (benches/pace_overshoot.rs,
//! docs/admission.md): ~110–150 µs of CPU per request at 500–2,000 req/s,
//! ~80 µs at 5,000; nothing while nobody waits. Spinning longer (a margin
//! that follows the measured lateness of the sleeps) was measured worse: it
//! takes CPU from the workers that carry the admitted requests.
//!
//! A late wake-up (a preempted thread) makes that start late, never early:
//! the pace is then a little below the rate, never above it.

use std::time::Duration;

use tokio::time::Instant;

/// Beyond this, tokio's timer (1 ms ticks) gets us close enough first.
pub const COARSE: Duration = Duration::from_millis(2);

/// The last stretch before a slot, spent yielding rather than sleeping:
/// covers `nanosleep`'s timer slack and the hand-back from the blocking pool.
pub const SPIN: Duration = Duration::from_micros(120);

/// How a dispatcher waits the last [`COARSE`] before a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fine {
    /// Real time: blocking-pool sleep, then yield until the instant.
    Precise,
    /// Tests in paused time: the virtual clock is advanced to the instant
    /// (what a perfect fine timer would do).
    #[cfg(test)]
    Virtual,
}

impl Fine {
    /// Return at `at` or as soon after as the scheduler allows. Not
    /// interruptible (at most [`COARSE`] long).
    pub async fn until(self, at: Instant) {
        match self {
            Fine::Precise => precise_until(at).await,
            #[cfg(test)]
            Fine::Virtual => {
                let now = Instant::now();
                if at > now {
                    tokio::time::advance(at - now).await;
                }
            }
        }
    }
}

async fn precise_until(at: Instant) {
    let now = Instant::now();
    if at > now + SPIN {
        let nap = (at - now).saturating_sub(SPIN);
        // A blocking-pool thread sleeps with the kernel's fine timer; the
        // proxy's workers keep serving meanwhile.
        if tokio::task::spawn_blocking(move || std::thread::sleep(nap))
            .await
            .is_err()
        {
            tokio::time::sleep_until(at).await;
            return;
        }
    }
    let mut last = Instant::now();
    while last < at {
        tokio::task::yield_now().await;
        let now = Instant::now();
        if now == last {
            // A clock that does not move across a yield is a paused test
            // clock (or a coarse clock source): spinning would never end.
            tokio::time::sleep_until(at).await;
            return;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn precise_waits_end_at_or_after_the_instant() {
        for us in [0u64, 30, 150, 700, 1900] {
            let at = Instant::now() + Duration::from_micros(us);
            Fine::Precise.until(at).await;
            assert!(Instant::now() >= at, "woke before the instant ({us} µs)");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_does_not_spin_forever() {
        let at = Instant::now() + Duration::from_micros(50);
        Fine::Precise.until(at).await;
        assert!(Instant::now() >= at);
    }
}
