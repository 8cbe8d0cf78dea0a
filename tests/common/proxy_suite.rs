//! The forwarding tests every client mode shares, written once: plain HTTP
//! through the proxy (`tests/proxy_http.rs`) and intercepted HTTPS
//! (`tests/proxy_https.rs`) each expand [`proxy_suite!`] with their scheme
//! and client setup, and keep only the tests that are theirs alone (as
//! linkerd2-proxy's `http1_tests!` does).
//!
//! ```ignore
//! common::proxy_suite::proxy_suite! {
//!     // The origin's URL for `path` in this mode.
//!     url: |origin, path| origin.http_url(path),
//!     // curl told of the proxy with `-x`, trusting what the mode needs.
//!     curl: |ez| curl().proxy(ez),
//!     // curl told of the proxy (and the trust) by its environment alone.
//!     curl_env: |ez| curl().env("http_proxy", ez.proxy_url()),
//!     // Python's environment for `lib` (`urllib`, `requests`): the proxy
//!     // variable spelled upper-case, and the trust the mode needs.
//!     py_env: |ez, lib| vec![("HTTP_PROXY".into(), ez.proxy_url())],
//!     // curl's `%{http_connect}`: the proxy's CONNECT answer (0: none).
//!     connect_code: 0,
//! }
//! ```
//!
//! The tests use only `crate::common` paths, so they do not depend on what
//! the invoking file imports.

/// 2 MiB: the size of the uploads and downloads.
pub const TWO_MIB: usize = 2 * 1024 * 1024;

#[allow(unused_macros)] // used by two of the test crates that include `common`
macro_rules! proxy_suite {
    (
        url: |$o:ident, $p:ident| $url:expr,
        curl: |$ez_c:ident| $curl:expr,
        curl_env: |$ez_e:ident| $curl_env:expr,
        py_env: |$ez_p:ident, $lib:ident| $py_env:expr,
        connect_code: $connect_code:expr $(,)?
    ) => {
        /// The origin's URL for `path` in this mode.
        fn mode_url($o: &crate::common::Origin, $p: &str) -> String {
            $url
        }

        /// curl told of the proxy with `-x`.
        fn mode_curl($ez_c: &crate::common::Ezthrottle) -> crate::common::curl::CurlCmd {
            $curl
        }

        /// curl told of the proxy by its environment.
        fn mode_curl_env($ez_e: &crate::common::Ezthrottle) -> crate::common::curl::CurlCmd {
            $curl_env
        }

        /// Python's environment for `lib`, the proxy variable upper-case.
        fn mode_py_env($ez_p: &crate::common::Ezthrottle, $lib: &str) -> Vec<(String, String)> {
            $py_env
        }

        /// `%{http_connect}` of a transfer through the proxy.
        const MODE_CONNECT_CODE: u16 = $connect_code;

        /// `py::fetch` through the proxy with `env`.
        fn mode_py_fetch(
            lib: &str,
            url: &str,
            env: &[(String, String)],
            data_file: Option<&std::path::Path>,
        ) -> crate::common::py::PyFetch {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            crate::common::py::fetch(lib, url, &env, data_file)
        }

        fn mode_start() -> (crate::common::Origin, crate::common::Ezthrottle) {
            let origin = crate::common::Origin::start();
            let ez = crate::common::Ezthrottle::for_origin(&origin).start();
            (origin, ez)
        }

        #[test]
        fn curl_proxy_flag_forwards_status_headers_and_body() {
            let (origin, ez) = mode_start();

            let f = mode_curl(&ez).fetch(&mode_url(&origin, "/headers"));
            f.assert_status(200);
            assert_eq!(f.connect_code, MODE_CONNECT_CODE, "{}", f.describe());
            assert_eq!(f.text(), crate::common::origin::HEADERS_BODY);
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
            assert_eq!(
                f.headers_all("set-cookie"),
                vec!["a=1; Path=/", "b=2; Path=/; HttpOnly"],
                "both Set-Cookie headers must arrive separately and in order: {:?}",
                f.headers
            );
            assert_eq!(origin.count("/headers"), 1);

            // A non-2xx upstream status is passed through as it is.
            let f = mode_curl(&ez).fetch(&mode_url(&origin, "/status/404"));
            f.assert_status(404);
            assert_eq!(f.text(), "{\"status\":404}");
            let f = mode_curl(&ez).fetch(&mode_url(&origin, "/status/201"));
            f.assert_status(201);
        }

        #[test]
        fn curl_proxy_env_var_is_honoured() {
            let (origin, ez) = mode_start();

            let f = mode_curl_env(&ez).fetch(&mode_url(&origin, "/echo?via=env"));
            f.assert_status(200);
            let echo = crate::common::origin::Echo::parse(&f.body);
            assert_eq!(echo.method(), "GET");
            assert_eq!(echo.target(), "/echo?via=env");
            assert_eq!(origin.count("/echo"), 1);

            let f = mode_curl_env(&ez).fetch(&mode_url(&origin, "/headers"));
            f.assert_status(200);
            assert_eq!(f.header("x-custom-one"), Some("alpha"), "{:?}", f.headers);
            assert_eq!(
                f.headers_all("set-cookie"),
                vec!["a=1; Path=/", "b=2; Path=/; HttpOnly"]
            );
            assert_eq!(origin.count("/headers"), 1);
        }

        #[test]
        fn upload_2mib_arrives_intact() {
            let (origin, ez) = mode_start();

            let data = crate::common::upload_bytes(crate::common::proxy_suite::TWO_MIB);
            let f = mode_curl(&ez)
                .upload(&data)
                .fetch(&mode_url(&origin, "/echo"));
            f.assert_status(200);
            let echo = crate::common::origin::Echo::parse(&f.body);
            assert_eq!(echo.method(), "POST");
            assert_eq!(echo.body_len(), crate::common::proxy_suite::TWO_MIB as u64);
            assert_eq!(echo.body_sha256(), crate::common::sha256_hex(&data));
        }

        #[test]
        fn download_2mib_arrives_intact() {
            let (origin, ez) = mode_start();

            let n = crate::common::proxy_suite::TWO_MIB;
            let f = mode_curl(&ez).fetch(&mode_url(&origin, &format!("/bytes?n={n}")));
            f.assert_status(200);
            assert_eq!(f.body.len(), n);
            assert_eq!(
                crate::common::sha256_hex(&f.body),
                crate::common::sha256_hex(&crate::common::pattern_bytes(n))
            );
        }

        #[test]
        fn origin_gets_origin_form_and_no_proxy_headers() {
            let (origin, ez) = mode_start();

            let url = mode_url(&origin, "/echo?a=1&b=two");
            let f = mode_curl(&ez)
                .args(["--proxy-user", "alice:s3cret"])
                .args(["-H", "X-Test-Header: kept"])
                .fetch(&url);
            f.assert_status(200);
            assert_eq!(f.connect_code, MODE_CONNECT_CODE, "{}", f.describe());
            let echo = crate::common::origin::Echo::parse(&f.body);
            assert_eq!(
                echo.target(),
                "/echo?a=1&b=two",
                "the origin must receive an origin-form request target"
            );
            assert_eq!(origin.count("/echo"), 1);
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
            // `origin.test:<port>` of the URL, whichever listener it names:
            // in `Host` over HTTP/1.1, in `:authority` over HTTP/2 (which
            // ezthrottle speaks upstream when the client did, as curl does
            // through an intercepted tunnel).
            let authority = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(authority, _)| authority.to_string());
            let named = match echo.version() {
                "HTTP/2.0" => echo.authority(),
                _ => echo.header("host"),
            };
            assert_eq!(named, authority, "{}", echo.0);
        }

        #[test]
        fn two_requests_over_one_client_connection() {
            let (origin, ez) = mode_start();

            let run = mode_curl(&ez)
                .arg("-v")
                .args(["-o", "/dev/null", "-o", "/dev/null"])
                .args(["-w", "%{http_code} %{num_connects}\\n"])
                .arg(mode_url(&origin, "/echo?first"))
                .arg(mode_url(&origin, "/echo?second"))
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
                "curl did not reuse its connection to the proxy:\n{}",
                run.stderr
            );
            assert_eq!(origin.count("/echo"), 2);
        }

        #[test]
        fn python_urllib_through_proxy_env() {
            let (origin, ez) = mode_start();

            let env = mode_py_env(&ez, "urllib");
            let r = mode_py_fetch("urllib", &mode_url(&origin, "/echo?lib=urllib"), &env, None);
            assert_eq!(r.status, 200, "{}", r.body_text);
            let echo = crate::common::origin::Echo::parse(r.body_text.as_bytes());
            assert_eq!(echo.target(), "/echo?lib=urllib");
            assert!(
                echo.header("user-agent")
                    .unwrap_or_default()
                    .starts_with("Python-urllib"),
                "{:?}",
                echo.headers()
            );
            assert_eq!(origin.count("/echo"), 1);

            // urllib reads the proxy variable in lower case too.
            let lower: Vec<(String, String)> = env
                .into_iter()
                .map(|(k, v)| {
                    if k.ends_with("_PROXY") {
                        (k.to_ascii_lowercase(), v)
                    } else {
                        (k, v)
                    }
                })
                .collect();
            let r = mode_py_fetch("urllib", &mode_url(&origin, "/headers"), &lower, None);
            assert_eq!(r.status, 200, "{}", r.body_text);
            assert_eq!(r.body_text, crate::common::origin::HEADERS_BODY);
            assert_eq!(r.header("x-custom-one"), Some("alpha"));
        }

        #[test]
        fn python_requests_through_proxy_env() {
            let (origin, ez) = mode_start();

            let data = crate::common::upload_bytes(300_000);
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("body.bin");
            std::fs::write(&file, &data).expect("write body");
            let env = mode_py_env(&ez, "requests");
            let r = mode_py_fetch(
                "requests",
                &mode_url(&origin, "/echo?lib=requests"),
                &env,
                Some(&file),
            );
            assert_eq!(r.status, 200, "{}", r.body_text);
            let echo = crate::common::origin::Echo::parse(r.body_text.as_bytes());
            assert_eq!(echo.method(), "POST");
            assert_eq!(echo.target(), "/echo?lib=requests");
            assert_eq!(echo.body_sha256(), crate::common::sha256_hex(&data));

            let n = crate::common::proxy_suite::TWO_MIB;
            let r = mode_py_fetch(
                "requests",
                &mode_url(&origin, &format!("/bytes?n={n}")),
                &env,
                None,
            );
            assert_eq!(r.status, 200);
            assert_eq!(
                r.body_sha256,
                crate::common::sha256_hex(&crate::common::pattern_bytes(n))
            );
        }

        #[test]
        fn rust_reqwest_through_the_proxy() {
            let (origin, ez) = mode_start();

            let ca = reqwest::Certificate::from_pem(ez.ca_pem().as_bytes())
                .expect("parse ezthrottle CA");
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
            let (status, body, http_status) = rt.block_on(async {
                let r = client
                    .get(mode_url(&origin, "/echo?client=reqwest"))
                    .send()
                    .await
                    .expect("request");
                let s = r.status().as_u16();
                let b = r.bytes().await.expect("body");
                let h = client
                    .get(origin.http_url("/status/204"))
                    .send()
                    .await
                    .expect("http request")
                    .status()
                    .as_u16();
                (s, b, h)
            });
            assert_eq!(status, 200);
            assert_eq!(
                crate::common::origin::Echo::parse(&body).target(),
                "/echo?client=reqwest"
            );
            assert_eq!(http_status, 204);
        }
    };
}

pub(crate) use proxy_suite;
