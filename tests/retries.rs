//! Retries and reroutes (SPEC §7, §9) through the real binary: an origin
//! that fails on script, curl as the client, and a second ezthrottle as
//! another region.

mod common;

use std::time::{Duration, Instant};

use common::api_origin::ApiOrigin;
use common::harness::EzBuilder;
use common::{curl, json, metrics, Ezthrottle, Fetch};

fn builder(origin: &ApiOrigin) -> EzBuilder {
    EzBuilder::new()
        .upstream_ca(&origin.pki.ca_path)
        .connect_port(origin.tls_addr.port())
        .resolve("api.test", "127.0.0.1")
        .resolve("origin.test", "127.0.0.1")
        .limits("rps = 1000.0\nmax_concurrent = 100")
}

fn request(ez: &Ezthrottle, method: &str, url: &str, headers: &[&str]) -> Fetch {
    let mut c = curl().proxy(ez).cacert(&ez.ca_path).arg("-X").arg(method);
    if method != "GET" {
        c = c.arg("--data-binary").arg(r#"{"n":1}"#);
    }
    for h in headers {
        c = c.arg("-H").arg(*h);
    }
    c.fetch(url)
}

fn attempts(f: &Fetch) -> u32 {
    f.header("x-ezthrottle-attempts")
        .unwrap_or_else(|| panic!("no X-EZThrottle-Attempts: {}", f.describe()))
        .parse()
        .expect("attempts is a number")
}

#[test]
fn two_503s_then_success_is_one_answer_after_three_attempts() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin).start();
    let f = request(
        &ez,
        "GET",
        &origin.http_url("api.test", "/v1/flaky?fail_first=2"),
        &[],
    );
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 3);
    assert_eq!(json(&f.body)["call"], 3, "the answer is the third call's");
    assert_eq!(origin.count("/v1/flaky"), 3);

    let text = common::harness::control_get(&ez, "/metrics");
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_retries_total",
            &[("domain", "api.test"), ("kind", "retry")]
        ),
        Some(2.0)
    );
}

#[test]
fn intercepted_https_retries_too() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin).start();
    let f = request(
        &ez,
        "GET",
        &origin.https_url("/v1/tls-flaky?fail_first=1&fail_status=429"),
        &[],
    );
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 2);
    assert_eq!(origin.count("/v1/tls-flaky"), 2);
}

#[test]
fn retries_end_with_the_last_upstream_answer() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin)
        .extra("\n[retry]\nmax_retries = 2\n")
        .start();
    let f = request(
        &ez,
        "GET",
        &origin.http_url("api.test", "/v1/down?fail_first=99"),
        &[],
    );
    assert_eq!(f.code, 503, "{}", f.describe());
    assert_eq!(attempts(&f), 3, "1 attempt + max_retries 2");
    assert_eq!(origin.count("/v1/down"), 3);
    // The origin's own answer, not a proxy error.
    assert_eq!(f.header("x-ezthrottle-error"), None);
    assert!(f.header("x-call").is_some());
}

#[test]
fn retry_after_is_honoured() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin).start();
    let started = Instant::now();
    let f = request(
        &ez,
        "GET",
        &origin.http_url("api.test", "/v1/later?fail_first=1&retry_after=2"),
        &[],
    );
    let took = started.elapsed();
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 2);
    assert!(
        took >= Duration::from_millis(1900),
        "Retry-After: 2 must delay the retry; took {took:?}"
    );
}

#[test]
fn post_without_key_is_not_retried_on_500_but_is_with_a_key() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin).start();
    let f = request(
        &ez,
        "POST",
        &origin.http_url("api.test", "/v1/charge?fail_first=1&fail_status=500"),
        &["Content-Type: application/json"],
    );
    assert_eq!(f.code, 500, "{}", f.describe());
    assert_eq!(attempts(&f), 1);
    assert_eq!(origin.count("/v1/charge"), 1);

    // 503 means the server did not act: retried even without a key.
    let f = request(
        &ez,
        "POST",
        &origin.http_url("api.test", "/v1/charge503?fail_first=1&fail_status=503"),
        &["Content-Type: application/json"],
    );
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 2);

    let f = request(
        &ez,
        "POST",
        &origin.http_url("api.test", "/v1/charge-keyed?fail_first=1&fail_status=500"),
        &[
            "Content-Type: application/json",
            "Idempotency-Key: retry-key-1",
        ],
    );
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 2);
    assert_eq!(origin.count("/v1/charge-keyed"), 2);
    // The body went out whole on the second attempt too.
    assert_eq!(json(&f.body)["body_len"], 7);
}

#[test]
fn large_bodies_are_retried_up_to_max_buffered_body() {
    let origin = ApiOrigin::start();
    let ez = builder(&origin).start();
    // 300 KiB: beyond pingora's own 64 KiB retry buffer, within 1 MiB.
    let body = common::upload_bytes(300 * 1024);
    let f = curl()
        .proxy(&ez)
        .arg("-X")
        .arg("PUT")
        .upload(&body)
        .fetch(&origin.http_url("api.test", "/v1/blob?fail_first=1"));
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 2);
    let v = json(&f.body);
    assert_eq!(v["body_len"], body.len());
    assert_eq!(v["body_sha256"], common::sha256_hex(&body));

    // 2 MiB: streamed once, never retried.
    let big = common::upload_bytes(2 * 1024 * 1024);
    let f = curl()
        .proxy(&ez)
        .arg("-X")
        .arg("PUT")
        .upload(&big)
        .fetch(&origin.http_url("api.test", "/v1/huge?fail_first=1"));
    assert_eq!(f.code, 503, "{}", f.describe());
    assert_eq!(attempts(&f), 1);
    assert_eq!(origin.count("/v1/huge"), 1);
}

/// Two instances: `peer` is region "east" of `ez`.
fn with_region(
    origin: &ApiOrigin,
    peer_resolve: &str,
    own_resolve: &str,
) -> (Ezthrottle, Ezthrottle) {
    let peer = EzBuilder::new()
        .upstream_ca(&origin.pki.ca_path)
        .connect_port(origin.tls_addr.port())
        .resolve("api.test", peer_resolve)
        .resolve("origin.test", peer_resolve)
        .limits("rps = 1000.0\nmax_concurrent = 100")
        .start();
    let ez = EzBuilder::new()
        .upstream_ca(&origin.pki.ca_path)
        .connect_port(origin.tls_addr.port())
        .resolve("api.test", own_resolve)
        .resolve("origin.test", own_resolve)
        .limits("rps = 1000.0\nmax_concurrent = 100")
        .extra(&format!(
            "\n[regions.east]\nproxy = \"{}\"\n\n[limits.domains.\"api.test\"]\nregions = [\"local\", \"east\"]\n\n[limits.domains.\"origin.test\"]\nregions = [\"local\", \"east\"]\n",
            peer.proxy_url()
        ))
        .start();
    (ez, peer)
}

fn hops(via: &str) -> usize {
    via.matches("ezthrottle-").count()
}

#[test]
fn a_reroute_travels_through_the_other_region() {
    let origin = ApiOrigin::start();
    let (ez, _peer) = with_region(&origin, "127.0.0.1", "127.0.0.1");
    let f = request(
        &ez,
        "GET",
        &origin.http_url("api.test", "/v1/rr?fail_first=1&fail_status=502"),
        &[],
    );
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 2);
    let vias = origin.vias("/v1/rr");
    assert_eq!(vias.len(), 2, "{vias:?}");
    assert_eq!(hops(&vias[0]), 1, "first attempt direct: {vias:?}");
    assert_eq!(
        hops(&vias[1]),
        2,
        "second attempt through the peer: {vias:?}"
    );

    // Intercepted HTTPS is rerouted too: the peer makes the TLS connection.
    let f = request(
        &ez,
        "GET",
        &origin.https_url("/v1/rr-tls?fail_first=1&fail_status=500"),
        &[],
    );
    assert_eq!(f.code, 201, "{}", f.describe());
    let vias = origin.vias("/v1/rr-tls");
    assert_eq!(vias.iter().map(|v| hops(v)).collect::<Vec<_>>(), [1, 2]);

    let text = common::harness::control_get(&ez, "/metrics");
    assert_eq!(
        metrics::value(
            &text,
            "ezthrottle_retries_total",
            &[("domain", "api.test"), ("kind", "reroute")]
        ),
        Some(1.0)
    );
}

#[test]
fn a_connection_failure_reroutes_to_a_region_that_can_connect() {
    let origin = ApiOrigin::start();
    // Locally the name points where nothing listens; the peer reaches the origin.
    let (ez, _peer) = with_region(&origin, "127.0.0.1", "127.0.0.2");
    let f = request(
        &ez,
        "POST",
        &origin.http_url("api.test", "/v1/conn"),
        &["Content-Type: application/json"],
    );
    assert_eq!(f.code, 201, "{}", f.describe());
    assert_eq!(attempts(&f), 2);
    let vias = origin.vias("/v1/conn");
    assert_eq!(vias.len(), 1, "{vias:?}");
    assert_eq!(hops(&vias[0]), 2, "{vias:?}");
}
