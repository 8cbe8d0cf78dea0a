//! The access log follows `EZTHROTTLE_LOG`: one line per request when
//! `ezthrottle::access` is enabled at `info`, none when it is not. The
//! filter is asked once, when logging starts, not per request
//! (docs/performance.md, "The seventeenth pass"). Standard error is a file
//! here, so the lines take the fast path (the writer thread).

mod common;

use common::{Ezthrottle, Origin};

/// The access lines a proxy started with `EZTHROTTLE_LOG=log` wrote for
/// one request proxied to `origin.test`, read after a graceful stop (which writes out every
/// line taken: no waiting on the writer's timing).
fn access_lines_with(log: &str) -> Vec<String> {
    let origin = Origin::start();
    let mut ez = Ezthrottle::for_origin(&origin)
        .env("EZTHROTTLE_LOG", log)
        .start();
    let resp = common::raw::proxy_get(ez.proxy, &origin.http_url("/echo?k=v"));
    assert_eq!(resp.status, 200, "{resp:?}");
    let status = ez.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "EZTHROTTLE_LOG={log}: {status:?}");
    ez.stderr_log()
        .lines()
        // (The harness's readiness probe is logged too, without a domain.)
        .filter(|l| l.contains("ezthrottle::access") && l.contains("origin.test"))
        .map(String::from)
        .collect()
}

#[test]
fn access_lines_follow_the_log_filter() {
    for log in ["info", "warn,ezthrottle::access=info"] {
        let lines = access_lines_with(log);
        assert_eq!(lines.len(), 1, "EZTHROTTLE_LOG={log}: {lines:?}");
        for part in [
            "method=GET",
            "path=\"/echo\"",
            "status=200",
            "outcome=\"forwarded\"",
        ] {
            assert!(lines[0].contains(part), "{part} in {:?}", lines[0]);
        }
        assert!(
            !lines[0].contains("k=v"),
            "the query is not logged: {lines:?}"
        );
    }
    for log in [
        "warn",
        "info,ezthrottle::access=off",
        "info,ezthrottle=warn",
    ] {
        let lines = access_lines_with(log);
        assert!(lines.is_empty(), "EZTHROTTLE_LOG={log}: {lines:?}");
    }
}
