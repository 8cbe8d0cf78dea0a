//! HTTPS through the real binary: interception (the client sees a leaf signed
//! by the ezthrottle CA, the proxy verifies the origin against the test CA)
//! and tunnel mode (the client sees the origin's own certificate). The tests
//! every mode shares are `common::proxy_suite` (also run over plain HTTP, in
//! `tests/proxy_http.rs`), here intercepted; below them, the ones only HTTPS
//! has.

mod common;

use common::ca::TEST_CA_CN;
use common::origin::Echo;
use common::{curl, py, Ezthrottle, Origin};

common::proxy_suite::proxy_suite! {
    url: |origin, path| origin.https_url(path),
    curl: |ez| curl().proxy(ez).cacert(&ez.ca_path),
    curl_env: |ez| curl()
        .env("HTTPS_PROXY", ez.proxy_url())
        .env("CURL_CA_BUNDLE", ez.ca_path.to_string_lossy()),
    py_env: |ez, lib| {
        let ca_var = if lib == "requests" { "REQUESTS_CA_BUNDLE" } else { "SSL_CERT_FILE" };
        vec![
            ("HTTPS_PROXY".to_string(), ez.proxy_url()),
            (ca_var.to_string(), ez.ca_path.to_string_lossy().into_owned()),
        ]
    },
    // The proxy's answer to curl's CONNECT.
    connect_code: 200,
}

fn tls_target(origin: &Origin) -> String {
    format!("origin.test:{}", origin.tls_addr.port())
}

#[test]
fn client_that_does_not_trust_the_ezthrottle_ca_fails() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    // Trusting only the ORIGIN's CA: in intercept mode the client is shown
    // the proxy's leaf, so verification must fail.
    let f = curl()
        .proxy(&ez)
        .cacert(&origin.pki.ca_path)
        .fetch(&origin.https_url("/echo"));
    assert_eq!(
        f.exit,
        60,
        "expected curl exit 60 (peer certificate not trusted): {}",
        f.describe()
    );
    // System roots only: same.
    let f = curl().proxy(&ez).fetch(&origin.https_url("/echo"));
    assert_eq!(f.exit, 60, "{}", f.describe());
    assert_eq!(origin.count("/echo"), 0, "no request may reach the origin");
}

#[test]
fn leaf_shown_to_client_is_issued_by_the_ezthrottle_ca() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();
    assert!(
        ez.ca_path.exists(),
        "CA not created at {}",
        ez.ca_path.display()
    );

    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .arg("-v")
        .fetch(&origin.https_url("/echo"));
    f.assert_status(200);
    let issuer = f
        .issuer()
        .unwrap_or_else(|| panic!("no issuer in curl -v:\n{}", f.stderr));
    assert!(
        !issuer.contains(TEST_CA_CN),
        "intercepted connection shows the origin's issuer {issuer:?}"
    );

    // Python ssl, trusting ONLY the ezthrottle CA: verifies, and the issuer
    // is exactly the ezthrottle CA's subject.
    let report = py::peer_cert(ez.proxy, &tls_target(&origin), &ez.ca_path);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["peer_issuer"], report["ca_subject"], "{report}");
    assert!(
        report["san"]
            .as_array()
            .expect("san")
            .iter()
            .any(|n| n == "origin.test"),
        "leaf must cover the CONNECT host: {report}"
    );
    let ca_cn = report["ca_subject"]["commonName"].as_str().unwrap_or("");
    assert!(
        issuer.contains(ca_cn),
        "curl saw issuer {issuer:?}, the CA is {ca_cn:?}"
    );

    // Trusting only the origin's test CA fails the handshake.
    let report = py::peer_cert(ez.proxy, &tls_target(&origin), &origin.pki.ca_path);
    assert_eq!(report["ok"], false, "{report}");
}

#[test]
fn connect_target_is_authoritative_not_inner_host() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    // `evil.test` does not resolve anywhere; the request must still go to
    // the CONNECT target.
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .args(["-H", "Host: evil.test"])
        .fetch(&origin.https_url("/echo?inner-host"));
    f.assert_status(200);
    assert_eq!(Echo::parse(&f.body).target(), "/echo?inner-host");
    assert_eq!(origin.count("/echo"), 1);
}

#[test]
fn tunnel_mode_client_sees_the_origin_certificate() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin)
        .extra("[limits.domains.\"origin.test\"]\ntls = \"tunnel\"")
        .start();

    // Trusting only the origin's test CA works: the bytes go straight through.
    let f = curl()
        .proxy(&ez)
        .cacert(&origin.pki.ca_path)
        .arg("-v")
        .fetch(&origin.https_url("/echo?tunnel=1"));
    f.assert_status(200);
    assert_eq!(f.connect_code, 200);
    let issuer = f
        .issuer()
        .unwrap_or_else(|| panic!("no issuer in curl -v:\n{}", f.stderr));
    assert!(
        issuer.contains(TEST_CA_CN),
        "tunnel must show the origin's certificate, issuer was {issuer:?}"
    );
    assert_eq!(Echo::parse(&f.body).target(), "/echo?tunnel=1");

    let report = py::peer_cert(ez.proxy, &tls_target(&origin), &origin.pki.ca_path);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["peer_issuer"]["commonName"], TEST_CA_CN, "{report}");

    // Trusting only the ezthrottle CA fails: nobody re-signs in tunnel mode.
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .fetch(&origin.https_url("/echo?tunnel=2"));
    assert_eq!(f.exit, 60, "{}", f.describe());
    assert_eq!(origin.count("/echo"), 1);
}
