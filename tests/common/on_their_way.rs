//! Requests on their way when a budget runs out (`admission::spent`): an
//! API that counts a request when it arrives and answers 300 ms later
//! (`remaining` as of the arrival, the reset as of the answer), a fixed
//! window of 20 requests per 3 s in Discord's dialect (its reset to the
//! millisecond, so the budget pace spends the window to its end), and a
//! stated pace of 100/s with room for 8 requests at once. A response's
//! `remaining` then lags the requests sent meanwhile while the time left
//! does not, so the even pace runs ahead of the budget by what is on its
//! way: without counting the starts after the answered request, the last
//! of each window reach the API after its budget is gone and get 429s.

use std::time::Duration;

use super::harness::{control_get, Ezthrottle};
use super::quota_origin::{Algorithm, Dialect, Quota, QuotaOrigin};

pub const HOST: &str = "on-their-way.test";
pub const LIMIT: u64 = 20;
pub const WINDOW: Duration = Duration::from_secs(3);
pub const LATENCY: Duration = Duration::from_millis(300);

/// The host's limits: a stated pace the budget lowers, and room for
/// requests on their way. Refusals are not retried (each reaches the
/// origin's count once).
pub const CONFIG: &str = "[limits.domains.\"on-their-way.test\"]\nrps = 100\nmax_concurrent = 8\n";
pub const RETRY: &str = "[retry]\nmax_retries = 0\nmax_reroutes = 0\n";

pub fn origin() -> QuotaOrigin {
    QuotaOrigin::start_with_latency(
        Quota {
            algorithm: Algorithm::FixedWindow,
            limit: LIMIT,
            window: WINDOW,
            dialect: Dialect::Discord,
            credential_header: None,
        },
        LATENCY,
    )
}

/// Run `clients` Python clients through each proxy for two windows and a
/// second, then check: the API refused nothing, and at least half of two
/// windows' quota went through (the rule must not stop the domain for
/// good). The message shows admissions per window and every refusal.
pub fn run_and_check(origin: &QuotaOrigin, proxies: &[Ezthrottle], clients: usize) {
    let url = origin.url(HOST, "/v1/things");
    let seconds = (WINDOW * 2).as_secs_f64() + 1.0;
    let reports: Vec<serde_json::Value> = std::thread::scope(|s| {
        let runs: Vec<_> = proxies
            .iter()
            .map(|ez| {
                let (url, proxy) = (url.clone(), ez.proxy_url());
                s.spawn(move || super::py::quota_clients(&url, clients, seconds, Some(&proxy), &[]))
            })
            .collect();
        runs.into_iter()
            .map(|h| h.join().expect("clients"))
            .collect()
    });
    let (per_window, refused) = super::quota_origin::per_window(&origin.arrivals(HOST), WINDOW, 3);
    let shown = control_get(&proxies[0], "/api/v1/domains");
    let timeline = format!("admitted per window {per_window:?}; 429 at {refused:?}");
    assert!(
        refused.is_empty(),
        "the API refused requests on their way ({timeline}): {reports:?}\n{shown}"
    );
    let admitted = per_window[0] + per_window[1];
    assert!(
        admitted as u64 >= LIMIT,
        "{admitted} of {} in two windows ({timeline}): {reports:?}\n{shown}",
        2 * LIMIT
    );
    for r in &reports {
        assert_eq!(r["errors"], 0, "{r}");
    }
}
