//! A coarse wall clock for what only needs the second (the console's
//! per-second buckets) or errs safely late (waits computed from a
//! `Retry-After` date or a reset time): the kernel's last tick, read
//! without the TSC. On this project's 2-core VM a precise clock read costs
//! ~39 ns and a coarse one ~8 ns; a proxied request read the clock ~30
//! times (docs/performance.md).
//!
//! One `unsafe` call, like `allocator.rs`: std has no coarse clock, and
//! `clock_gettime` into a local is all the FFI there is.
#![allow(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall clock at the last kernel tick (a few ms behind at most): a
/// wait computed against it is at most that much longer, never shorter.
pub fn coarse_now() -> SystemTime {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec we own.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        if rc == 0 {
            if let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
                if let Some(t) = UNIX_EPOCH.checked_add(Duration::new(secs, nanos)) {
                    return t;
                }
            }
        }
    }
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never ahead of the precise clock, and behind it by no more than a
    /// tick (bounded generously: a tick is 1–10 ms).
    #[test]
    fn coarse_is_the_precise_clock_a_tick_late() {
        for _ in 0..1000 {
            let coarse = coarse_now();
            let precise = SystemTime::now();
            let behind = precise
                .duration_since(coarse)
                .expect("the coarse clock is never ahead");
            assert!(behind < Duration::from_millis(100), "{behind:?}");
        }
    }
}
