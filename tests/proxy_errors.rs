//! Every error the proxy answers with: status AND the SPEC §8 JSON code,
//! for plain requests, CONNECT answers and intercepted inner requests.

mod common;

use common::raw::{self, RawConn, RawResponse};
use common::{closed_addr, curl, error_code, Ezthrottle, Origin};

fn assert_error(resp: &RawResponse, status: u16, code: &str) {
    assert_eq!(
        resp.status,
        status,
        "expected {status} {code}, got {} {:?} body {}",
        resp.status,
        resp.headers,
        resp.text()
    );
    assert_eq!(resp.error_code(), code, "body: {}", resp.text());
    let message = resp.error_message();
    assert!(!message.is_empty(), "empty error message: {}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.contains("application/json"),
        "error bodies are JSON, Content-Type was {ct:?}"
    );
}

#[test]
fn origin_form_request_is_not_a_proxy_request() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let resp = raw::request(
        ez.proxy,
        &format!(
            "GET /some/path HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            ez.proxy
        ),
    );
    assert_error(&resp, 400, "not_a_proxy_request");
    let message = resp.error_message();
    assert!(
        message.contains(&ez.control.to_string()),
        "the message must name the control address {}: {message:?}",
        ez.control
    );

    // curl pointed straight at the proxy port (no --proxy) sends origin-form too.
    let f = curl().fetch(&format!("http://{}/", ez.proxy));
    assert_eq!(f.code, 400, "{}", f.describe());
    assert_eq!(error_code(&f.body), "not_a_proxy_request");
}

#[test]
fn connect_to_a_port_not_allowed_is_403() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let (_c, resp) = raw::connect(ez.proxy, "origin.test:22");
    assert_error(&resp, 403, "connect_port_denied");

    // The plain HTTP port of the origin is not in connect_ports either.
    let target = format!("origin.test:{}", origin.http_addr.port());
    let (_c, resp) = raw::connect(ez.proxy, &target);
    assert_error(&resp, 403, "connect_port_denied");

    // curl sees the refusal as the CONNECT answer.
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .fetch(&format!("https://origin.test:{}/", origin.http_addr.port()));
    assert_eq!(f.connect_code, 403, "{}", f.describe());
    assert_ne!(f.exit, 0);
    assert_eq!(origin.count("/"), 0);
}

#[test]
fn request_to_the_proxy_itself_is_a_loop() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).connect_self().start();

    let resp = raw::proxy_get(ez.proxy, &format!("http://{}/x", ez.proxy));
    assert_error(&resp, 508, "proxy_loop");

    let f = curl()
        .proxy(&ez)
        .fetch(&format!("http://127.0.0.1:{}/y", ez.proxy.port()));
    assert_eq!(f.code, 508, "{}", f.describe());
    assert_eq!(error_code(&f.body), "proxy_loop");

    // CONNECT to the proxy's own address (its port allowed for this test).
    let (_c, resp) = raw::connect(ez.proxy, &ez.proxy.to_string());
    assert_error(&resp, 508, "proxy_loop");
}

#[test]
fn unresolvable_host_is_502() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .extra("[limits.domains.\"tunnel-nope.invalid\"]\ntls = \"tunnel\"")
        .start();

    let resp = raw::proxy_get(ez.proxy, "http://nope.invalid/");
    assert_error(&resp, 502, "upstream_unresolvable");

    let f = curl().proxy(&ez).fetch("http://nope.invalid/path");
    assert_eq!(f.code, 502, "{}", f.describe());
    assert_eq!(error_code(&f.body), "upstream_unresolvable");

    // A tunnel must reach the upstream before it can answer 200, so the
    // failure is the CONNECT answer.
    let (_c, resp) = raw::connect(ez.proxy, "tunnel-nope.invalid:443");
    assert_error(&resp, 502, "upstream_unresolvable");

    // Intercept mode may answer the CONNECT before resolving: then the inner
    // request gets the error.
    let (_c, resp) = raw::connect(ez.proxy, "nope.invalid:443");
    if resp.status == 200 {
        let f = curl()
            .proxy(&ez)
            .cacert(&ez.ca_path)
            .fetch("https://nope.invalid/");
        assert_eq!(f.code, 502, "{}", f.describe());
        assert_eq!(error_code(&f.body), "upstream_unresolvable");
    } else {
        assert_error(&resp, 502, "upstream_unresolvable");
    }
}

#[test]
fn connection_refused_is_502() {
    let origin = Origin::start();
    let closed = closed_addr();
    let ez = Ezthrottle::for_origin(&origin)
        .connect_port(closed.port())
        .resolve("closed.test", "127.0.0.1")
        .extra("[limits.domains.\"closed.test\"]\ntls = \"tunnel\"")
        .start();

    let resp = raw::proxy_get(ez.proxy, &format!("http://{closed}/"));
    assert_error(&resp, 502, "upstream_connect_failed");

    let f = curl()
        .proxy(&ez)
        .fetch(&format!("http://closed.test:{}/x", closed.port()));
    assert_eq!(f.code, 502, "{}", f.describe());
    assert_eq!(error_code(&f.body), "upstream_connect_failed");

    let (_c, resp) = raw::connect(ez.proxy, &format!("closed.test:{}", closed.port()));
    assert_error(&resp, 502, "upstream_connect_failed");
}

#[test]
fn untrusted_origin_certificate_is_upstream_tls_failed() {
    let origin = Origin::start();
    // No upstream_ca_file: the proxy trusts only the system roots, which do
    // not include the origin's test CA.
    let ez = Ezthrottle::for_origin(&origin).no_upstream_ca().start();

    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .fetch(&origin.https_url("/echo"));
    assert_eq!(f.connect_code, 200, "{}", f.describe());
    assert_eq!(f.code, 502, "{}", f.describe());
    assert_eq!(error_code(&f.body), "upstream_tls_failed", "{}", f.text());
    // The message says why and what fixes it.
    let message = common::error_message(&f.body);
    assert!(message.contains("unknown issuer"), "{message}");
    assert!(message.contains("[tls] upstream_ca_file"), "{message}");
    assert!(
        message.contains(&format!("origin.test:{}", origin.tls_addr.port())),
        "{message}"
    );
    assert_eq!(
        origin.count("/echo"),
        0,
        "no request may be sent over an unverified connection"
    );

    // Same proxy, verified origin on another run: trust makes the difference.
    let ez_trusting = Ezthrottle::for_origin(&origin).start();
    curl()
        .proxy(&ez_trusting)
        .cacert(&ez_trusting.ca_path)
        .fetch(&origin.https_url("/echo"))
        .assert_status(200);
}

#[test]
fn malformed_requests_get_4xx_not_a_hang() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let cases = [
        "GARBAGE\r\n\r\n",
        "GET http://bad host/ HTTP/1.1\r\nHost: bad host\r\n\r\n",
        "GET http:///no-host HTTP/1.1\r\nHost: \r\n\r\n",
        "GET http://origin.test:99999/ HTTP/1.1\r\nHost: origin.test:99999\r\n\r\n",
        "CONNECT origin.test HTTP/1.1\r\nHost: origin.test\r\n\r\n",
        "CONNECT :443 HTTP/1.1\r\n\r\n",
    ];
    for case in cases {
        let mut c = RawConn::connect(ez.proxy);
        c.send(case.as_bytes());
        let resp = c
            .try_read_response(true)
            .unwrap_or_else(|e| panic!("no response to {case:?} ({e})"));
        assert!(
            (400..500).contains(&resp.status),
            "{case:?} got {} {}",
            resp.status,
            resp.text()
        );
    }
    assert_eq!(origin.count("/"), 0);
}

#[test]
fn proxy_stays_healthy_after_errors() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    for _ in 0..3 {
        let mut c = RawConn::connect(ez.proxy);
        c.send(b"GARBAGE\r\n\r\n");
        let _ = c.try_read_response(false);
        let _ = raw::proxy_get(ez.proxy, "http://nope.invalid/");
        let _ = raw::proxy_get(ez.proxy, &format!("http://{}/", closed_addr()));
    }
    let f = curl().proxy(&ez).fetch(&origin.http_url("/echo"));
    f.assert_status(200);
}

/// An origin that dies mid-answer. `/partial`: a head saying
/// `Content-Length: 100`, 10 bytes of body, then the connection closes.
/// `/nothing`: the connection closes before any head.
fn dying_origin() -> (common::serve::Loopback, std::net::SocketAddr) {
    use tokio::io::AsyncWriteExt;
    let server = common::serve::Loopback::new("dying origin");
    let addr = server.serve_tcp(|mut tcp| async move {
        let Some(head) = common::serve::read_request_head(&mut tcp).await else {
            return;
        };
        if head.starts_with(b"GET /partial") {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await;
            let _ = tcp.flush().await;
        }
        // Dropping the stream closes the connection.
    });
    (server, addr)
}

/// The client gets the head and the 10 bytes that came, then the proxy
/// closes its connection: the body is not completed, padded or turned into
/// a clean end, so the client can tell it was cut short. An origin that
/// closes before any head is a 502 `upstream_failed`. The proxy stays
/// healthy after both, on the same origin host.
#[test]
fn an_origin_that_dies_mid_answer_cuts_the_client_short() {
    use std::io::{Read, Write};
    let origin = Origin::start();
    let (_dying, addr) = dying_origin();
    let ez = Ezthrottle::for_origin(&origin)
        .resolve("dying.test", "127.0.0.1")
        .start();
    let url = |path: &str| format!("http://dying.test:{}{path}", addr.port());

    let mut c = std::net::TcpStream::connect(ez.proxy).expect("connect proxy");
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        c,
        "GET {} HTTP/1.1\r\nHost: dying.test:{}\r\n\r\n",
        url("/partial"),
        addr.port()
    )
    .expect("send");
    let mut got = Vec::new();
    // Ends at the proxy's close; a timeout (the proxy holding the client
    // open) fails here.
    c.read_to_end(&mut got)
        .expect("the proxy closes the connection after the cut body");
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100"),
        "the origin's length is passed on: {text:?}"
    );
    assert_eq!(body, "0123456789", "only what the origin sent: {text:?}");

    let resp = raw::proxy_get(ez.proxy, &url("/nothing"));
    assert_error(&resp, 502, "upstream_failed");

    let f = curl().proxy(&ez).fetch(&origin.http_url("/echo"));
    f.assert_status(200);
}
