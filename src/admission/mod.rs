//! Admission phase: per-domain pace and concurrency (SPEC §5).
//!
//! [`Admission`] owns one [`DomainThrottle`] per domain, built from the
//! config and from limits learned earlier (persisted in the store), and feeds
//! every upstream response's limit headers back into it.

pub mod budget_key;
pub mod dialects;
pub mod domain;
pub mod gcra;
pub mod learn;
pub mod shared;
pub mod spent;
pub mod timer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub use domain::{Denied, DomainThrottle, LocalPermit, Snapshot, Source};
pub use shared::SharedSlots;
pub use spent::StartNo;

/// A concurrency slot, held while the request (or tunnel) is upstream:
/// this replica's own, or one shared with every replica through Redis.
pub enum Permit {
    Local(LocalPermit),
    Shared(shared::SharedPermit),
}

impl Permit {
    /// Which start of its throttle this was (an answer's budget counts up
    /// to it; see [`spent`]).
    pub fn start_no(&self) -> StartNo {
        match self {
            Permit::Local(p) => p.start_no(),
            Permit::Shared(p) => p.start_no(),
        }
    }
}

impl From<LocalPermit> for Permit {
    fn from(p: LocalPermit) -> Permit {
        Permit::Local(p)
    }
}

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{now_ms, LearnedLimit, Store};

pub struct Admission {
    /// The config in force; [`Admission::reconfigure`] swaps it.
    config: arc_swap::ArcSwap<Config>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    domains: DashMap<String, Arc<DomainThrottle>, ahash::RandomState>,
    /// Learned limits (from the store at start, then as learned), applied
    /// when a domain's throttle is created — first use, or again after an
    /// idle throttle was forgotten.
    learned: DashMap<String, LearnedLimit>,
    /// Domains whose bad header values were already logged (log once per domain).
    warned: DashMap<String, ()>,
    /// Bounds of `learned` and `warned` ([`MAX_LEARNED`], [`MAX_WARNED`]).
    caps: Caps,
    /// Pace, concurrency, limits and pauses shared with the other replicas
    /// (Redis backend); `None`: this process decides alone.
    shared: Option<Arc<SharedSlots>>,
    /// While Redis does not answer: each domain's local throttle at this
    /// replica's share of the limits (docs/distributed.md).
    degraded: DashMap<String, Arc<DomainThrottle>>,
}

/// At most this many domains' learned limits are kept in memory; past it the
/// least recently updated tenth is dropped (they stay in the store, and a
/// dropped domain learns again from its next limit headers).
pub const MAX_LEARNED: usize = 10_000;

/// At most this many domains are remembered as already warned about; when
/// full the set starts over (a domain may then be warned about again).
pub const MAX_WARNED: usize = 1_000;

#[derive(Debug, Clone, Copy)]
struct Caps {
    learned: usize,
    warned: usize,
}

impl Admission {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        store: Arc<dyn Store>,
        learned: Vec<LearnedLimit>,
    ) -> Self {
        let admission = Admission {
            config: arc_swap::ArcSwap::new(config),
            metrics,
            store,
            domains: DashMap::with_hasher(ahash::RandomState::new()),
            learned: newest(learned, MAX_LEARNED)
                .into_iter()
                .map(|l| (l.domain.clone(), l))
                .collect(),
            warned: DashMap::new(),
            caps: Caps {
                learned: MAX_LEARNED,
                warned: MAX_WARNED,
            },
            shared: None,
            degraded: DashMap::new(),
        };
        // Show learned domains in /api/v1/domains and metrics right after a restart.
        let names: Vec<String> = admission.learned.iter().map(|e| e.key().clone()).collect();
        for name in names {
            admission.throttle(&name);
        }
        admission
    }

    /// A reloaded config: every throttle takes its new limits at once,
    /// keeping its queue, its requests in flight, its pause, what it learned
    /// and its budget pace; the degraded (Redis away) throttles are rebuilt
    /// on their next use.
    pub fn reconfigure(&self, config: Arc<Config>) {
        self.config.store(config);
        for t in self.domains.iter() {
            t.value().reconfigure(self.initial(t.key()));
        }
        self.degraded.clear();
    }

    /// Share pace, concurrency and pauses with the other replicas.
    pub fn with_shared(mut self, shared: Arc<SharedSlots>) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn shared(&self) -> Option<&Arc<SharedSlots>> {
        self.shared.as_ref()
    }

    /// The throttle of `domain`, created on first use.
    pub fn throttle(&self, domain: &str) -> Arc<DomainThrottle> {
        if let Some(t) = self.domains.get(domain) {
            return t.clone();
        }
        self.domains
            .entry(domain.to_string())
            .or_insert_with(|| {
                DomainThrottle::new(
                    domain.to_string(),
                    self.initial(domain),
                    self.gauges(domain),
                )
            })
            .clone()
    }

    /// The limits a throttle starts with. `name` is a domain, or a
    /// domain's per-credential budget (`host#key`, `budget_key.rs`): config
    /// and presets are per host, learned limits per throttle.
    fn initial(&self, name: &str) -> domain::Initial {
        let host = budget_key::host_of(name);
        let config = self.config.load();
        let limits = &config.limits;
        let dc = config.domain(host);
        let l = dc.map(|d| &d.limits).unwrap_or(&limits.defaults);
        let pinned = dc.is_some_and(|d| d.pin);
        let source = |set: bool| if set { Source::Config } else { Source::Default };
        let mut init = domain::Initial {
            rps: l.rps,
            rps_source: source(dc.is_some_and(|d| d.rps_set)),
            max_concurrent: l.max_concurrent,
            concurrency_source: source(dc.is_some_and(|d| d.max_concurrent_set)),
            burst: l.burst,
            queue_capacity: l.queue_capacity,
            pinned,
            rps_ceiling: limits.rps_ceiling,
            concurrency_ceiling: limits.concurrency_ceiling,
        };
        // A vendor's published limits, for a host with no table of its own.
        if let Some(p) = config.preset(host) {
            if let Some(rps) = p.rps.filter(|r| r.is_finite() && *r > 0.0) {
                init.rps = rps.clamp(0.01, limits.rps_ceiling);
                init.rps_source = Source::Preset;
            }
            if let Some(c) = p.max_concurrent.filter(|c| *c > 0) {
                init.max_concurrent = c.clamp(1, limits.concurrency_ceiling);
                init.concurrency_source = Source::Preset;
            }
        }
        if !pinned {
            if let Some(learned) = self.learned.get(name) {
                if let Some(rps) = learned.rps.filter(|r| r.is_finite() && *r > 0.0) {
                    init.rps = rps.clamp(0.01, limits.rps_ceiling);
                    init.rps_source = Source::Learned;
                }
                if let Some(c) = learned.max_concurrent.filter(|c| *c > 0) {
                    init.max_concurrent = c.clamp(1, limits.concurrency_ceiling);
                    init.concurrency_source = Source::Learned;
                }
            }
        }
        init
    }

    fn gauges(&self, domain: &str) -> domain::Gauges {
        let m = &self.metrics;
        let label = m.domain_label(domain);
        let l = [label.as_str()];
        domain::Gauges {
            rps_limit: m.domain_rps_limit.with_label_values(&l),
            concurrency_limit: m.domain_concurrency_limit.with_label_values(&l),
            in_flight: m.domain_in_flight.with_label_values(&l),
            waiting: m.domain_waiting.with_label_values(&l),
            paused_until: m.domain_paused_until_seconds.with_label_values(&l),
            by_source: Some((
                m.domain_rps_source.clone(),
                m.domain_budget_remaining.clone(),
                label,
            )),
        }
    }

    /// Wait for admission; records the wait time.
    pub async fn admit(
        &self,
        domain: &str,
        max_wait: Duration,
    ) -> Result<(Permit, Duration), Denied> {
        self.admit_counted_in(domain, max_wait, None).await
    }

    /// [`Self::admit`], counted in `series` when the caller has the
    /// throttle's metric series at hand already: a proxied request keeps
    /// its domain's for classification too, and one look-up a request is
    /// ~150 instructions fewer than two (docs/performance.md, "The
    /// sixteenth pass"). `series` must be `domain`'s.
    pub async fn admit_counted_in(
        &self,
        domain: &str,
        max_wait: Duration,
        series: Option<&Arc<crate::metrics::DomainSeries>>,
    ) -> Result<(Permit, Duration), Denied> {
        let throttle = self.throttle(domain);
        let (result, waited) = match &self.shared {
            None => {
                let (result, waited) = throttle.acquire_timed(max_wait).await;
                (result.map(Permit::from), waited)
            }
            Some(shared) => {
                let started = Instant::now();
                let result = self.admit_shared(shared, &throttle, max_wait).await;
                (result, started.elapsed())
            }
        };
        let looked_up;
        let series = match series {
            Some(series) => series,
            None => {
                looked_up = self.metrics.series(domain);
                &looked_up
            }
        };
        series.throttle_wait.observe(waited.as_secs_f64());
        if result.is_ok() {
            series.admitted.inc();
        } else {
            series.refused.inc();
        }
        self.metrics
            .console
            .admission(series.label(), waited, result.is_ok());
        result.map(|p| (p, waited))
    }

    /// Admission through Redis; when Redis does not answer (now, or as last
    /// seen by the heartbeat), this replica admits alone at its share.
    async fn admit_shared(
        &self,
        shared: &Arc<SharedSlots>,
        throttle: &Arc<DomainThrottle>,
        max_wait: Duration,
    ) -> Result<Permit, Denied> {
        let domain = throttle.name.as_str();
        let started = Instant::now();
        if shared.redis().is_up() {
            let init = self.initial(domain);
            let limits = shared::Limits {
                rps: init.rps,
                max_concurrent: init.max_concurrent,
                burst: init.burst,
                pinned: init.pinned,
                stated: matches!(init.rps_source, Source::Config | Source::Preset),
                rps_ceiling: init.rps_ceiling,
                concurrency_ceiling: init.concurrency_ceiling,
                queue_capacity: init.queue_capacity,
            };
            match shared.acquire(domain, &limits, max_wait).await {
                Ok(result) => {
                    if !self.degraded.is_empty() {
                        self.degraded.clear();
                        tracing::info!("redis answers again: admissions shared with every replica");
                    }
                    return result.map(Permit::Shared);
                }
                Err(shared::Unavailable(e)) => {
                    tracing::warn!(domain, error = %e, "redis did not answer: admitting at this replica's share");
                }
            }
        }
        self.metrics.admissions_degraded_total.inc();
        let left = max_wait.saturating_sub(started.elapsed());
        self.degraded_throttle(shared, domain)
            .acquire(left)
            .await
            .map(Permit::from)
    }

    /// The local throttle used while Redis is away: the limits last seen in
    /// Redis (else the config's), divided among the live replicas last
    /// counted, so that together they stay near the limit, never N times it.
    /// A concurrency share never drops below 1 (a replica must make progress).
    fn degraded_throttle(&self, shared: &SharedSlots, domain: &str) -> Arc<DomainThrottle> {
        if let Some(t) = self.degraded.get(domain) {
            return t.clone();
        }
        let mut init = self.initial(domain);
        if let Some(v) = shared.view(domain) {
            init.rps = v.rps;
            init.max_concurrent = v.max_concurrent;
        }
        let n = shared.redis().live_replicas().max(1);
        init.rps /= f64::from(n);
        init.max_concurrent = (init.max_concurrent / n).max(1);
        tracing::warn!(
            domain,
            replicas = n,
            rps = init.rps,
            max_concurrent = init.max_concurrent,
            "redis unavailable: pacing this domain at this replica's share"
        );
        let gauges = self.gauges(domain);
        self.degraded
            .entry(domain.to_string())
            .or_insert_with(|| DomainThrottle::new(domain.to_string(), init, gauges))
            .clone()
    }

    /// Learn from an upstream response of `domain` to the request admitted
    /// as `start` (if known). Changed limits are persisted before this
    /// returns, so the client's response is only sent once a restart would
    /// remember them.
    pub async fn learn(
        &self,
        domain: &str,
        status: u16,
        headers: &http::HeaderMap,
        start: Option<StartNo>,
    ) {
        let signals = learn::read(status, headers, crate::clock::coarse_now());
        if signals.is_empty() {
            return;
        }
        let throttle = self.throttle(domain);
        if !signals.ignored.is_empty() {
            let label = self.metrics.domain_label(domain);
            for header in &signals.ignored {
                self.metrics
                    .limit_headers_ignored_total
                    .with_label_values(&[label.as_str(), header])
                    .inc();
            }
            if !self.warned.contains_key(domain) && self.warned.len() >= self.caps.warned {
                self.warned.clear();
            }
            if self.warned.insert(domain.to_string(), ()).is_none() {
                tracing::warn!(domain, headers = ?signals.ignored, "ignoring unusable rate-limit header values (logged once per domain)");
            }
        }
        let mut changed = throttle.learn(&signals, start);
        if let Some(t) = self.degraded.get(domain) {
            t.learn(&signals, start);
        }
        if let Some(pause) = signals.pause {
            tracing::info!(
                domain,
                pause_ms = pause.as_millis() as u64,
                "domain paused by upstream"
            );
            if let Some(shared) = &self.shared {
                if !throttle.pinned() {
                    if let Err(e) = shared.pause(domain, pause).await {
                        tracing::warn!(domain, error = %e, "cannot share the pause with the other replicas");
                    }
                }
            }
        }
        if let Some(shared) = &self.shared {
            // The count as of a start through Redis: every replica's later
            // starts spend it.
            let spent = match (start, spent::spendable(&signals.budgets)) {
                (Some(StartNo::Shared(after)), Some((remaining, reset_in)))
                    if !throttle.pinned() =>
                {
                    Some(shared::SharedSpent {
                        after,
                        remaining,
                        reset_in,
                    })
                }
                _ => None,
            };
            if changed.budget.is_some() || spent.is_some() {
                shared.budget(domain, changed.budget, spent).await;
            }
        }
        if let Some(shared) = &self.shared {
            // Another replica may have learned something else meanwhile:
            // what counts is what Redis holds, not our last copy.
            if let Some(v) = shared.view(domain) {
                let snap = throttle.snapshot();
                if !snap.pinned {
                    if signals.rps.is_some() && (snap.rps - v.rps).abs() > v.rps * 1e-3 {
                        changed.rps = Some(snap.rps);
                    }
                    if signals.max_concurrent.is_some() && snap.max_concurrent != v.max_concurrent {
                        changed.max_concurrent = Some(snap.max_concurrent);
                    }
                }
            }
        }
        if changed.any() {
            tracing::info!(domain, rps = ?changed.rps, max_concurrent = ?changed.max_concurrent, "learned limits");
            if !self.learned.contains_key(domain) && self.learned.len() >= self.caps.learned {
                self.evict_learned();
            }
            {
                let mut known = self
                    .learned
                    .entry(domain.to_string())
                    .or_insert(LearnedLimit {
                        domain: domain.to_string(),
                        rps: None,
                        max_concurrent: None,
                        updated_at: 0,
                    });
                known.rps = changed.rps.or(known.rps);
                known.max_concurrent = changed.max_concurrent.or(known.max_concurrent);
                known.updated_at = now_ms();
            }
            let record = LearnedLimit {
                domain: domain.to_string(),
                rps: changed.rps,
                max_concurrent: changed.max_concurrent,
                updated_at: now_ms(),
            };
            if let Err(e) = self.store.save_learned_limit(record).await {
                tracing::error!(domain, error = %e, "cannot persist learned limits");
            } else if let Some(shared) = &self.shared {
                shared.announce(domain).await;
            }
        }
    }

    /// Drop the least recently updated learned limits down to nine tenths
    /// of the cap (so that eviction runs once per tenth of the cap of new
    /// domains, not on every one).
    fn evict_learned(&self) {
        let keep = self.caps.learned - self.caps.learned / 10;
        let mut all: Vec<(u64, String)> = self
            .learned
            .iter()
            .map(|e| (e.value().updated_at, e.key().clone()))
            .collect();
        if all.len() <= keep {
            return;
        }
        all.sort_unstable();
        let drop = all.len() - keep;
        for (_, domain) in all.into_iter().take(drop) {
            self.learned.remove(&domain);
        }
        tracing::debug!(
            dropped = drop,
            "learned limits over the cap: least recently updated dropped from memory"
        );
    }

    /// Forget throttles idle for `idle` (nothing in flight, waiting or
    /// paused) so a sidecar that talks to many hosts does not keep every
    /// one forever. Safe against a racing request: a throttle is removed only
    /// while the map holds its only reference, under the map's shard lock,
    /// so no request is using it, and the next one creates a fresh throttle
    /// from the config and the learned limits. Returns how many went.
    pub fn forget_idle(&self, idle: Duration) -> usize {
        if let Some(shared) = &self.shared {
            shared.forget_idle();
        }
        let before = self.domains.len();
        self.domains
            .retain(|_, t| !(Arc::strong_count(t) == 1 && t.idle_for(idle)));
        before.saturating_sub(self.domains.len())
    }

    /// Runs [`Admission::forget_idle`] every minute, for throttles idle 10 min.
    pub async fn forget_idle_forever(self: Arc<Self>) {
        const IDLE: Duration = Duration::from_secs(600);
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let n = self.forget_idle(IDLE);
            if n > 0 {
                tracing::debug!(domains = n, "forgot idle domain throttles");
            }
        }
    }

    /// Every known domain, sorted by name.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        let mut all: Vec<Snapshot> = self
            .domains
            .iter()
            .map(|e| {
                let mut snap = e.value().snapshot();
                if let Some(shared) = &self.shared {
                    shared.overlay(&mut snap);
                }
                snap
            })
            .collect();
        all.sort_by(|a, b| a.domain.cmp(&b.domain));
        all
    }
}

/// The `cap` most recently updated of `all` (the store may hold more
/// domains than are kept in memory).
fn newest(mut all: Vec<LearnedLimit>, cap: usize) -> Vec<LearnedLimit> {
    if all.len() > cap {
        all.sort_unstable_by_key(|l| std::cmp::Reverse(l.updated_at));
        all.truncate(cap);
    }
    all
}

/// The max wait of a request: its `X-EZThrottle-Max-Wait` (seconds) or
/// the domain's configured `max_wait`, under `config` (the request's
/// snapshot on the proxy path).
pub fn max_wait(config: &Config, domain: &str, header: Option<&str>) -> Result<Duration, String> {
    match header {
        None => Ok(config.limits_for(budget_key::host_of(domain)).max_wait),
        Some(v) => {
            let secs: f64 = v.trim().parse().map_err(|_| {
                format!("X-EZThrottle-Max-Wait must be a number of seconds, got {v:?}")
            })?;
            if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
                return Err(format!(
                    "X-EZThrottle-Max-Wait must be between 0 and 86400 seconds, got {v:?}"
                ));
            }
            // Clamped, not refused: the app asked for patience, and gets
            // as much as the operator allows.
            let wait = Duration::try_from_secs_f64(secs).unwrap_or_default();
            Ok(wait.min(config.limits.max_wait_ceiling))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(dir: &std::path::Path) -> Admission {
        let config = Arc::new(Config::from_toml_str("", "t.toml").expect("config"));
        let store: Arc<dyn Store> =
            Arc::new(crate::store::EmbeddedStore::open(dir).expect("store"));
        Admission::new(config, Arc::new(Metrics::new(100)), store, Vec::new())
    }

    /// Admitting with the caller's series at hand counts the same series a
    /// look-up would find: the domain's one entry in the registry.
    #[tokio::test]
    async fn admission_counted_in_a_given_series_is_the_domains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = admission(dir.path());
        let series = a.metrics.series("a.test");
        let (p1, _) = a
            .admit_counted_in("a.test", Duration::from_secs(1), Some(&series))
            .await
            .expect("admit");
        drop(p1);
        let (p2, _) = a
            .admit("a.test", Duration::from_secs(1))
            .await
            .expect("admit");
        drop(p2);
        assert_eq!(series.admitted.get(), 2);
        assert_eq!(a.metrics.series("a.test").admitted.get(), 2);
        assert_eq!(a.metrics.series("b.test").admitted.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_throttles_are_forgotten_but_not_their_learned_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = admission(dir.path());
        let (permit, _) = a
            .admit("a.test", Duration::from_secs(1))
            .await
            .expect("admit");
        let mut headers = http::HeaderMap::new();
        headers.insert("x-ezthrottle-rps", "5".parse().expect("hv"));
        a.learn("a.test", 200, &headers, None).await;
        let held = a.throttle("b.test");

        // In use, then not idle long enough: kept.
        tokio::time::advance(Duration::from_secs(900)).await;
        assert_eq!(
            a.forget_idle(Duration::from_secs(600)),
            0,
            "a.test holds a permit"
        );
        drop(permit);
        assert_eq!(a.forget_idle(Duration::from_secs(600)), 0, "just released");
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(a.forget_idle(Duration::from_secs(600)), 1);
        let names: Vec<String> = a.snapshot().into_iter().map(|s| s.domain).collect();
        assert_eq!(names, ["b.test"], "b.test is referenced by a request");

        // Seen again: recreated with what was learned.
        let again = a.throttle("a.test").snapshot();
        assert_eq!(again.rps, 5.0);
        assert_eq!(again.rps_source, Source::Learned);
        drop(held);
    }

    fn headers(name: &str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
        h
    }

    /// Learned limits of ever new domains stay under the cap; the most
    /// recently updated are the ones kept.
    #[tokio::test]
    async fn learned_limits_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = admission(dir.path());
        a.caps.learned = 10;
        for i in 0..25 {
            a.learn(
                &format!("d{i}.test"),
                200,
                &headers("x-ezthrottle-rps", "5"),
                None,
            )
            .await;
            assert!(a.learned.len() <= 10, "{} after {i}", a.learned.len());
            // Distinct update times, so that "least recently" is exact.
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(a.learned.contains_key("d24.test"), "the newest is kept");
        assert!(!a.learned.contains_key("d0.test"), "the oldest went");
        // A domain already known is updated in place, whatever the count.
        let before = a.learned.len();
        a.learn("d24.test", 200, &headers("x-ezthrottle-rps", "7"), None)
            .await;
        assert_eq!(a.learned.len(), before);
        assert_eq!(a.learned.get("d24.test").expect("kept").rps, Some(7.0));
    }

    /// At start, only the newest learned limits of the store are kept.
    #[test]
    fn newest_keeps_the_most_recent() {
        let all: Vec<LearnedLimit> = (0..5u64)
            .map(|i| LearnedLimit {
                domain: format!("d{i}"),
                rps: Some(1.0),
                max_concurrent: None,
                updated_at: i,
            })
            .collect();
        let kept: Vec<String> = newest(all.clone(), 2)
            .into_iter()
            .map(|l| l.domain)
            .collect();
        assert_eq!(kept, ["d4", "d3"]);
        assert_eq!(newest(all, 10).len(), 5);
    }

    /// The "warned once" set of domains with unusable limit headers is bounded.
    #[tokio::test]
    async fn warned_domains_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = admission(dir.path());
        a.caps.warned = 5;
        for i in 0..23 {
            a.learn(
                &format!("w{i}.test"),
                200,
                &headers("x-ezthrottle-rps", "abc"),
                None,
            )
            .await;
            assert!(a.warned.len() <= 5, "{} after {i}", a.warned.len());
        }
        assert!(a.warned.contains_key("w22.test"));
    }

    #[test]
    fn a_requested_max_wait_is_clamped_to_the_ceiling() {
        let config = Config::from_toml_str("", "t.toml").expect("config");
        let wait = |header| max_wait(&config, "a.test", header);
        assert_eq!(wait(None), Ok(Duration::from_secs(60)));
        assert_eq!(wait(Some("2.5")), Ok(Duration::from_millis(2500)));
        // Default ceiling 1h: a day's patience is clamped, not refused.
        assert_eq!(wait(Some("86400")), Ok(Duration::from_secs(3600)));
        for bad in ["86401", "-1", "NaN", "inf", "18446744073709551615", "x"] {
            assert!(wait(Some(bad)).is_err(), "{bad}");
        }
    }
}
