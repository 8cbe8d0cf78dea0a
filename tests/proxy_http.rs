//! Plain-HTTP forwarding through the real binary with real clients.
//!
//! `origin.test` resolves only inside the proxy (`[resolve]`), so a response
//! from the origin proves the request went through ezthrottle.

mod common;

use common::origin::{Echo, HEADERS_BODY};
use common::raw::RawConn;
use common::{curl, pattern_bytes, py, sha256_hex, upload_bytes, Ezthrottle, Origin};

const TWO_MIB: usize = 2 * 1024 * 1024;

#[test]
fn curl_proxy_flag_forwards_status_headers_and_body() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let f = curl().proxy(&ez).fetch(&origin.http_url("/headers"));
    f.assert_status(200);
    assert_eq!(f.text(), HEADERS_BODY);
    assert_eq!(f.header("x-custom-one"), Some("alpha"), "{:?}", f.headers);
    assert_eq!(
        f.header("x-custom-two"),
        Some("beta; gamma=1"),
        "{:?}",
        f.headers
    );
    assert_eq!(
        f.header("cache-control"),
        Some("no-store"),
        "{:?}",
        f.headers
    );
    let cookies = f.headers_all("set-cookie");
    assert_eq!(
        cookies,
        vec!["a=1; Path=/", "b=2; Path=/; HttpOnly"],
        "both Set-Cookie headers must arrive separately and in order: {:?}",
        f.headers
    );
    assert_eq!(origin.count("/headers"), 1);

    // A non-2xx upstream status is passed through as it is.
    let f = curl().proxy(&ez).fetch(&origin.http_url("/status/404"));
    f.assert_status(404);
    assert_eq!(f.text(), "{\"status\":404}");
    let f = curl().proxy(&ez).fetch(&origin.http_url("/status/201"));
    f.assert_status(201);
}

#[test]
fn curl_http_proxy_env_var_is_honoured() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    // curl reads only the lower-case `http_proxy` (httpoxy).
    let f = curl()
        .env("http_proxy", ez.proxy_url())
        .fetch(&origin.http_url("/echo?via=env"));
    f.assert_status(200);
    let echo = Echo::parse(&f.body);
    assert_eq!(echo.method(), "GET");
    assert_eq!(echo.target(), "/echo?via=env");
    assert_eq!(origin.count("/echo"), 1);
}

#[test]
fn upload_2mib_arrives_intact() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let data = upload_bytes(TWO_MIB);
    let f = curl()
        .proxy(&ez)
        .upload(&data)
        .fetch(&origin.http_url("/echo"));
    f.assert_status(200);
    let echo = Echo::parse(&f.body);
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.body_len(), TWO_MIB as u64);
    assert_eq!(echo.body_sha256(), sha256_hex(&data));
}

#[test]
fn download_2mib_arrives_intact() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let f = curl()
        .proxy(&ez)
        .fetch(&origin.http_url(&format!("/bytes?n={TWO_MIB}")));
    f.assert_status(200);
    assert_eq!(f.body.len(), TWO_MIB);
    assert_eq!(sha256_hex(&f.body), sha256_hex(&pattern_bytes(TWO_MIB)));
}

#[test]
fn origin_gets_origin_form_and_no_proxy_headers() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let f = curl()
        .proxy(&ez)
        .args(["--proxy-user", "alice:s3cret"])
        .args(["-H", "X-Test-Header: kept"])
        .fetch(&origin.http_url("/echo?a=1&b=two"));
    f.assert_status(200);
    let echo = Echo::parse(&f.body);
    assert_eq!(
        echo.target(),
        "/echo?a=1&b=two",
        "the origin must receive an origin-form request target"
    );
    let headers = echo.headers();
    let leaked: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("proxy-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "Proxy-* headers must not reach the origin: {leaked:?}"
    );
    assert!(
        !headers.iter().any(|(_, v)| v.contains("YWxpY2U6czNjcmV0")),
        "proxy credentials leaked to the origin: {headers:?}"
    );
    assert_eq!(echo.header("x-test-header").as_deref(), Some("kept"));
    assert_eq!(
        echo.header("host"),
        Some(format!("origin.test:{}", origin.http_addr.port()))
    );
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

#[test]
fn python_urllib_through_http_proxy_env() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let proxy = ez.proxy_url();
    let r = py::fetch(
        "urllib",
        &origin.http_url("/echo?lib=urllib"),
        &[("HTTP_PROXY", &proxy)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body_text);
    let echo = Echo::parse(r.body_text.as_bytes());
    assert_eq!(echo.target(), "/echo?lib=urllib");
    assert!(
        echo.header("user-agent")
            .unwrap_or_default()
            .starts_with("Python-urllib"),
        "{:?}",
        echo.headers()
    );

    let r = py::fetch(
        "urllib",
        &origin.http_url("/headers"),
        &[("http_proxy", &proxy)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text, HEADERS_BODY);
    assert_eq!(r.header("x-custom-one"), Some("alpha"));
}

#[test]
fn python_requests_through_http_proxy_env() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let data = upload_bytes(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("body.bin");
    std::fs::write(&file, &data).expect("write body");
    let r = py::fetch(
        "requests",
        &origin.http_url("/echo?lib=requests"),
        &[("HTTP_PROXY", &ez.proxy_url())],
        Some(&file),
    );
    assert_eq!(r.status, 200, "{}", r.body_text);
    let echo = Echo::parse(r.body_text.as_bytes());
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.target(), "/echo?lib=requests");
    assert_eq!(echo.body_sha256(), sha256_hex(&data));
}
