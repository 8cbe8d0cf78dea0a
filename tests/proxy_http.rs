//! Plain-HTTP forwarding through the real binary with real clients.
//!
//! `origin.test` resolves only inside the proxy (`[resolve]`), so a response
//! from the origin proves the request went through ezthrottle. The tests
//! every mode shares are `common::proxy_suite` (also run intercepted, in
//! `tests/proxy_https.rs`); below them, the ones only plain HTTP has.

mod common;

use common::origin::Echo;
use common::raw::RawConn;
use common::{curl, Ezthrottle, Origin};

common::proxy_suite::proxy_suite! {
    url: |origin, path| origin.http_url(path),
    curl: |ez| curl().proxy(ez),
    // curl reads only the lower-case `http_proxy` (httpoxy).
    curl_env: |ez| curl().env("http_proxy", ez.proxy_url()),
    py_env: |ez, _lib| vec![("HTTP_PROXY".to_string(), ez.proxy_url())],
    // Forwarded as it is: no CONNECT.
    connect_code: 0,
}

#[test]
fn keep_alive_two_requests_then_connect_on_one_connection() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();
    let host = format!("origin.test:{}", origin.http_addr.port());

    let mut conn = RawConn::connect(ez.proxy);
    for i in 1..=2 {
        conn.send(
            format!(
                "GET http://{host}/echo?n={i} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: raw-keepalive\r\n\r\n"
            )
            .as_bytes(),
        );
        let resp = conn.read_response();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert!(
            !resp
                .header("connection")
                .unwrap_or("")
                .eq_ignore_ascii_case("close"),
            "the proxy must keep the client connection open: {:?}",
            resp.headers
        );
        let echo = Echo::parse(&resp.body);
        assert_eq!(echo.target(), format!("/echo?n={i}"));
    }
    assert_eq!(origin.count("/echo"), 2);

    let target = format!("origin.test:{}", origin.tls_addr.port());
    conn.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
    let resp = conn.read_connect_response();
    assert_eq!(
        resp.status, 200,
        "CONNECT after two requests on the same connection: {resp:?}"
    );
}
