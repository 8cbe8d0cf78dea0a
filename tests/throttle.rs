//! Per-domain throttling (SPEC §5) through the real binary, with curl as the
//! client and an origin that states its own limits and records what it saw.
//!
//! Timing assertions are lower bounds the design guarantees (a pace of R
//! req/s spaces starts by 1/R); no upper bounds on speed.

mod common;

use std::time::{Duration, Instant};

use common::limit_origin::LimitOrigin;
use common::{curl, error_code, json, Ezthrottle, Fetch};

const HOSTS: &[&str] = &[
    "pace.test",
    "fast.test",
    "conc.test",
    "learn.test",
    "retry.test",
    "rl.test",
    "xrl.test",
    "full.test",
    "wait.test",
    "iso-a.test",
    "iso-b.test",
    "bad.test",
    "gone.test",
    "pin.test",
    "persist.test",
];

/// Timing slack for arrival gaps measured at the origin (scheduling jitter
/// between the proxy's start and the origin's accept, both directions).
const SLACK: Duration = Duration::from_millis(60);

fn start(origin: &LimitOrigin, limits: &str, extra: &str) -> Ezthrottle {
    start_in(origin, limits, extra, None)
}

fn start_in(
    origin: &LimitOrigin,
    limits: &str,
    extra: &str,
    data: Option<&std::path::Path>,
) -> Ezthrottle {
    let _ = origin;
    // The origin answers 429/503 to teach limits; these tests watch the
    // throttle alone, so the proxy must not retry them (tests/retries.rs).
    let mut b = common::harness::EzBuilder::new()
        .limits(limits)
        .extra(&format!(
            "{extra}\n[retry]\nmax_retries = 0\nmax_reroutes = 0\n"
        ));
    for h in HOSTS {
        b = b.resolve(h, "127.0.0.1");
    }
    if let Some(d) = data {
        b = b.data_dir(d);
    }
    b.start()
}

fn get(ez: &Ezthrottle, url: &str, headers: &[&str]) -> Fetch {
    let mut c = curl().proxy(ez);
    for h in headers {
        c = c.arg("-H").arg(*h);
    }
    c.fetch(url)
}

/// Run `n` requests at once (one curl each); results in index order.
fn parallel(ez: &Ezthrottle, urls: Vec<String>) -> Vec<Fetch> {
    std::thread::scope(|s| {
        let handles: Vec<_> = urls
            .iter()
            .map(|u| s.spawn(move || get(ez, u, &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

fn domains(ez: &Ezthrottle) -> serde_json::Value {
    let f = curl().fetch(&ez.control_url("/api/v1/domains"));
    assert_eq!(f.code, 200, "{}", f.describe());
    json(&f.body)
}

fn domain(ez: &Ezthrottle, name: &str) -> serde_json::Value {
    let all = domains(ez);
    all["domains"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["domain"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} not in /api/v1/domains: {all}"))
}

fn assert_min_gaps(origin: &LimitOrigin, host: &str, min: Duration) {
    let gaps = origin.gaps(host);
    for (i, g) in gaps.iter().enumerate() {
        assert!(
            *g + SLACK >= min,
            "{host}: gap {i} was {g:?}, expected >= {min:?} (all: {gaps:?})"
        );
    }
}

#[test]
fn default_pace_is_two_per_second() {
    let origin = LimitOrigin::start();
    // Built-in defaults for [limits]: 2 req/s, 2 concurrent.
    let ez = start(&origin, "", "");
    let started = Instant::now();
    let results = parallel(
        &ez,
        (0..5)
            .map(|i| origin.url("pace.test", &format!("/p?id={i}")))
            .collect(),
    );
    let elapsed = started.elapsed();
    for r in &results {
        assert_eq!(r.code, 200, "{}", r.describe());
    }
    assert_eq!(origin.count("pace.test"), 5);
    assert!(
        elapsed >= Duration::from_secs(2),
        "5 requests at 2 req/s took {elapsed:?}"
    );
    assert_min_gaps(&origin, "pace.test", Duration::from_millis(500));
    let d = domain(&ez, "pace.test");
    assert_eq!(d["rps"], 2.0);
    assert_eq!(d["max_concurrent"], 2);
    assert_eq!(d["rps_source"], "default");
}

#[test]
fn configured_pace_holds_and_reports_wait() {
    let origin = LimitOrigin::start();
    let ez = start(
        &origin,
        "rps = 1000.0\nmax_concurrent = 100",
        "[limits.domains.\"fast.test\"]\nrps = 5.0\nmax_concurrent = 50",
    );
    let started = Instant::now();
    let results = parallel(
        &ez,
        (0..10)
            .map(|i| origin.url("fast.test", &format!("/p?id={i}")))
            .collect(),
    );
    let elapsed = started.elapsed();
    assert!(results.iter().all(|r| r.code == 200));
    assert!(
        elapsed >= Duration::from_millis(1800),
        "10 requests at 5 req/s took {elapsed:?}"
    );
    assert_min_gaps(&origin, "fast.test", Duration::from_millis(200));
    // Someone waited at least 8 intervals and the header says so.
    let max_wait_ms = results
        .iter()
        .map(|r| {
            r.header("x-ezthrottle-wait-ms")
                .expect("wait header")
                .parse::<u64>()
                .expect("number")
        })
        .max()
        .unwrap_or(0);
    assert!(
        max_wait_ms >= 1500,
        "largest X-EZThrottle-Wait-Ms {max_wait_ms}"
    );
    assert!(results
        .iter()
        .all(|r| r.header("x-ezthrottle-attempts") == Some("1")));
    assert_eq!(domain(&ez, "fast.test")["rps_source"], "config");
}

#[test]
fn concurrency_never_exceeds_the_cap() {
    let origin = LimitOrigin::start();
    let ez = start(
        &origin,
        "rps = 1000.0\nmax_concurrent = 100",
        "[limits.domains.\"conc.test\"]\nmax_concurrent = 2",
    );
    let results = parallel(
        &ez,
        (0..8)
            .map(|i| origin.url("conc.test", &format!("/p?id={i}&delay_ms=300")))
            .collect(),
    );
    assert!(
        results.iter().all(|r| r.code == 200),
        "{:?}",
        results.iter().map(|r| r.code).collect::<Vec<_>>()
    );
    assert_eq!(origin.count("conc.test"), 8);
    assert_eq!(
        origin.peak("conc.test"),
        2,
        "peak concurrency at the origin"
    );
}

#[test]
fn learned_rps_and_concurrency_govern_the_next_request_both_ways() {
    let origin = LimitOrigin::start();
    let ez = start(&origin, "rps = 1000.0\nmax_concurrent = 100", "");
    // Down: the API says 1 req/s and 1 at a time.
    let r = get(
        &ez,
        &origin.url(
            "learn.test",
            "/p?h=X-EZTHROTTLE-RPS:1&h=X-EZTHROTTLE-MAX-CONCURRENT:1",
        ),
        &[],
    );
    assert_eq!(r.code, 200);
    let d = domain(&ez, "learn.test");
    assert_eq!(
        (d["rps"].as_f64(), d["rps_source"].as_str()),
        (Some(1.0), Some("learned"))
    );
    assert_eq!(
        (
            d["max_concurrent"].as_u64(),
            d["concurrency_source"].as_str()
        ),
        (Some(1), Some("learned"))
    );
    // The very next request waits for the 1 s pace...
    let r = get(&ez, &origin.url("learn.test", "/p?id=next"), &[]);
    assert_eq!(r.code, 200);
    assert_min_gaps(&origin, "learn.test", Duration::from_secs(1));
    // ...and one with less patience than the pace is refused at once.
    let r = get(
        &ez,
        &origin.url("learn.test", "/p?id=impatient"),
        &["X-EZThrottle-Max-Wait: 0.2"],
    );
    assert_eq!(r.code, 429, "{}", r.describe());
    assert_eq!(error_code(&r.body), "throttle_wait_timeout");
    // Up: 50 req/s and 4 concurrent.
    let r = get(
        &ez,
        &origin.url(
            "learn.test",
            "/p?h=X-EZTHROTTLE-RPS:50&h=X-EZTHROTTLE-MAX-CONCURRENT:4",
        ),
        &["X-EZThrottle-Max-Wait: 5"],
    );
    assert_eq!(r.code, 200, "{}", r.describe());
    let d = domain(&ez, "learn.test");
    assert_eq!(
        (d["rps"].as_f64(), d["max_concurrent"].as_u64()),
        (Some(50.0), Some(4))
    );
    // The same impatient request now fits in the pace.
    let r = get(
        &ez,
        &origin.url("learn.test", "/p?id=fits"),
        &["X-EZThrottle-Max-Wait: 0.2"],
    );
    assert_eq!(r.code, 200, "{}", r.describe());
    // And 4 run at once where 1 did before.
    let results = parallel(
        &ez,
        (0..8)
            .map(|i| origin.url("learn.test", &format!("/p?id=c{i}&delay_ms=400")))
            .collect(),
    );
    assert!(results.iter().all(|r| r.code == 200));
    assert_eq!(origin.peak("learn.test"), 4);
}

fn assert_paused(origin: &LimitOrigin, ez: &Ezthrottle, host: &str, first: &str, pause: Duration) {
    let r = get(ez, &origin.url(host, first), &[]);
    assert!(
        r.code == 429 || r.code == 503 || r.code == 200,
        "{}",
        r.describe()
    );
    let d = domain(ez, host);
    assert!(d["paused_until"].is_u64(), "{host} not paused: {d}");
    // The same instant is exported for alerting, in Unix seconds.
    let text = common::harness::control_get(ez, "/metrics");
    let gauge = common::metrics::value(
        &text,
        "ezthrottle_domain_paused_until_seconds",
        &[("domain", host)],
    )
    .unwrap_or_else(|| panic!("no paused_until gauge for {host}"));
    let api_ms = d["paused_until"].as_u64().unwrap_or(0) as f64;
    assert!(
        (gauge * 1000.0 - api_ms).abs() < 1000.0,
        "gauge {gauge} vs API {api_ms} ms"
    );
    let r = get(ez, &origin.url(host, "/p?id=after"), &[]);
    assert_eq!(r.code, 200, "{}", r.describe());
    let gaps = origin.gaps(host);
    assert!(
        gaps[0] + SLACK >= pause,
        "{host}: next request came after {:?}, pause was {pause:?}",
        gaps[0]
    );
}

#[test]
fn retry_after_pauses_the_domain() {
    let origin = LimitOrigin::start();
    let ez = start(&origin, "rps = 1000.0\nmax_concurrent = 100", "");
    assert_paused(
        &origin,
        &ez,
        "retry.test",
        "/p?status=429&h=Retry-After:2",
        Duration::from_secs(2),
    );
}

#[test]
fn ratelimit_headers_at_zero_pause_the_domain() {
    let origin = LimitOrigin::start();
    let ez = start(&origin, "rps = 1000.0\nmax_concurrent = 100", "");
    assert_paused(
        &origin,
        &ez,
        "rl.test",
        "/p?h=RateLimit-Remaining:0&h=RateLimit-Reset:2",
        Duration::from_secs(2),
    );
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3;
    assert_paused(
        &origin,
        &ez,
        "xrl.test",
        &format!("/p?h=X-RateLimit-Remaining:0&h=X-RateLimit-Reset:{reset}"),
        Duration::from_secs(2),
    );
}

#[test]
fn queue_full_and_wait_timeout_answer_429_with_retry_after() {
    let origin = LimitOrigin::start();
    let ez = start(
        &origin,
        "rps = 1000.0\nmax_concurrent = 100",
        "[limits.domains.\"full.test\"]\nmax_concurrent = 1\nqueue_capacity = 1\n\n[limits.domains.\"wait.test\"]\nmax_concurrent = 1",
    );
    std::thread::scope(|s| {
        // full.test: one in flight, one queued, the third overflows.
        let hog = s.spawn(|| {
            get(
                &ez,
                &origin.url("full.test", "/p?id=hog&delay_ms=1500"),
                &[],
            )
        });
        assert_eq!(origin.wait_arrival(Duration::from_secs(30)), "hog");
        let queued = s.spawn(|| get(&ez, &origin.url("full.test", "/p?id=queued"), &[]));
        common::eventually(Duration::from_secs(10), "one request waiting", || {
            (domain(&ez, "full.test")["waiting"] == 1).then_some(())
        });
        let over = get(&ez, &origin.url("full.test", "/p?id=over"), &[]);
        assert_eq!(over.code, 429, "{}", over.describe());
        assert_eq!(error_code(&over.body), "throttle_queue_full");
        let ra: u64 = over
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!(ra >= 1);
        assert_eq!(hog.join().expect("hog").code, 200);
        assert_eq!(queued.join().expect("queued").code, 200);
        assert_eq!(origin.wait_arrival(Duration::from_secs(30)), "queued");
        assert!(origin.visits("full.test").iter().all(|v| v.id != "over"));

        // wait.test: blocked by concurrency, patience 0.5 s, waited at least that.
        let hog = s.spawn(|| {
            get(
                &ez,
                &origin.url("wait.test", "/p?id=hog&delay_ms=2500"),
                &[],
            )
        });
        assert_eq!(origin.wait_arrival(Duration::from_secs(30)), "hog");
        let t = Instant::now();
        let late = get(
            &ez,
            &origin.url("wait.test", "/p?id=late"),
            &["X-EZThrottle-Max-Wait: 0.5"],
        );
        assert!(t.elapsed() >= Duration::from_millis(500));
        assert_eq!(late.code, 429, "{}", late.describe());
        assert_eq!(error_code(&late.body), "throttle_wait_timeout");
        assert!(late.header("retry-after").is_some());
        assert_eq!(hog.join().expect("hog").code, 200);
    });
}

#[test]
fn bad_max_wait_header_is_a_clear_400() {
    let origin = LimitOrigin::start();
    let ez = start(&origin, "rps = 1000.0\nmax_concurrent = 100", "");
    for bad in ["soon", "-1", "NaN", "1e400"] {
        let r = get(
            &ez,
            &origin.url("wait.test", "/p"),
            &[&format!("X-EZThrottle-Max-Wait: {bad}")],
        );
        assert_eq!(r.code, 400, "{bad}: {}", r.describe());
        assert_eq!(error_code(&r.body), "bad_request");
    }
    assert_eq!(origin.count("wait.test"), 0);
}

#[test]
fn a_slow_or_paused_domain_never_delays_another() {
    let origin = LimitOrigin::start();
    let ez = start(
        &origin,
        "rps = 1000.0\nmax_concurrent = 100",
        "[limits.domains.\"iso-a.test\"]\nmax_concurrent = 1",
    );
    // Pause iso-a for 5 s and saturate it with a slow request.
    let r = get(
        &ez,
        &origin.url("iso-a.test", "/p?status=503&h=Retry-After:5"),
        &[],
    );
    assert_eq!(r.code, 503);
    std::thread::scope(|s| {
        let waiting_a = s.spawn(|| get(&ez, &origin.url("iso-a.test", "/p?id=a2"), &[]));
        common::eventually(Duration::from_secs(10), "iso-a request queued", || {
            (domain(&ez, "iso-a.test")["waiting"] == 1).then_some(())
        });
        let b = get(&ez, &origin.url("iso-b.test", "/p?id=b"), &[]);
        assert_eq!(b.code, 200);
        // b went through while a was still paused and waiting.
        assert_eq!(
            domain(&ez, "iso-a.test")["waiting"],
            1,
            "iso-b finished before iso-a's wait ended"
        );
        assert_eq!(origin.count("iso-a.test"), 1);
        assert_eq!(waiting_a.join().expect("a2").code, 200);
    });
}

#[test]
fn bad_limit_headers_change_nothing_and_are_counted() {
    let origin = LimitOrigin::start();
    let ez = start(
        &origin,
        "rps = 1000.0\nmax_concurrent = 100",
        "[limits.domains.\"bad.test\"]\nrps = 40.0\nmax_concurrent = 3",
    );
    let bad_rps = [
        "fast",
        "NaN",
        "inf",
        "-infinity",
        "-2",
        "0",
        "1e300",
        "0x10",
    ];
    let bad_conc = ["two", "0", "-1", "2.5", "99999999999"];
    for v in bad_rps {
        assert_eq!(
            get(
                &ez,
                &origin.url("bad.test", &format!("/p?h=X-EZTHROTTLE-RPS:{v}")),
                &[]
            )
            .code,
            200
        );
    }
    for v in bad_conc {
        assert_eq!(
            get(
                &ez,
                &origin.url("bad.test", &format!("/p?h=X-EZTHROTTLE-MAX-CONCURRENT:{v}")),
                &[]
            )
            .code,
            200
        );
    }
    // ("0" is not among them: it is a valid "retry now", no pause.)
    for v in ["later", "-3", "NaN", "99999999"] {
        assert_eq!(
            get(
                &ez,
                &origin.url("bad.test", &format!("/p?status=429&h=Retry-After:{v}")),
                &[]
            )
            .code,
            429
        );
    }
    let d = domain(&ez, "bad.test");
    assert_eq!(d["rps"], 40.0);
    assert_eq!(d["max_concurrent"], 3);
    assert_eq!(d["rps_source"], "config");
    assert!(d["paused_until"].is_null(), "{d}");
    let metrics =
        String::from_utf8_lossy(&curl().fetch(&ez.control_url("/metrics")).body).into_owned();
    let count = |header: &str| {
        common::metrics::value(
            &metrics,
            "ezthrottle_limit_headers_ignored_total",
            &[("domain", "bad.test"), ("header", header)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("x-ezthrottle-rps"), bad_rps.len() as f64);
    assert_eq!(count("x-ezthrottle-max-concurrent"), bad_conc.len() as f64);
    assert_eq!(count("retry-after"), 4.0);
}

#[test]
fn pinned_domain_ignores_learned_headers() {
    let origin = LimitOrigin::start();
    let ez = start(
        &origin,
        "rps = 1000.0\nmax_concurrent = 100",
        "[limits.domains.\"pin.test\"]\nrps = 30.0\npin = true",
    );
    let r = get(
        &ez,
        &origin.url(
            "pin.test",
            "/p?h=X-EZTHROTTLE-RPS:0.5&h=X-EZTHROTTLE-MAX-CONCURRENT:1",
        ),
        &[],
    );
    assert_eq!(r.code, 200);
    let d = domain(&ez, "pin.test");
    assert_eq!(
        (d["rps"].as_f64(), d["pinned"].as_bool()),
        (Some(30.0), Some(true))
    );
    assert_eq!(d["max_concurrent"], 100);
}

#[test]
fn a_client_that_leaves_the_queue_consumes_no_slot() {
    let origin = LimitOrigin::start();
    let ez = start(
        &origin,
        "rps = 1000.0\nmax_concurrent = 100",
        "[limits.domains.\"gone.test\"]\nmax_concurrent = 1",
    );
    std::thread::scope(|s| {
        let hog = s.spawn(|| {
            get(
                &ez,
                &origin.url("gone.test", "/p?id=hog&delay_ms=2000"),
                &[],
            )
        });
        assert_eq!(origin.wait_arrival(Duration::from_secs(30)), "hog");
        // curl gives up after 0.5 s while queued behind the hog.
        let quitter = curl()
            .proxy(&ez)
            .args(["--max-time", "0.5"])
            .fetch(&origin.url("gone.test", "/p?id=quitter"));
        assert_eq!(
            quitter.exit,
            28,
            "curl should time out: {}",
            quitter.describe()
        );
        common::eventually(
            Duration::from_secs(5),
            "the quitter leaving the queue",
            || (domain(&ez, "gone.test")["waiting"] == 0).then_some(()),
        );
        assert_eq!(hog.join().expect("hog").code, 200);
        let next = get(&ez, &origin.url("gone.test", "/p?id=next"), &[]);
        assert_eq!(next.code, 200);
        let ids: Vec<String> = origin
            .visits("gone.test")
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, vec!["hog", "next"]);
        assert_eq!(domain(&ez, "gone.test")["in_flight"], 0);
    });
}

#[test]
fn learned_limits_survive_a_restart() {
    let origin = LimitOrigin::start();
    let data = tempfile::tempdir().expect("data dir");
    let limits = "rps = 1000.0\nmax_concurrent = 100";
    {
        let mut ez = start_in(&origin, limits, "", Some(data.path()));
        let r = get(
            &ez,
            &origin.url(
                "persist.test",
                "/p?h=X-EZTHROTTLE-RPS:0.5&h=X-EZTHROTTLE-MAX-CONCURRENT:2",
            ),
            &[],
        );
        assert_eq!(r.code, 200);
        assert!(ez.stop_sigterm().success());
    }
    let ez = start_in(&origin, limits, "", Some(data.path()));
    let d = domain(&ez, "persist.test");
    assert_eq!(
        (d["rps"].as_f64(), d["rps_source"].as_str()),
        (Some(0.5), Some("learned"))
    );
    assert_eq!(d["max_concurrent"], 2);
    let results = parallel(
        &ez,
        (0..2)
            .map(|i| origin.url("persist.test", &format!("/p?id=r{i}")))
            .collect(),
    );
    assert!(results.iter().all(|r| r.code == 200));
    let gaps = origin.gaps("persist.test");
    assert!(
        gaps[1] + SLACK >= Duration::from_secs(2),
        "after restart: {gaps:?}"
    );
}
