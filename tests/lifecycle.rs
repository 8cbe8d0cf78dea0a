//! Process lifecycle: graceful drain on SIGTERM/SIGINT, CA persistence across
//! restarts, and the control endpoints (`/healthz`, `/readyz`, `/ca.pem`,
//! `/metrics`).

mod common;

use std::thread;
use std::time::Duration;

use common::metrics;
use common::origin::SLOW_BODY;
use common::proc::describe;
use common::raw;
use common::{curl, eventually, Ezthrottle, Fetch, Origin};

const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Start a curl fetch in a thread (curl itself is bounded by --max-time and
/// the harness timeout, so the join is bounded too).
fn fetch_in_background(
    proxy_url: String,
    cacert: Option<std::path::PathBuf>,
    url: String,
    http: &'static str,
) -> thread::JoinHandle<Fetch> {
    thread::spawn(move || {
        let mut c = curl().arg("--proxy").arg(proxy_url).arg(http);
        if let Some(ca) = cacert {
            c = c.cacert(&ca);
        }
        c.fetch(&url)
    })
}

/// `http`: curl's `--http2` or `--http1.1` (an intercepted h2 stream's
/// last frames are written after its request has ended, by the
/// connection's own loop: the drain must wait for those too).
fn drain_case(signal: &str, https: bool, http: &'static str) {
    let origin = Origin::start();
    let mut ez = Ezthrottle::for_origin(&origin).start();

    let (url, ca) = if https {
        (origin.https_url("/slow?ms=1500"), Some(ez.ca_path.clone()))
    } else {
        (origin.http_url("/slow?ms=1500"), None)
    };
    let client = fetch_in_background(ez.proxy_url(), ca, url, http);

    // The request is in flight once the origin has it.
    let target = origin.wait_slow_arrival(ARRIVAL_TIMEOUT);
    assert_eq!(target, "/slow?ms=1500");

    let status = ez.stop_with(signal);
    let f = client.join().expect("client thread");
    f.assert_status(200);
    assert_eq!(
        f.text(),
        SLOW_BODY,
        "the in-flight response must be complete"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "after SIG{signal} the process must exit 0, got {}",
        describe(&status)
    );
}

#[test]
fn sigterm_drains_an_in_flight_request_and_exits_zero() {
    drain_case("TERM", false, "--http1.1");
}

#[test]
fn sigint_drains_an_in_flight_request_and_exits_zero() {
    drain_case("INT", false, "--http1.1");
}

#[test]
fn sigterm_drains_an_in_flight_intercepted_https_request() {
    drain_case("TERM", true, "--http1.1");
}

#[test]
fn sigterm_drains_an_in_flight_h2_stream() {
    drain_case("TERM", true, "--http2");
}

#[test]
fn idle_sigterm_exits_zero() {
    let origin = Origin::start();
    let mut ez = Ezthrottle::for_origin(&origin).start();
    curl()
        .proxy(&ez)
        .fetch(&origin.http_url("/echo"))
        .assert_status(200);
    let status = ez.stop_sigterm();
    assert_eq!(status.code(), Some(0), "{}", describe(&status));
}

#[test]
fn ca_survives_a_restart() {
    let origin = Origin::start();
    let data = tempfile::tempdir().expect("tempdir");

    let mut first = Ezthrottle::for_origin(&origin)
        .data_dir(data.path())
        .start();
    let pem = first.ca_pem();
    // Keep a copy outside the data dir: a client that trusted the first run.
    let trusted = data.path().join("trusted-copy.pem");
    std::fs::write(&trusted, &pem).expect("copy pem");
    let status = first.stop_sigterm();
    assert_eq!(status.code(), Some(0), "{}", describe(&status));

    let second = Ezthrottle::for_origin(&origin)
        .data_dir(data.path())
        .start();
    assert_eq!(second.ca_pem(), pem, "the CA must be reused, not recreated");
    let served = raw::get(second.control, "/ca.pem");
    assert_eq!(served.status, 200);
    assert_eq!(served.text(), pem);
    // The client that trusted the first run still trusts the second.
    curl()
        .proxy(&second)
        .cacert(&trusted)
        .fetch(&origin.https_url("/echo"))
        .assert_status(200);
}

#[test]
fn control_health_ready_and_ca_endpoints() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let r = raw::get(ez.control, "/healthz");
    assert_eq!(r.status, 200, "/healthz: {}", r.text());
    let r = raw::get(ez.control, "/readyz");
    assert_eq!(r.status, 200, "/readyz: {}", r.text());

    let r = raw::get(ez.control, "/ca.pem");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), ez.ca_pem(), "/ca.pem must serve the CA file");
    assert!(r.text().starts_with("-----BEGIN CERTIFICATE-----"));

    // curl against the control port (a real client, no proxy).
    let f = curl().fetch(&ez.control_url("/ca.pem"));
    f.assert_status(200);
    assert_eq!(f.text(), ez.ca_pem());
}

#[test]
fn metrics_count_forwarded_requests_and_upstream_codes() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    for _ in 0..3 {
        curl()
            .proxy(&ez)
            .fetch(&origin.http_url("/echo"))
            .assert_status(200);
    }
    curl()
        .proxy(&ez)
        .fetch(&origin.http_url("/status/404"))
        .assert_status(404);
    // HTTPS to the same host counts for the same domain (port ignored).
    curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .fetch(&origin.https_url("/echo"))
        .assert_status(200);

    let forwarded = [("domain", "origin.test"), ("outcome", "forwarded")];
    // Metrics may be recorded just after the response is sent: wait (bounded)
    // until the count reaches 5, then check every value exactly.
    let text = eventually(Duration::from_secs(10), "5 forwarded requests", || {
        let r = raw::get(ez.control, "/metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        let text = r.text();
        (metrics::value(&text, "ezthrottle_requests_total", &forwarded) == Some(5.0))
            .then_some(text)
    });
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_upstream_responses_total",
            &[("domain", "origin.test"), ("code", "200")]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_upstream_responses_total",
            &[("domain", "origin.test"), ("code", "404")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE ezthrottle_requests_total counter"),
        "{text}"
    );

    let r = raw::get(ez.control, "/metrics");
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "Content-Type {ct:?}");
}
