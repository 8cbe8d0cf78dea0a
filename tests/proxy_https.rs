//! HTTPS through the real binary: interception (the client sees a leaf signed
//! by the ezthrottle CA, the proxy verifies the origin against the test CA)
//! and tunnel mode (the client sees the origin's own certificate).

mod common;

use common::ca::TEST_CA_CN;
use common::origin::Echo;
use common::{curl, pattern_bytes, py, sha256_hex, upload_bytes, Ezthrottle, Origin};

const TWO_MIB: usize = 2 * 1024 * 1024;

fn tls_target(origin: &Origin) -> String {
    format!("origin.test:{}", origin.tls_addr.port())
}

#[test]
fn intercepted_https_echo_upload_and_download() {
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
        .fetch(&origin.https_url("/echo?q=1"));
    f.assert_status(200);
    assert_eq!(f.connect_code, 200, "{}", f.describe());
    let echo = Echo::parse(&f.body);
    assert_eq!(echo.target(), "/echo?q=1");
    assert_eq!(origin.count("/echo"), 1);

    let data = upload_bytes(TWO_MIB);
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .upload(&data)
        .fetch(&origin.https_url("/echo"));
    f.assert_status(200);
    let echo = Echo::parse(&f.body);
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.body_len(), TWO_MIB as u64);
    assert_eq!(echo.body_sha256(), sha256_hex(&data));

    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .fetch(&origin.https_url(&format!("/bytes?n={TWO_MIB}")));
    f.assert_status(200);
    assert_eq!(f.body.len(), TWO_MIB);
    assert_eq!(sha256_hex(&f.body), sha256_hex(&pattern_bytes(TWO_MIB)));
}

#[test]
fn https_proxy_env_and_curl_ca_bundle() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let f = curl()
        .env("HTTPS_PROXY", ez.proxy_url())
        .env("CURL_CA_BUNDLE", ez.ca_path.to_string_lossy())
        .fetch(&origin.https_url("/headers"));
    f.assert_status(200);
    assert_eq!(f.header("x-custom-one"), Some("alpha"), "{:?}", f.headers);
    assert_eq!(
        f.headers_all("set-cookie"),
        vec!["a=1; Path=/", "b=2; Path=/; HttpOnly"]
    );
    assert_eq!(origin.count("/headers"), 1);
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
fn two_requests_over_one_intercepted_connection() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let run = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .arg("-v")
        .args(["-o", "/dev/null", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{num_connects}\\n"])
        .arg(origin.https_url("/echo?first"))
        .arg(origin.https_url("/echo?second"))
        .run();
    assert_eq!(run.exit, 0, "curl failed: {}", run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["200 1", "200 0"],
        "both transfers must succeed and the second must reuse the connection\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Re-using existing connection"),
        "curl did not reuse the intercepted connection:\n{}",
        run.stderr
    );
    assert_eq!(origin.count("/echo"), 2);
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
fn python_urllib_https_proxy_with_ssl_cert_file() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let proxy = ez.proxy_url();
    let ca = ez.ca_path.to_string_lossy().into_owned();
    let r = py::fetch(
        "urllib",
        &origin.https_url("/echo?lib=urllib"),
        &[("HTTPS_PROXY", &proxy), ("SSL_CERT_FILE", &ca)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body_text);
    let echo = Echo::parse(r.body_text.as_bytes());
    assert_eq!(echo.target(), "/echo?lib=urllib");
    assert_eq!(origin.count("/echo"), 1);
}

#[test]
fn python_requests_https_proxy_with_requests_ca_bundle() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let data = upload_bytes(300_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("body.bin");
    std::fs::write(&file, &data).expect("write body");
    let proxy = ez.proxy_url();
    let ca = ez.ca_path.to_string_lossy().into_owned();
    let r = py::fetch(
        "requests",
        &origin.https_url("/echo?lib=requests"),
        &[("HTTPS_PROXY", &proxy), ("REQUESTS_CA_BUNDLE", &ca)],
        Some(&file),
    );
    assert_eq!(r.status, 200, "{}", r.body_text);
    let echo = Echo::parse(r.body_text.as_bytes());
    assert_eq!(echo.method(), "POST");
    assert_eq!(echo.target(), "/echo?lib=requests");
    assert_eq!(echo.body_sha256(), sha256_hex(&data));

    let r = py::fetch(
        "requests",
        &origin.https_url(&format!("/bytes?n={TWO_MIB}")),
        &[("HTTPS_PROXY", &proxy), ("REQUESTS_CA_BUNDLE", &ca)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body_sha256, sha256_hex(&pattern_bytes(TWO_MIB)));
}

#[test]
fn rust_reqwest_through_the_proxy() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();

    let ca = reqwest::Certificate::from_pem(ez.ca_pem().as_bytes()).expect("parse ezthrottle CA");
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(ez.proxy_url()).expect("proxy"))
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (https_status, https_body, http_status) = rt.block_on(async {
        let r = client
            .get(origin.https_url("/echo?client=reqwest"))
            .send()
            .await
            .expect("https request");
        let s = r.status().as_u16();
        let b = r.bytes().await.expect("https body");
        let h = client
            .get(origin.http_url("/status/204"))
            .send()
            .await
            .expect("http request")
            .status()
            .as_u16();
        (s, b, h)
    });
    assert_eq!(https_status, 200);
    assert_eq!(Echo::parse(&https_body).target(), "/echo?client=reqwest");
    assert_eq!(http_status, 204);
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
