//! Prometheus metrics (SPEC §10), prefix `ezthrottle_`.
//!
//! CONTRACT (used by pipeline/, accept/, control/):
//! - `Metrics::new(max_domains: usize) -> Metrics` registers every family on its own `Registry`.
//! - `Metrics::domain_label(&self, domain: &str) -> String`: the domain itself for the first
//!   `max_domains` distinct domains seen, `"other"` after that.
//! - `Metrics::render(&self) -> String`: Prometheus text exposition format.
//! - Public fields (label order as listed):
//!   `requests_total: IntCounterVec` {domain, outcome} (forwarded|replayed|conflict|rejected|parked|error),
//!   `upstream_responses_total: IntCounterVec` {domain, code},
//!   `upstream_duration_seconds: HistogramVec` {domain},
//!   `throttle_wait_seconds: HistogramVec` {domain},
//!   `domain_rps_limit: GaugeVec` {domain}, `domain_concurrency_limit: IntGaugeVec` {domain},
//!   `domain_in_flight: IntGaugeVec` {domain}, `domain_waiting: IntGaugeVec` {domain},
//!   `retries_total: IntCounterVec` {domain, kind}, `idempotency_total: IntCounterVec` {result},
//!   `jobs: IntGaugeVec` {status}, `webhook_deliveries_total: IntCounterVec` {result},
//!   `connections_total: IntCounterVec` {kind} (plain|connect_intercept|connect_tunnel|denied),
//!   `proxy_errors_total: IntCounterVec` {code}.
