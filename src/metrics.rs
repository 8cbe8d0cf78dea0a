//! Prometheus metrics (SPEC §10), prefix `ezthrottle_`, on a registry of
//! our own so tests and embedders never share global state.
//!
//! The `domain` label is capped at `[metrics] max_domains` distinct values
//! (the rest are `other`): a proxy sees whatever hosts its apps call, and an
//! unbounded label would let one misbehaving app exhaust the scraper.

pub mod console;

use std::sync::{Arc, Mutex};

use dashmap::{DashMap, DashSet};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    max_domains: usize,
    seen: DashSet<String>,
    /// The hot series of each label in `seen`, by the name they were asked
    /// for (`other` past the cap): see [`DomainSeries`].
    series: DashMap<String, Arc<DomainSeries>, ahash::RandomState>,
    pub requests_total: IntCounterVec,
    pub upstream_responses_total: IntCounterVec,
    pub upstream_duration_seconds: HistogramVec,
    pub throttle_wait_seconds: HistogramVec,
    /// Admission decisions by domain and result (`admitted`, `refused`):
    /// the console's "admitted req/s" chart as a Prometheus family.
    pub admissions_total: IntCounterVec,
    pub domain_rps_limit: GaugeVec,
    pub domain_concurrency_limit: IntGaugeVec,
    pub domain_in_flight: IntGaugeVec,
    pub domain_waiting: IntGaugeVec,
    pub domain_paused_until_seconds: GaugeVec,
    pub domain_rps_source: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub domain_budget_remaining: IntGaugeVec,
    pub retries_total: IntCounterVec,
    pub idempotency_total: IntCounterVec,
    pub jobs: IntGaugeVec,
    pub webhook_deliveries_total: IntCounterVec,
    /// 1 while the store answers (always for the embedded backend; for
    /// Redis, what the last command or heartbeat saw).
    pub store_up: prometheus::IntGauge,
    /// Admissions decided locally at the fallback share because Redis did
    /// not answer.
    pub admissions_degraded_total: prometheus::IntCounter,
    /// Live replicas sharing the Redis backend, as of the last heartbeat.
    pub replicas: prometheus::IntGauge,
    pub webhook_quorum_failed_total: prometheus::IntCounter,
    /// Access log lines dropped because stderr did not keep up
    /// (`logging::access`), brought up to date at each scrape.
    log_lines_dropped_total: IntCounter,
    pub connections_total: IntCounterVec,
    pub proxy_errors_total: IntCounterVec,
    pub limit_headers_ignored_total: IntCounterVec,
    pub untrusted_headers_ignored_total: IntCounterVec,
    pub egress_denied_total: IntCounterVec,
    /// The console's 15-minute, 1-second history per domain, fed where the
    /// families it mirrors are (`metrics/console.rs`); one ring per
    /// `domain` label, so the same cap applies.
    pub console: console::Series,
}

// Label values of `untrusted_headers_ignored_total` are created at zero so
// a dashboard sees the series before the first increment.
use crate::wire::IGNORABLE_HEADERS;

/// Known label values, each series created at 0 when the registry is made
/// (or, for `domain`-labelled families, when a domain is first labelled), so
/// a dashboard or alert sees 0 rather than no series before the first event.
const IDEMPOTENCY_RESULTS: &[&str] = &[
    "miss",
    "replayed",
    "replayed_after_wait",
    "conflict",
    "in_flight",
    "stored",
    "store_error",
    "claim_lost",
    "not_stored_status",
    "not_stored_no_response",
    "not_stored_too_large",
    "not_stored_budget",
];
const WEBHOOK_RESULTS: &[&str] = &["delivered", "retry", "failed"];
const CONNECTION_KINDS: &[&str] = &["plain", "connect_intercept", "connect_tunnel", "denied"];
const REQUEST_OUTCOMES: &[&str] = &[
    "forwarded",
    "replayed",
    "conflict",
    "rejected",
    "parked",
    "error",
    "cancelled",
];
const RETRY_KINDS: &[&str] = &["retry", "reroute"];

/// Also the console's per-second wait histogram (`metrics/console.rs`).
pub const WAIT_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("ezthrottle")
}

fn hopts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace("ezthrottle")
        .buckets(buckets.to_vec())
}

/// Register a collector; names are fixed and unique, so failure is a bug
/// caught by the unit tests, not something input can cause.
fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

macro_rules! vec_metric {
    ($r:expr, $ty:ty, $opts:expr, $labels:expr) => {
        reg(
            $r,
            <$ty>::new($opts, $labels).expect("static metric definition"),
        )
    };
}

impl Metrics {
    #[allow(
        clippy::expect_used,
        reason = "static metric definitions registered once into a fresh registry: a failure is a bug in this file, caught by its tests"
    )]
    pub fn new(max_domains: usize) -> Metrics {
        let r = Registry::new();
        let d = &["domain"];
        let m = Metrics {
            requests_total: vec_metric!(&r, IntCounterVec, opts("requests_total", "Requests seen by the proxy, by target domain and how they ended (forwarded, replayed, conflict, rejected, parked, error, cancelled)."), &["domain", "outcome"]),
            upstream_responses_total: vec_metric!(&r, IntCounterVec, opts("upstream_responses_total", "Responses received from upstream, by domain and status code."), &["domain", "code"]),
            upstream_duration_seconds: vec_metric!(&r, HistogramVec, hopts("upstream_duration_seconds", "Time from choosing the upstream to the end of the request, by domain.", UPSTREAM_BUCKETS), d),
            throttle_wait_seconds: vec_metric!(&r, HistogramVec, hopts("throttle_wait_seconds", "Time requests waited for admission (pace and concurrency), by domain.", &WAIT_BUCKETS), d),
            admissions_total: vec_metric!(&r, IntCounterVec, opts("admissions_total", "Admission decisions of the domain throttle, by domain and result (admitted; refused: queue full or wait timeout). One per attempt, retries included."), &["domain", "result"]),
            domain_rps_limit: vec_metric!(&r, GaugeVec, opts("domain_rps_limit", "Current requests-per-second limit of a domain."), d),
            domain_concurrency_limit: vec_metric!(&r, IntGaugeVec, opts("domain_concurrency_limit", "Current concurrency limit of a domain."), d),
            domain_in_flight: vec_metric!(&r, IntGaugeVec, opts("domain_in_flight", "Requests of a domain currently upstream."), d),
            domain_waiting: vec_metric!(&r, IntGaugeVec, opts("domain_waiting", "Requests of a domain waiting for admission."), d),
            domain_paused_until_seconds: vec_metric!(&r, GaugeVec, opts("domain_paused_until_seconds", "Unix time until which the API last paused the domain (Retry-After, RateLimit-Reset); in the past when it is not paused now, 0 if it never was."), d),
            config_reloads_total: {
                let c = vec_metric!(&r, IntCounterVec, opts("config_reloads_total", "Config reloads (SIGHUP or a change of the file) by result: ok, or error (refused; the running config stayed)."), &["result"]);
                for result in ["ok", "error"] {
                    c.with_label_values(&[result]);
                }
                c
            },
            domain_rps_source: vec_metric!(&r, IntGaugeVec, opts("domain_rps_source", "1 for where the domain's current requests-per-second limit comes from: default, config, preset, learned, or dialect:<name> (the API's own budget headers)."), &["domain", "source"]),
            domain_budget_remaining: vec_metric!(&r, IntGaugeVec, opts("domain_budget_remaining", "What the API's budget headers said is left, by domain and kind (requests; tokens: the least of the token budgets)."), &["domain", "kind"]),
            retries_total: vec_metric!(&r, IntCounterVec, opts("retries_total", "Extra upstream attempts, by domain and kind (retry, reroute)."), &["domain", "kind"]),
            idempotency_total: vec_metric!(&r, IntCounterVec, opts("idempotency_total", "Idempotency-Key lookups by result."), &["result"]),
            jobs: vec_metric!(&r, IntGaugeVec, opts("jobs", "Jobs by status."), &["status"]),
            webhook_deliveries_total: vec_metric!(&r, IntCounterVec, opts("webhook_deliveries_total", "Webhook delivery attempts by result."), &["result"]),
            webhook_quorum_failed_total: {
                let c = prometheus::IntCounter::with_opts(opts(
                    "webhook_quorum_failed_total",
                    "Jobs whose webhook quorum can no longer be met (too many voting deliveries failed for good).",
                ))
                .expect("metric");
                r.register(Box::new(c.clone())).expect("register");
                c
            },
            log_lines_dropped_total: {
                let c = IntCounter::with_opts(opts(
                    "log_lines_dropped_total",
                    "Access log lines dropped because standard error did not keep up (the writer's backlog was full).",
                ))
                .expect("metric");
                r.register(Box::new(c.clone())).expect("register");
                c
            },
            store_up: {
                let g = prometheus::IntGauge::with_opts(opts(
                    "store_up",
                    "1 while the store answers (embedded: always; redis: the last command or heartbeat reached it).",
                ))
                .expect("metric");
                r.register(Box::new(g.clone())).expect("register");
                g.set(1);
                g
            },
            admissions_degraded_total: {
                let c = prometheus::IntCounter::with_opts(opts(
                    "admissions_degraded_total",
                    "Admissions decided by this replica alone, at its share of the limits, because Redis did not answer.",
                ))
                .expect("metric");
                r.register(Box::new(c.clone())).expect("register");
                c
            },
            replicas: {
                let g = prometheus::IntGauge::with_opts(opts(
                    "replicas",
                    "Live replicas sharing the store, as of the last heartbeat (1 with the embedded backend).",
                ))
                .expect("metric");
                r.register(Box::new(g.clone())).expect("register");
                g.set(1);
                g
            },
            connections_total: vec_metric!(&r, IntCounterVec, opts("connections_total", "Client connections by kind (plain, connect_intercept, connect_tunnel, denied)."), &["kind"]),
            proxy_errors_total: vec_metric!(&r, IntCounterVec, opts("proxy_errors_total", "Errors answered by the proxy itself, by error code."), &["code"]),
            limit_headers_ignored_total: vec_metric!(&r, IntCounterVec, opts("limit_headers_ignored_total", "Rate-limit response header values that were present but unusable, by domain and header."), &["domain", "header"]),
            untrusted_headers_ignored_total: {
                let c = vec_metric!(&r, IntCounterVec, opts("untrusted_headers_ignored_total", "Control headers a client was not trusted to set (X-EZThrottle-Workspace with API keys configured, the job runner's internal headers), ignored, by header."), &["header"]);
                for h in IGNORABLE_HEADERS {
                    c.with_label_values(&[h]);
                }
                c
            },
            egress_denied_total: {
                let c = vec_metric!(&r, IntCounterVec, opts("egress_denied_total", "Connections the egress policy refused, by purpose (proxy, job, webhook) and reason (loop, denied)."), &["purpose", "reason"]);
                for p in ["proxy", "job", "webhook"] {
                    for why in ["loop", "denied"] {
                        c.with_label_values(&[p, why]);
                    }
                }
                c
            },
            registry: r,
            // Every capped label plus `other`.
            console: console::Series::new(max_domains.max(1) + 1),
            max_domains: max_domains.max(1),
            seen: DashSet::new(),
            series: DashMap::with_hasher(ahash::RandomState::new()),
        };
        for v in IDEMPOTENCY_RESULTS {
            m.idempotency_total.with_label_values(&[v]);
        }
        for v in WEBHOOK_RESULTS {
            m.webhook_deliveries_total.with_label_values(&[v]);
        }
        for v in CONNECTION_KINDS {
            m.connections_total.with_label_values(&[v]);
        }
        for v in crate::error::ProxyError::ALL_CODES
            .iter()
            .chain(&["client_tls_failed"])
        {
            m.proxy_errors_total.with_label_values(&[v]);
        }
        for status in crate::store::JobStatus::ALL {
            m.jobs.with_label_values(&[status.as_str()]);
        }
        m
    }

    /// Create a newly labelled domain's counter series at 0.
    fn init_domain(&self, label: &str) {
        for outcome in REQUEST_OUTCOMES {
            self.requests_total.with_label_values(&[label, outcome]);
        }
        for kind in RETRY_KINDS {
            self.retries_total.with_label_values(&[label, kind]);
        }
        for result in ["admitted", "refused"] {
            self.admissions_total.with_label_values(&[label, result]);
        }
    }

    /// The `domain` label for `domain`: itself for the first `max_domains`
    /// distinct domains, `other` after that.
    pub fn domain_label(&self, domain: &str) -> String {
        if self.seen.contains(domain) {
            return domain.to_string();
        }
        // Racing inserts may overshoot the cap by a few; that is harmless.
        if self.seen.len() < self.max_domains {
            if self.seen.insert(domain.to_string()) {
                self.init_domain(domain);
            }
            return domain.to_string();
        }
        if !self.seen.contains("other") && self.seen.insert("other".to_string()) {
            self.init_domain("other");
        }
        "other".to_string()
    }

    /// The hot per-request series of `domain`'s label, resolved once and
    /// cached: counting through them costs an atomic add, where a label
    /// look-up hashed the label values and took the family's lock on every
    /// event (with the label's `String` made anew), about 2% of the CPU
    /// of a proxied request (docs/performance.md). The cache holds at most
    /// one entry per label (`max_domains` + `other`).
    pub fn series(&self, domain: &str) -> Arc<DomainSeries> {
        if let Some(s) = self.series.get(domain) {
            return s.clone();
        }
        let label = self.domain_label(domain);
        // Past the cap every domain shares `other`'s entry.
        let key = if label == domain {
            domain
        } else {
            label.as_str()
        };
        if let Some(s) = self.series.get(key) {
            return s.clone();
        }
        self.series
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(DomainSeries::new(self, label.clone())))
            .clone()
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let dropped = crate::logging::access::dropped();
        let shown = self.log_lines_dropped_total.get();
        if dropped > shown {
            self.log_lines_dropped_total.inc_by(dropped - shown);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One `domain` label's series that every proxied request touches.
#[derive(Debug)]
pub struct DomainSeries {
    label: String,
    /// `requests_total`, in the order of [`REQUEST_OUTCOMES`].
    requests: Vec<IntCounter>,
    requests_vec: IntCounterVec,
    pub throttle_wait: Histogram,
    pub admitted: IntCounter,
    pub refused: IntCounter,
    pub upstream_duration: Histogram,
    /// `upstream_responses_total` by status code: a domain answers with a
    /// handful of codes, so a short list beats a map.
    responses: Mutex<Vec<(u16, IntCounter)>>,
    responses_vec: IntCounterVec,
}

impl DomainSeries {
    fn new(m: &Metrics, label: String) -> DomainSeries {
        let l = label.as_str();
        DomainSeries {
            requests: REQUEST_OUTCOMES
                .iter()
                .map(|o| m.requests_total.with_label_values(&[l, o]))
                .collect(),
            requests_vec: m.requests_total.clone(),
            throttle_wait: m.throttle_wait_seconds.with_label_values(&[l]),
            admitted: m.admissions_total.with_label_values(&[l, "admitted"]),
            refused: m.admissions_total.with_label_values(&[l, "refused"]),
            upstream_duration: m.upstream_duration_seconds.with_label_values(&[l]),
            responses: Mutex::new(Vec::new()),
            responses_vec: m.upstream_responses_total.clone(),
            label,
        }
    }

    /// The `domain` label these series carry.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Count a request that ended with `outcome` (`requests_total`).
    pub fn request(&self, outcome: &str) {
        match REQUEST_OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.requests[i].inc(),
            None => self
                .requests_vec
                .with_label_values(&[self.label.as_str(), outcome])
                .inc(),
        }
    }

    /// Count an upstream response with status `code`.
    pub fn response(&self, code: u16) {
        let mut known = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = known.iter().find(|(k, _)| *k == code) {
            c.inc();
            return;
        }
        let c = self
            .responses_vec
            .with_label_values(&[self.label.as_str(), &code.to_string()]);
        c.inc();
        known.push((code, c));
    }
}

#[cfg(test)]
mod known_labels {
    use super::*;

    #[test]
    fn counters_with_known_labels_start_at_zero() {
        let m = Metrics::new(1);
        let text = m.render();
        for line in [
            "ezthrottle_idempotency_total{result=\"miss\"} 0",
            "ezthrottle_idempotency_total{result=\"not_stored_status\"} 0",
            "ezthrottle_webhook_deliveries_total{result=\"failed\"} 0",
            "ezthrottle_connections_total{kind=\"denied\"} 0",
            "ezthrottle_proxy_errors_total{code=\"egress_denied\"} 0",
            "ezthrottle_proxy_errors_total{code=\"throttle_wait_timeout\"} 0",
            "ezthrottle_jobs{status=\"in_flight\"} 0",
            "ezthrottle_untrusted_headers_ignored_total{header=\"x-ezthrottle-workspace\"} 0",
            "ezthrottle_egress_denied_total{purpose=\"job\",reason=\"loop\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
        assert!(!text.contains("ezthrottle_retries_total{"));
        // The access log's drop counter (a process-wide count, so only its
        // presence is checked here; logging::access tests the counting).
        assert!(text.contains("\nezthrottle_log_lines_dropped_total "));
        // A domain's series appear with the domain, at 0; past the cap, `other`'s.
        m.domain_label("a.test");
        m.domain_label("b.test");
        let text = m.render();
        for line in [
            "ezthrottle_retries_total{domain=\"a.test\",kind=\"reroute\"} 0",
            "ezthrottle_requests_total{domain=\"a.test\",outcome=\"error\"} 0",
            "ezthrottle_retries_total{domain=\"other\",kind=\"retry\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
        assert!(!text.contains("domain=\"b.test\""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_series_count_in_the_families() {
        let m = Metrics::new(1);
        let a = m.series("a.test");
        assert!(Arc::ptr_eq(&a, &m.series("a.test")));
        a.request("forwarded");
        a.request("forwarded");
        a.response(200);
        a.response(429);
        a.response(200);
        // Past the cap: `other`'s series, one entry for all such domains.
        let b = m.series("b.test");
        assert_eq!(b.label(), "other");
        assert!(Arc::ptr_eq(&b, &m.series("c.test")));
        b.request("cancelled");
        let text = m.render();
        for line in [
            "ezthrottle_requests_total{domain=\"a.test\",outcome=\"forwarded\"} 2",
            "ezthrottle_upstream_responses_total{code=\"200\",domain=\"a.test\"} 2",
            "ezthrottle_upstream_responses_total{code=\"429\",domain=\"a.test\"} 1",
            "ezthrottle_requests_total{domain=\"other\",outcome=\"cancelled\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in {text}");
        }
        assert!(!text.contains("b.test"));
    }

    #[test]
    fn domain_label_is_capped() {
        let m = Metrics::new(2);
        assert_eq!(m.domain_label("a.test"), "a.test");
        assert_eq!(m.domain_label("b.test"), "b.test");
        assert_eq!(m.domain_label("c.test"), "other");
        assert_eq!(m.domain_label("a.test"), "a.test");
    }

    #[test]
    fn render_has_every_family_after_use() {
        let m = Metrics::new(10);
        m.requests_total
            .with_label_values(&["a.test", "forwarded"])
            .inc();
        m.upstream_responses_total
            .with_label_values(&["a.test", "200"])
            .inc();
        m.throttle_wait_seconds
            .with_label_values(&["a.test"])
            .observe(0.2);
        m.domain_rps_limit.with_label_values(&["a.test"]).set(2.0);
        let text = m.render();
        for family in [
            "ezthrottle_requests_total",
            "ezthrottle_upstream_responses_total",
            "ezthrottle_throttle_wait_seconds_bucket",
            "ezthrottle_domain_rps_limit",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("ezthrottle_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("# TYPE ezthrottle_requests_total counter"));
    }
}
