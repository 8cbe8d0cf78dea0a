//! `/metrics` passes `promtool check metrics` (SPEC §10) after real traffic
//! through the real binary: plain and intercepted HTTPS requests, learned
//! limits, an upstream 429 pause (and its retries), unusable limit headers,
//! Idempotency-Key replays and conflicts, throttle rejections, a request
//! parked as a job with its webhook delivered, and proxy errors — so every
//! metric family is exposed when promtool reads it.
//!
//! promtool comes from the Debian package `prometheus` (scripts/test
//! installs it). Without it this test fails, unless `EZT_SKIP_PROMTOOL=1`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::api_origin::ApiOrigin;
use common::limit_origin::LimitOrigin;
use common::metrics;
use common::proc::{show, Running};
use common::webhook_sink::WebhookSink;
use common::{closed_addr, curl, eventually, raw, Ezthrottle, Origin};

/// `EZT_PROMTOOL`, else `promtool` on `PATH`.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EZT_PROMTOOL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
}

/// `promtool check metrics` with `input` on standard input (bounded wait).
fn promtool_check(promtool: &Path, input: &[u8]) -> Output {
    let mut child = Command::new(promtool)
        .arg("check")
        .arg("metrics")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin.write_all(input).expect("write to promtool");
    // Closing stdin ends promtool's input.
    drop(stdin);
    Running::watch(child, format!("{} check metrics", promtool.display()))
        .wait(Duration::from_secs(60))
}

fn skip_requested() -> bool {
    std::env::var("EZT_SKIP_PROMTOOL").is_ok_and(|v| v == "1")
}

#[test]
fn metrics_pass_promtool_after_real_traffic() {
    let Some(promtool) = promtool() else {
        if skip_requested() {
            eprintln!("promtool not found; skipped because EZT_SKIP_PROMTOOL=1");
            return;
        }
        panic!(
            "promtool not found on PATH (nor EZT_PROMTOOL): it comes from the Debian package \
             `prometheus`, which scripts/test installs (`apt-get install prometheus`). \
             Set EZT_SKIP_PROMTOOL=1 to skip this test."
        );
    };

    let origin = Origin::start();
    let limits = LimitOrigin::start();
    let api = ApiOrigin::start();
    let sink = WebhookSink::start();
    let closed = closed_addr();
    let mut builder = Ezthrottle::for_origin(&origin)
        .egress_loopback()
        .limits("rps = 1000.0\nmax_concurrent = 100")
        .extra("[limits.domains.\"slow.test\"]\nrps = 0.2\nburst = 1\n");
    for host in [
        "learn.test",
        "bad.test",
        "pause.test",
        "slow.test",
        "api.test",
        "closed.test",
    ] {
        builder = builder.resolve(host, "127.0.0.1");
    }
    let ez = builder.start();

    // Plain HTTP and intercepted HTTPS, 200 and 404 from upstream.
    curl()
        .proxy(&ez)
        .fetch(&origin.http_url("/echo"))
        .assert_status(200);
    curl()
        .proxy(&ez)
        .fetch(&origin.http_url("/status/404"))
        .assert_status(404);
    curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .fetch(&origin.https_url("/echo?tls=1"))
        .assert_status(200);

    // Learned limits, an unusable header value, an upstream 429 pause.
    curl()
        .proxy(&ez)
        .fetch(&limits.url(
            "learn.test",
            "/?h=X-EZTHROTTLE-RPS:50&h=X-EZTHROTTLE-MAX-CONCURRENT:5",
        ))
        .assert_status(200);
    curl()
        .proxy(&ez)
        .fetch(&limits.url("bad.test", "/?h=X-EZTHROTTLE-RPS:NaN"))
        .assert_status(200);
    curl()
        .proxy(&ez)
        .fetch(&limits.url("pause.test", "/?status=429&h=Retry-After:1"))
        .assert_status(429);

    // Throttle rejection: the second request would have to wait 5 s for the
    // pace but may wait 0 s.
    curl()
        .proxy(&ez)
        .fetch(&limits.url("slow.test", "/"))
        .assert_status(200);
    let f = curl()
        .proxy(&ez)
        .arg("-H")
        .arg("X-EZThrottle-Max-Wait: 0")
        .fetch(&limits.url("slow.test", "/"));
    assert_eq!(f.code, 429, "{}", f.describe());

    // Idempotency-Key: stored, replayed, conflicting body.
    let post = |body: &str| {
        curl()
            .proxy(&ez)
            .arg("-H")
            .arg("Idempotency-Key: promtool-key-1")
            .arg("-H")
            .arg("Content-Type: application/json")
            .arg("--data-binary")
            .arg(body)
            .fetch(&api.http_url("api.test", "/orders"))
    };
    post(r#"{"sku":"A-1"}"#).assert_status(201);
    let replay = post(r#"{"sku":"A-1"}"#);
    replay.assert_status(201);
    assert_eq!(
        replay.header("Idempotency-Replay"),
        Some("true"),
        "{}",
        replay.describe()
    );
    assert_eq!(post(r#"{"sku":"B-2"}"#).code, 409);

    // Parking: the request becomes a job, answered 202 at once; the result
    // goes to the webhook sink.
    let parked = curl()
        .proxy(&ez)
        .arg("-H")
        .arg(format!("X-EZThrottle-Webhook: {}", sink.url("/hook")))
        .arg("-H")
        .arg("Prefer: respond-async")
        .arg("--data-binary")
        .arg(r#"{"sku":"C-3"}"#)
        .fetch(&api.http_url("api.test", "/parked"));
    assert_eq!(parked.code, 202, "{}", parked.describe());
    let delivery = sink.next(Duration::from_secs(60));
    assert_eq!(delivery.json()["status"], "success", "{:?}", delivery);

    // Proxy errors: upstream refused, and an origin-form request to the proxy port.
    let f = curl().proxy(&ez).fetch(&format!(
        "http://closed.test:{}/nothing-listens",
        closed.port()
    ));
    assert_eq!(f.code, 502, "{}", f.describe());
    assert_eq!(raw::get(ez.proxy, "/healthz").status, 400);

    // Counters are recorded after the response went out: wait (bounded)
    // until the last of them shows up.
    let text = eventually(Duration::from_secs(10), "request metrics", || {
        let r = raw::get(ez.control, "/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        let content_type = r.header("content-type").unwrap_or_default().to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "content type {content_type:?}"
        );
        let text = r.text();
        let closed_errors = metrics::value(
            &text,
            "ezthrottle_requests_total",
            &[("domain", "closed.test"), ("outcome", "error")],
        );
        let conflicts = metrics::value(
            &text,
            "ezthrottle_requests_total",
            &[("domain", "api.test"), ("outcome", "conflict")],
        );
        let delivered = metrics::value(
            &text,
            "ezthrottle_webhook_deliveries_total",
            &[("result", "delivered")],
        );
        let succeeded = metrics::value(&text, "ezthrottle_jobs", &[("status", "success")]);
        (closed_errors == Some(1.0)
            && conflicts == Some(1.0)
            && delivered == Some(1.0)
            && succeeded == Some(1.0))
        .then_some(text)
    });

    // What the traffic above must have produced (so promtool reads a full page).
    for (name, labels) in [
        (
            "ezthrottle_requests_total",
            vec![("domain", "origin.test"), ("outcome", "forwarded")],
        ),
        (
            "ezthrottle_requests_total",
            vec![("domain", "api.test"), ("outcome", "replayed")],
        ),
        (
            "ezthrottle_requests_total",
            vec![("domain", "slow.test"), ("outcome", "rejected")],
        ),
        (
            "ezthrottle_upstream_responses_total",
            vec![("domain", "pause.test"), ("code", "429")],
        ),
        ("ezthrottle_idempotency_total", vec![("result", "replayed")]),
        (
            "ezthrottle_requests_total",
            vec![("domain", "api.test"), ("outcome", "parked")],
        ),
        (
            "ezthrottle_retries_total",
            vec![("domain", "pause.test"), ("kind", "retry")],
        ),
        (
            "ezthrottle_proxy_errors_total",
            vec![("code", "upstream_connect_failed")],
        ),
        (
            "ezthrottle_limit_headers_ignored_total",
            vec![("domain", "bad.test")],
        ),
        (
            "ezthrottle_throttle_wait_seconds_count",
            vec![("domain", "slow.test")],
        ),
        (
            "ezthrottle_upstream_duration_seconds_count",
            vec![("domain", "origin.test")],
        ),
        (
            "ezthrottle_domain_in_flight",
            vec![("domain", "learn.test")],
        ),
        ("ezthrottle_domain_waiting", vec![("domain", "learn.test")]),
    ] {
        assert!(
            metrics::value(&text, name, &labels).is_some(),
            "no {name} sample with {labels:?} in:\n{text}"
        );
    }
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_domain_rps_limit",
            &[("domain", "learn.test")]
        ),
        Some(50.0)
    );
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_domain_concurrency_limit",
            &[("domain", "learn.test")]
        ),
        Some(5.0)
    );

    let out = promtool_check(&promtool, text.as_bytes());
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics found problems: {}\n--- exposition ---\n{text}",
        show(&out)
    );

    // And promtool does reject a broken exposition, so the pass above means something.
    let bad = promtool_check(
        &promtool,
        b"# TYPE ezthrottle_bad counter\nezthrottle_bad 1\n",
    );
    assert!(
        !bad.status.success(),
        "promtool accepted a counter without _total and HELP: {}",
        show(&bad)
    );
}
