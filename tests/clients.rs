//! The README's client table, row by row, with the real clients: curl,
//! Python `urllib`, `requests`, `httpx`, `aiohttp`, Node's global `fetch`
//! (plain, and with undici's `EnvHttpProxyAgent`) and Go `net/http`, each
//! configured only through the environment variables the README names, for
//! an `http://` URL and an intercepted `https://` URL. "Through the proxy"
//! means the origin saw our `Via` hop and the proxy lists the domain.
//!
//! The documented pitfalls are asserted too, as pitfalls: curl ignores an
//! upper-case `HTTP_PROXY` for `http://` URLs, Node < 24 ignores
//! `NODE_USE_ENV_PROXY` (its `fetch` reads no proxy variable), `aiohttp`
//! without `trust_env=True` reads none, and Go never proxies a loopback
//! target: each of those requests reaches the origin directly, with no
//! `Via`, unthrottled.
//!
//! Every client must be present (scripts/test installs them); a missing one
//! fails its test saying how to get it, it is never skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::harness::control_get;
use common::origin::Echo;
use common::proc::{run, show};
use common::{curl, py_script, python, Ezthrottle, Origin, CLIENT_TIMEOUT};

/// An origin and a proxy that resolves `origin.test` to it and allows
/// CONNECT to both its ports (undici's `EnvHttpProxyAgent` tunnels `http://`
/// URLs too, with `CONNECT host:port`).
struct Rig {
    origin: Origin,
    ez: Ezthrottle,
    /// The README's combined bundle: system roots + the ezthrottle CA.
    bundle: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        let origin = Origin::start();
        let ez = Ezthrottle::for_origin(&origin)
            .connect_port(origin.http_addr.port())
            .start();
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("ca-bundle.pem");
        // `cat /etc/ssl/certs/ca-certificates.crt ezthrottle-ca.pem > ca-bundle.pem`
        let mut pem =
            std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        if !pem.is_empty() && !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&ez.ca_pem());
        std::fs::write(&bundle, pem).expect("write ca-bundle.pem");
        Rig {
            origin,
            ez,
            bundle,
            _dir: dir,
        }
    }

    fn proxy(&self) -> String {
        self.ez.proxy_url()
    }

    fn ca(&self) -> String {
        self.ez.ca_path.to_string_lossy().into_owned()
    }

    fn bundle(&self) -> String {
        self.bundle.to_string_lossy().into_owned()
    }

    /// `http://origin.test:<port>/echo?<tag>`
    fn http_url(&self, tag: &str) -> String {
        self.origin.http_url(&format!("/echo?{tag}"))
    }

    /// `https://origin.test:<tlsport>/echo?<tag>`
    fn https_url(&self, tag: &str) -> String {
        self.origin.https_url(&format!("/echo?{tag}"))
    }

    /// `http://127.0.0.1:<port>/echo?<tag>`: reachable without the proxy.
    fn loopback_url(&self, tag: &str) -> String {
        format!("http://{}/echo?{tag}", self.origin.http_addr)
    }

    /// The client's answer came from the origin through the proxy: status
    /// 200, the origin's echo of `/echo?<tag>` carrying our `Via` hop, and
    /// the proxy lists the domain.
    fn assert_through(&self, client: &str, tag: &str, answer: &Answer) {
        let echo = answer.echo(client, tag);
        let via = echo.header("via").unwrap_or_default();
        assert!(
            via.contains("ezthrottle"),
            "{client}: the request for /echo?{tag} reached the origin WITHOUT going through \
             the proxy (no `Via: 1.1 ezthrottle-…`, got {via:?}): the client ignored its proxy \
             variables\n{:?}",
            echo.headers()
        );
        let domains = control_get(&self.ez, "/api/v1/domains");
        assert!(
            domains.contains("\"origin.test"),
            "{client}: /api/v1/domains does not list origin.test: {domains}"
        );
    }

    /// The documented pitfall: the client's request reached the origin
    /// directly (no `Via` from us) and the proxy never heard of it, so it
    /// was never throttled.
    fn assert_direct(&self, client: &str, tag: &str, answer: &Answer) {
        let echo = answer.echo(client, tag);
        assert_eq!(
            echo.header("via"),
            None,
            "{client}: expected the request to go DIRECT (the documented pitfall), but it \
             came through a proxy: {:?}",
            echo.headers()
        );
        let domains = control_get(&self.ez, "/api/v1/domains");
        assert!(
            !domains.contains("origin.test") && !domains.contains("127.0.0.1"),
            "{client}: the proxy saw the request: {domains}"
        );
    }
}

/// What a client script printed: `{status, body}` or `{error}`.
struct Answer {
    status: u16,
    body: String,
    out: String,
}

impl Answer {
    /// Parse the one-line JSON report of a client script (exit 0 only).
    fn from_output(client: &str, out: &Output, missing_hint: &str) -> Answer {
        match out.status.code() {
            Some(0) => {}
            Some(3) => panic!("{client} is not available: {missing_hint}\n{}", show(out)),
            _ => panic!("{client} failed:\n{}", show(out)),
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{client} printed no JSON ({e}):\n{}", show(out)));
        Answer {
            status: v["status"].as_u64().unwrap_or(0) as u16,
            body: v["body"].as_str().unwrap_or_default().to_string(),
            out: show(out),
        }
    }

    fn echo(&self, client: &str, tag: &str) -> Echo {
        assert_eq!(self.status, 200, "{client}: {}", self.out);
        let echo = Echo::parse(self.body.as_bytes());
        assert_eq!(echo.target(), format!("/echo?{tag}"), "{client}");
        echo
    }
}

fn clean(cmd: &mut Command, env: &[(&str, &str)]) {
    for k in common::CLIENT_ENV.iter().chain(&["REQUEST_METHOD"]) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
}

// ---- clients -------------------------------------------------------------------

fn curl_answer(f: &common::Fetch) -> Answer {
    assert_eq!(f.exit, 0, "curl failed: {}", f.describe());
    Answer {
        status: f.code,
        body: f.text(),
        out: f.describe(),
    }
}

/// `tests/py/env_client.py --lib LIB URL` with exactly `env`.
fn python_client(lib: &str, url: &str, env: &[(&str, &str)]) -> Answer {
    let mut cmd = Command::new(python());
    clean(&mut cmd, env);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(py_script("env_client.py"))
        .arg("--lib")
        .arg(lib)
        .arg(url);
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    let hint = format!(
        "run the tests through scripts/test, which installs requests, httpx and aiohttp into \
         .venv and sets EZT_PYTHON (now {:?}, interpreter {})",
        std::env::var("EZT_PYTHON").ok(),
        python()
    );
    Answer::from_output(&format!("python {lib}"), &out, &hint)
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// Node's (major, minor) version (panics, saying how to install it,
/// without node).
fn node_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new("node")
            .arg("--version")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "`node` is not on PATH ({e}): run scripts/test, which installs Debian's \
                 `nodejs npm` packages, or install Node 18+ yourself"
                )
            });
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut parts = v.trim_start_matches('v').split('.').map(|p| p.parse().ok());
        let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
            panic!("cannot read `node --version`: {v:?}")
        };
        assert!(
            major >= 18,
            "node {v} is too old: the README's Node row (undici EnvHttpProxyAgent) needs 18+"
        );
        (major, minor)
    })
}

/// Whether this Node's own `fetch` honours `NODE_USE_ENV_PROXY=1`: from
/// Node 24.0, and 22.21 on the 22 line (backport); silently ignored before.
fn node_reads_use_env_proxy() -> bool {
    let (major, minor) = node_version();
    major >= 24 || (major == 22 && minor >= 21)
}

/// `node tests/node/fetch.mjs MODE URL` with exactly `env`.
fn node_client(mode: &str, url: &str, env: &[(&str, &str)]) -> Answer {
    node_version();
    let mut cmd = Command::new("node");
    clean(&mut cmd, env);
    cmd.current_dir(node_dir())
        .arg("--no-warnings")
        .arg("fetch.mjs")
        .arg(mode)
        .arg(url);
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    Answer::from_output(
        &format!("node fetch ({mode})"),
        &out,
        "run scripts/test, which runs `npm ci` in tests/node, or run it yourself: \
         npm ci --prefix tests/node",
    )
}

/// The Go client (`tests/go/main.go`), built once per test run into the
/// target dir with a private build cache (works as root and offline).
fn go_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-client");
        std::fs::create_dir_all(&tmp).expect("create go-client dir");
        let bin = tmp.join("ezt-go-client");
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go/main.go");
        let mut cmd = Command::new("go");
        clean(&mut cmd, &[]);
        cmd.env("GOCACHE", tmp.join("cache"))
            .env("GOPATH", tmp.join("gopath"))
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(&src);
        let what = format!("{cmd:?}");
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!(
                "`go` is not on PATH ({e}): run scripts/test, which installs Debian's \
                 `golang-go`, or install Go yourself ({what})"
            ),
        };
        assert!(out.status.success(), "go build failed:\n{}", show(&out));
        bin
    })
}

/// The Go client fetching `url` with exactly `env`.
fn go_client(url: &str, env: &[(&str, &str)]) -> Answer {
    let mut cmd = Command::new(go_binary());
    clean(&mut cmd, env);
    cmd.arg(url);
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    Answer::from_output("go net/http", &out, "")
}

// ---- curl ------------------------------------------------------------------------

/// curl reads lower-case `http_proxy` for `http://` URLs and `HTTPS_PROXY`
/// (either case) for `https://`; CA from `CURL_CA_BUNDLE` or `--cacert`.
#[test]
fn curl_lower_case_http_proxy_and_upper_case_https_proxy() {
    let rig = Rig::start();

    let f = curl()
        .env("http_proxy", rig.proxy())
        .fetch(&rig.http_url("curl-http"));
    rig.assert_through("curl http_proxy", "curl-http", &curl_answer(&f));

    let f = curl()
        .env("HTTPS_PROXY", rig.proxy())
        .env("CURL_CA_BUNDLE", rig.ca())
        .fetch(&rig.https_url("curl-https"));
    rig.assert_through("curl HTTPS_PROXY", "curl-https", &curl_answer(&f));

    let f = curl()
        .env("https_proxy", rig.proxy())
        .cacert(&rig.ez.ca_path)
        .fetch(&rig.https_url("curl-https-lower"));
    rig.assert_through(
        "curl https_proxy --cacert",
        "curl-https-lower",
        &curl_answer(&f),
    );
}

/// The pitfall: curl ignores upper-case `HTTP_PROXY` (httpoxy) and fetches
/// an `http://` URL directly, unthrottled.
#[test]
fn curl_ignores_upper_case_http_proxy_for_http_urls() {
    let rig = Rig::start();
    let port = rig.origin.http_addr.port();
    let f = curl()
        .env("HTTP_PROXY", rig.proxy())
        // Lets curl reach origin.test on its own, as a real host would be.
        .arg("--resolve")
        .arg(format!("origin.test:{port}:127.0.0.1"))
        .fetch(&rig.http_url("curl-upper"));
    rig.assert_direct("curl HTTP_PROXY", "curl-upper", &curl_answer(&f));
}

// ---- Python ------------------------------------------------------------------------
//
// urllib, requests, httpx and aiohttp(trust_env=True) read both cases of
// HTTP_PROXY / HTTPS_PROXY / NO_PROXY (lower case wins when both are set).
// Each test uses upper case for one scheme and lower case for the other.

#[test]
fn python_urllib_reads_both_cases_and_ssl_cert_file() {
    let rig = Rig::start();
    let (proxy, bundle) = (rig.proxy(), rig.bundle());
    let a = python_client(
        "urllib",
        &rig.http_url("urllib-http"),
        &[("HTTP_PROXY", &proxy)],
    );
    rig.assert_through("urllib HTTP_PROXY", "urllib-http", &a);
    let a = python_client(
        "urllib",
        &rig.https_url("urllib-https"),
        &[("https_proxy", &proxy), ("SSL_CERT_FILE", &bundle)],
    );
    rig.assert_through("urllib https_proxy", "urllib-https", &a);
}

#[test]
fn python_requests_reads_both_cases_and_requests_ca_bundle() {
    let rig = Rig::start();
    let (proxy, ca) = (rig.proxy(), rig.ca());
    let a = python_client(
        "requests",
        &rig.http_url("requests-http"),
        &[("http_proxy", &proxy)],
    );
    rig.assert_through("requests http_proxy", "requests-http", &a);
    let a = python_client(
        "requests",
        &rig.https_url("requests-https"),
        &[("HTTPS_PROXY", &proxy), ("REQUESTS_CA_BUNDLE", &ca)],
    );
    rig.assert_through("requests HTTPS_PROXY", "requests-https", &a);
}

#[test]
fn python_httpx_reads_both_cases_and_ssl_cert_file() {
    let rig = Rig::start();
    let (proxy, bundle) = (rig.proxy(), rig.bundle());
    let a = python_client(
        "httpx",
        &rig.http_url("httpx-http"),
        &[("HTTP_PROXY", &proxy)],
    );
    rig.assert_through("httpx HTTP_PROXY", "httpx-http", &a);
    let a = python_client(
        "httpx",
        &rig.https_url("httpx-https"),
        &[("https_proxy", &proxy), ("SSL_CERT_FILE", &bundle)],
    );
    rig.assert_through("httpx https_proxy", "httpx-https", &a);
}

#[test]
fn python_aiohttp_with_trust_env_reads_both_cases_and_ssl_cert_file() {
    let rig = Rig::start();
    let (proxy, bundle) = (rig.proxy(), rig.bundle());
    let a = python_client(
        "aiohttp",
        &rig.http_url("aiohttp-http"),
        &[("http_proxy", &proxy)],
    );
    rig.assert_through("aiohttp(trust_env) http_proxy", "aiohttp-http", &a);
    let a = python_client(
        "aiohttp",
        &rig.https_url("aiohttp-https"),
        &[("HTTPS_PROXY", &proxy), ("SSL_CERT_FILE", &bundle)],
    );
    rig.assert_through("aiohttp(trust_env) HTTPS_PROXY", "aiohttp-https", &a);
}

/// The pitfall: `aiohttp.ClientSession()` without `trust_env=True` reads no
/// proxy variable and goes direct.
#[test]
fn python_aiohttp_without_trust_env_goes_direct() {
    let rig = Rig::start();
    let proxy = rig.proxy();
    let a = python_client(
        "aiohttp-default",
        &rig.loopback_url("aiohttp-default"),
        &[("HTTP_PROXY", &proxy), ("http_proxy", &proxy)],
    );
    rig.assert_direct("aiohttp without trust_env", "aiohttp-default", &a);
}

// ---- Node ------------------------------------------------------------------------

/// undici's `EnvHttpProxyAgent` (npm `undici`) as the global dispatcher:
/// global `fetch` then reads `http_proxy`/`HTTP_PROXY` and
/// `https_proxy`/`HTTPS_PROXY`; it tunnels `http://` URLs with
/// `CONNECT host:port` too. CA from `NODE_EXTRA_CA_CERTS`.
#[test]
fn node_fetch_with_undici_env_http_proxy_agent() {
    let rig = Rig::start();
    let (proxy, ca) = (rig.proxy(), rig.ca());
    let a = node_client(
        "env-agent",
        &rig.http_url("node-http"),
        &[("http_proxy", &proxy)],
    );
    rig.assert_through("node EnvHttpProxyAgent http_proxy", "node-http", &a);
    let a = node_client(
        "env-agent",
        &rig.https_url("node-https"),
        &[("HTTPS_PROXY", &proxy), ("NODE_EXTRA_CA_CERTS", &ca)],
    );
    rig.assert_through("node EnvHttpProxyAgent HTTPS_PROXY", "node-https", &a);
}

/// The pitfall: Node's own `fetch` reads no proxy variable, and before
/// Node 24 (22.21 on the 22 line) `NODE_USE_ENV_PROXY=1` is silently
/// ignored: the request goes direct, unthrottled. (Where the variable is
/// supported, it makes the request go through the proxy.)
#[test]
fn node_fetch_without_agent_ignores_proxy_variables_before_node_24() {
    let rig = Rig::start();
    let (proxy, ca) = (rig.proxy(), rig.ca());
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("NODE_USE_ENV_PROXY", "1"),
        ("NODE_EXTRA_CA_CERTS", ca.as_str()),
    ];
    let (major, minor) = node_version();
    let client = format!("node {major}.{minor} fetch with NODE_USE_ENV_PROXY=1");
    if node_reads_use_env_proxy() {
        let a = node_client("plain", &rig.http_url("node-plain"), &env);
        rig.assert_through(&client, "node-plain", &a);
    } else {
        let a = node_client("plain", &rig.loopback_url("node-plain"), &env);
        rig.assert_direct(&client, "node-plain", &a);
    }
}

// ---- Go ----------------------------------------------------------------------------

/// Go's `http.ProxyFromEnvironment` (the default transport) reads
/// `HTTP_PROXY`/`http_proxy`, `HTTPS_PROXY`/`https_proxy` and `NO_PROXY`;
/// CA from `SSL_CERT_FILE` (which replaces the system roots).
#[test]
fn go_net_http_reads_both_cases_and_ssl_cert_file() {
    let rig = Rig::start();
    let (proxy, bundle) = (rig.proxy(), rig.bundle());
    let a = go_client(&rig.http_url("go-http"), &[("HTTP_PROXY", &proxy)]);
    rig.assert_through("go HTTP_PROXY", "go-http", &a);
    let a = go_client(
        &rig.https_url("go-https"),
        &[("https_proxy", &proxy), ("SSL_CERT_FILE", &bundle)],
    );
    rig.assert_through("go https_proxy", "go-https", &a);
}

/// The pitfall: Go never proxies a request to `localhost` or a loopback IP,
/// whatever the variables say: it goes direct.
#[test]
fn go_net_http_never_proxies_loopback_targets() {
    let rig = Rig::start();
    let proxy = rig.proxy();
    let a = go_client(
        &rig.loopback_url("go-loopback"),
        &[("HTTP_PROXY", &proxy), ("http_proxy", &proxy)],
    );
    rig.assert_direct("go to 127.0.0.1", "go-loopback", &a);
}
