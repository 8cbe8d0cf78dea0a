//! The overview's history: per domain, the last 15 minutes at 1-second
//! resolution, in fixed-size ring buffers kept in process.
//!
//! Why in process and not read back from Prometheus: the console must work
//! with nothing else installed, and a scrape every 15–60 s cannot show a
//! 1-second chart anyway. Why these exact numbers: they are fed at the same
//! places as the Prometheus families they mirror (`throttle_wait_seconds`
//! in `admission::Admission::admit`, `upstream_responses_total` in the
//! pipeline's response filter, the `domain_*` gauges from the admission
//! snapshot), under the same capped `domain` label, so the console and the
//! Grafana dashboard (deploy chart) show the same thing.
//!
//! Memory is fixed per domain: [`RING_BYTES`] (900 slots of [`SLOT_BYTES`]),
//! allocated on a domain's first event and freed once it has had no event
//! for the whole window. The number of rings is capped by the metrics'
//! domain-label cap (`[metrics] max_domains`, plus `other`, where every
//! domain past the cap is counted, exactly as in Prometheus); an event for
//! a label beyond that cap is dropped and counted in [`Series::dropped`].

use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use dashmap::DashMap;
use serde::Serialize;

/// Seconds of history kept: 15 minutes.
pub const WINDOW: u32 = 900;

/// Upper bounds (seconds) of the wait histogram kept per second: the same
/// as `ezthrottle_throttle_wait_seconds`, so quantiles agree with
/// `histogram_quantile` over the Prometheus histogram.
pub const WAIT_BOUNDS: [f64; 15] = super::WAIT_BUCKETS;

/// Response classes counted per second, in the order of [`Slot::responses`].
pub const CLASSES: [&str; 4] = ["2xx", "429", "5xx", "other"];

/// One second of one domain.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Unix second this slot holds; 0: empty.
    second: u32,
    /// Admissions granted in this second.
    admitted: u32,
    /// Admissions refused (queue full, wait timeout).
    denied: u32,
    /// Upstream responses by class ([`CLASSES`]).
    responses: [u32; 4],
    /// Admission waits by bucket ([`WAIT_BOUNDS`] then +Inf); saturating.
    wait: [u16; 16],
    /// The gauges as sampled once in this second; `max_concurrent == 0`:
    /// not sampled (a cap is never 0).
    rps_limit: f32,
    max_concurrent: u32,
    in_flight: u32,
    waiting: u32,
}

/// Bytes of one second of one domain.
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();
/// Bytes of one domain's ring (the slots; the map entry and the label
/// string add about 100 bytes more).
pub const RING_BYTES: usize = SLOT_BYTES * WINDOW as usize;

struct Ring {
    slots: Box<[Slot]>,
    /// The newest second written.
    newest: u32,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            slots: vec![Slot::default(); WINDOW as usize].into_boxed_slice(),
            newest: 0,
        }
    }

    /// The slot of `second`, cleared if it held an older second; `None`
    /// for a second already out of the window.
    fn slot(&mut self, second: u32) -> Option<&mut Slot> {
        if second.saturating_add(WINDOW) <= self.newest {
            return None;
        }
        let slot = &mut self.slots[second as usize % WINDOW as usize];
        if slot.second != second {
            if slot.second > second {
                return None;
            }
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        self.newest = self.newest.max(second);
        Some(slot)
    }

    fn get(&self, second: u32) -> Option<&Slot> {
        let slot = &self.slots[second as usize % WINDOW as usize];
        (slot.second == second && second != 0).then_some(slot)
    }
}

/// What the sampler reads from the admission snapshot once a second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gauges {
    pub rps_limit: f64,
    pub max_concurrent: u32,
    pub in_flight: u32,
    pub waiting: u32,
}

/// Every domain's ring.
pub struct Series {
    rings: DashMap<String, Mutex<Ring>, ahash::RandomState>,
    cap: usize,
    dropped: std::sync::atomic::AtomicU64,
}

/// The current Unix second.
pub fn now_second() -> u32 {
    crate::clock::coarse_now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn bucket_of(waited: Duration) -> usize {
    let secs = waited.as_secs_f64();
    WAIT_BOUNDS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(WAIT_BOUNDS.len())
}

fn class_of(code: u16) -> usize {
    match code {
        200..=299 => 0,
        429 => 1,
        500..=599 => 2,
        _ => 3,
    }
}

/// The `q` quantile (seconds) of one second's wait histogram, interpolated
/// linearly inside its bucket as Prometheus' `histogram_quantile` does
/// (the +Inf bucket answers its lower bound); `None` with no observation.
fn quantile(hist: &[u16; 16], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        let before = seen;
        seen += u64::from(n);
        if (seen as f64) >= rank && n > 0 {
            if i >= WAIT_BOUNDS.len() {
                return Some(WAIT_BOUNDS[WAIT_BOUNDS.len() - 1]);
            }
            let lower = if i == 0 { 0.0 } else { WAIT_BOUNDS[i - 1] };
            let upper = WAIT_BOUNDS[i];
            let inside = (rank - before as f64) / f64::from(n);
            return Some(lower + (upper - lower) * inside.clamp(0.0, 1.0));
        }
    }
    Some(WAIT_BOUNDS[WAIT_BOUNDS.len() - 1])
}

/// One domain's points from `from` to `to` (inclusive), one per second,
/// column by column (compact JSON, and what a chart draws from).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Points {
    /// Unix second of the first point.
    pub from: u32,
    pub admitted: Vec<u32>,
    pub denied: Vec<u32>,
    pub r2xx: Vec<u32>,
    pub r429: Vec<u32>,
    pub r5xx: Vec<u32>,
    pub rother: Vec<u32>,
    /// Milliseconds, rounded to 0.1 ms; null in a second with no admission.
    pub wait_p50_ms: Vec<Option<f64>>,
    pub wait_p99_ms: Vec<Option<f64>>,
    /// Null in a second the sampler did not see the domain.
    pub rps_limit: Vec<Option<f64>>,
    pub max_concurrent: Vec<Option<u32>>,
    pub in_flight: Vec<Option<u32>>,
    pub waiting: Vec<Option<u32>>,
}

fn ms(secs: Option<f64>) -> Option<f64> {
    secs.map(|s| (s * 10_000.0).round() / 10.0)
}

impl Series {
    /// Rings for at most `cap` labels.
    pub fn new(cap: usize) -> Series {
        Series {
            rings: DashMap::with_hasher(ahash::RandomState::new()),
            cap: cap.max(1),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Run `f` on `label`'s slot for `second`, creating the ring if the cap
    /// allows.
    fn with_slot(&self, label: &str, second: u32, f: impl FnOnce(&mut Slot)) {
        if let Some(ring) = self.rings.get(label) {
            let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = ring.slot(second) {
                f(slot);
            }
            return;
        }
        if self.rings.len() >= self.cap {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let entry = self
            .rings
            .entry(label.to_string())
            .or_insert_with(|| Mutex::new(Ring::new()));
        let mut ring = entry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = ring.slot(second) {
            f(slot);
        }
    }

    /// An admission decision of `label` that waited `waited`; `granted`:
    /// admitted (else refused for capacity).
    pub fn admission(&self, label: &str, waited: Duration, granted: bool) {
        self.admission_at(label, now_second(), waited, granted);
    }

    pub(crate) fn admission_at(&self, label: &str, second: u32, waited: Duration, granted: bool) {
        let b = bucket_of(waited);
        self.with_slot(label, second, |s| {
            if granted {
                s.admitted = s.admitted.saturating_add(1);
            } else {
                s.denied = s.denied.saturating_add(1);
            }
            s.wait[b] = s.wait[b].saturating_add(1);
        });
    }

    /// An upstream response of `label` with status `code`.
    pub fn response(&self, label: &str, code: u16) {
        self.response_at(label, now_second(), code);
    }

    pub(crate) fn response_at(&self, label: &str, second: u32, code: u16) {
        let c = class_of(code);
        self.with_slot(label, second, |s| {
            s.responses[c] = s.responses[c].saturating_add(1);
        });
    }

    /// The sampler's reading of `label` in `second`.
    pub fn sample_at(&self, label: &str, second: u32, g: Gauges) {
        self.with_slot(label, second, |s| {
            s.rps_limit = g.rps_limit as f32;
            s.max_concurrent = g.max_concurrent.max(1);
            s.in_flight = g.in_flight;
            s.waiting = g.waiting;
        });
    }

    /// Free the rings of labels with no event in the whole window before `now`.
    pub fn prune(&self, now: u32) {
        self.rings.retain(|_, ring| {
            let ring = ring.get_mut().unwrap_or_else(|p| p.into_inner());
            ring.newest.saturating_add(WINDOW) > now
        });
    }

    /// Labels with a ring.
    pub fn labels(&self) -> Vec<String> {
        self.rings.iter().map(|e| e.key().clone()).collect()
    }

    /// Admissions plus responses of `label` in the window ending at `now`.
    pub fn activity(&self, label: &str, now: u32) -> u64 {
        let Some(ring) = self.rings.get(label) else {
            return 0;
        };
        let ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.slots
            .iter()
            .filter(|s| s.second != 0 && s.second.saturating_add(WINDOW) > now)
            .map(|s| {
                u64::from(s.admitted)
                    + u64::from(s.denied)
                    + s.responses.iter().map(|&n| u64::from(n)).sum::<u64>()
            })
            .sum()
    }

    /// `label`'s points from `since` (clamped to the window) to `now`.
    pub fn points(&self, label: &str, since: u32, now: u32) -> Points {
        let from = since.max(now.saturating_sub(WINDOW - 1)).min(now);
        let n = (now - from + 1) as usize;
        let mut p = Points {
            from,
            ..Points::default()
        };
        let ring = self.rings.get(label);
        let ring = ring
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|p| p.into_inner()));
        for second in from..=now {
            let slot = ring.as_ref().and_then(|r| r.get(second)).copied();
            let s = slot.unwrap_or_default();
            p.admitted.push(s.admitted);
            p.denied.push(s.denied);
            p.r2xx.push(s.responses[0]);
            p.r429.push(s.responses[1]);
            p.r5xx.push(s.responses[2]);
            p.rother.push(s.responses[3]);
            p.wait_p50_ms.push(ms(quantile(&s.wait, 0.5)));
            p.wait_p99_ms.push(ms(quantile(&s.wait, 0.99)));
            let sampled = slot.is_some() && s.max_concurrent > 0;
            p.rps_limit
                .push(sampled.then(|| (f64::from(s.rps_limit) * 1000.0).round() / 1000.0));
            p.max_concurrent.push(sampled.then_some(s.max_concurrent));
            p.in_flight.push(sampled.then_some(s.in_flight));
            p.waiting.push(sampled.then_some(s.waiting));
        }
        debug_assert_eq!(p.admitted.len(), n);
        p
    }

    /// Rings in memory.
    pub fn len(&self) -> usize {
        self.rings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Events dropped because the cap was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes held by the rings' slots now.
    pub fn bytes(&self) -> usize {
        self.rings.len() * RING_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u32 = 1_800_000_000;

    #[test]
    fn slot_size_is_what_the_docs_say() {
        // docs/console.md states these figures.
        assert_eq!(SLOT_BYTES, 76);
        assert_eq!(RING_BYTES, 68_400);
    }

    #[test]
    fn counts_land_in_their_second_and_old_ones_are_overwritten() {
        let s = Series::new(10);
        s.admission_at("a.test", T, Duration::from_millis(3), true);
        s.admission_at("a.test", T, Duration::from_millis(3), true);
        s.admission_at("a.test", T + 1, Duration::ZERO, false);
        s.response_at("a.test", T, 200);
        s.response_at("a.test", T, 429);
        s.response_at("a.test", T + 1, 503);
        s.response_at("a.test", T + 1, 404);
        let p = s.points("a.test", T, T + 2);
        assert_eq!(p.from, T);
        assert_eq!(p.admitted, vec![2, 0, 0]);
        assert_eq!(p.denied, vec![0, 1, 0]);
        assert_eq!(p.r2xx, vec![1, 0, 0]);
        assert_eq!(p.r429, vec![1, 0, 0]);
        assert_eq!(p.r5xx, vec![0, 1, 0]);
        assert_eq!(p.rother, vec![0, 1, 0]);
        assert_eq!(p.wait_p50_ms[2], None);
        // A whole window later the slot of T is reused for T + 900.
        s.admission_at("a.test", T + WINDOW, Duration::ZERO, true);
        let p = s.points("a.test", 0, T + WINDOW);
        assert_eq!(p.from, T + 1);
        assert_eq!(p.admitted.len(), WINDOW as usize);
        assert_eq!(p.admitted[WINDOW as usize - 1], 1);
        // A late event for a second out of the window is ignored.
        s.admission_at("a.test", T, Duration::ZERO, true);
        assert_eq!(s.points("a.test", T + WINDOW, T + WINDOW).admitted, vec![1]);
    }

    #[test]
    fn gauges_are_null_until_sampled() {
        let s = Series::new(10);
        s.sample_at(
            "a.test",
            T + 1,
            Gauges {
                rps_limit: 2.5,
                max_concurrent: 4,
                in_flight: 3,
                waiting: 7,
            },
        );
        let p = s.points("a.test", T, T + 1);
        assert_eq!(p.rps_limit, vec![None, Some(2.5)]);
        assert_eq!(p.max_concurrent, vec![None, Some(4)]);
        assert_eq!(p.in_flight, vec![None, Some(3)]);
        assert_eq!(p.waiting, vec![None, Some(7)]);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let mut h = [0u16; 16];
        assert_eq!(quantile(&h, 0.5), None);
        // 100 waits in (0.05, 0.1]: the median is halfway through it.
        h[5] = 100;
        let p50 = quantile(&h, 0.5).unwrap();
        assert!((p50 - 0.075).abs() < 1e-9, "{p50}");
        // One very long wait: p99 of 100 + 1 lands in +Inf -> the top bound.
        h[15] = 2;
        assert_eq!(quantile(&h, 0.99), Some(120.0));
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_millis(1)), 0);
        assert_eq!(bucket_of(Duration::from_millis(2)), 1);
        assert_eq!(bucket_of(Duration::from_secs(1000)), 15);
    }

    #[test]
    fn the_cap_bounds_the_rings_and_idle_rings_are_freed() {
        let s = Series::new(2);
        s.response_at("a.test", T, 200);
        s.response_at("b.test", T, 200);
        s.response_at("c.test", T, 200);
        assert_eq!(s.len(), 2);
        assert_eq!(s.dropped(), 1);
        assert_eq!(s.bytes(), 2 * RING_BYTES);
        s.response_at("b.test", T + 600, 200);
        s.prune(T + WINDOW);
        assert_eq!(s.labels(), vec!["b.test".to_string()]);
        assert_eq!(s.activity("b.test", T + WINDOW), 1);
    }

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        let s = Series::new(1);
        for _ in 0..70_000 {
            s.admission_at("a.test", T, Duration::ZERO, true);
        }
        let p = s.points("a.test", T, T);
        assert_eq!(p.admitted, vec![70_000]);
        assert_eq!(p.wait_p50_ms, vec![Some(0.5)]);
    }
}
