//! Python clients (`urllib`, `requests`, `ssl`) driven through `tests/py/`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::proc::{run, show};
use super::{py_script, python, CLIENT_TIMEOUT};

/// What a Python client run starts without (see [`super::CLIENT_ENV`]).
pub const CLEARED_ENV: &[&str] = super::CLIENT_ENV;

fn base(script: &str) -> Command {
    let mut cmd = Command::new(python());
    for k in CLEARED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd.arg(py_script(script));
    cmd
}

/// What `tests/py/fetch.py` reported.
#[derive(Debug)]
pub struct PyFetch {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
    pub body_text: String,
}

impl PyFetch {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Fetch `url` with Python `lib` ("urllib" or "requests"); proxies and CA
/// trust only through `env`. Panics with the script's output on a transport
/// error, and with a pointer to `scripts/test` if `requests` is missing.
pub fn fetch(lib: &str, url: &str, env: &[(&str, &str)], data_file: Option<&Path>) -> PyFetch {
    let mut cmd = base("fetch.py");
    cmd.arg("--lib").arg(lib);
    if let Some(f) = data_file {
        cmd.arg("--method").arg("POST").arg("--data-file").arg(f);
    }
    cmd.arg(url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "Python `{lib}` is not available to {} (EZT_PYTHON={:?}). Run the tests \
             through scripts/test, which creates a venv with `requests` and sets \
             EZT_PYTHON.\n{}",
            python(),
            std::env::var("EZT_PYTHON").ok(),
            show(&out)
        ),
        _ => panic!("python {lib} fetch of {url} failed:\n{}", show(&out)),
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fetch.py printed no JSON ({e}):\n{}", show(&out)));
    PyFetch {
        status: v["status"].as_u64().expect("status") as u16,
        headers: v["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body_len: v["body_len"].as_u64().expect("body_len"),
        body_sha256: v["body_sha256"].as_str().expect("sha").to_string(),
        body_text: v["body_text"].as_str().unwrap_or_default().to_string(),
    }
}

/// CONNECT through `proxy` to `target` ("host:port") and handshake TLS
/// trusting only `cafile`; returns the JSON report of `tests/py/peer_cert.py`
/// (`ok`, `peer_issuer`, `peer_subject`, `san`, `ca_subject`, `error`).
pub fn peer_cert(proxy: SocketAddr, target: &str, cafile: &Path) -> serde_json::Value {
    let mut cmd = base("peer_cert.py");
    cmd.arg(proxy.to_string()).arg(target).arg(cafile);
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    assert!(out.status.success(), "peer_cert.py failed:\n{}", show(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("peer_cert.py printed no JSON ({e}):\n{}", show(&out)))
}

/// Run inline Python `code` with `args` and `env` (proxy/CA variables
/// cleared first); returns its stdout. Panics with the output on failure.
pub fn run_script(code: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(python());
    for k in CLEARED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd.arg("-c").arg(code).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, CLIENT_TIMEOUT);
    if !out.status.success() {
        panic!("python script failed:\n{}", show(&out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The interpreter of `.venv-sdk` (the unmodified `ezthrottle==1.3.0` SDK
/// from PyPI), from `EZT_SDK_PYTHON`. Never silently skipped: without it a
/// test that needs the SDK fails, saying how to get it.
pub fn sdk_python() -> String {
    match std::env::var("EZT_SDK_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "EZT_SDK_PYTHON is not set: these tests drive the real PyPI SDK \
             (ezthrottle==1.3.0). Run them through scripts/test, which creates .venv-sdk \
             and exports EZT_SDK_PYTHON, or set it yourself, e.g. \
             EZT_SDK_PYTHON=$PWD/.venv-sdk/bin/python cargo test"
        ),
    }
}

/// `tests/py/quota_clients.py`: `clients` threads calling `url` back to
/// back for `seconds` (through `proxy` when given), credentials handed out
/// in turn. Returns its JSON report (`statuses`, `errors`, `sent`).
pub fn quota_clients(
    url: &str,
    clients: usize,
    seconds: f64,
    proxy: Option<&str>,
    credentials: &[&str],
) -> serde_json::Value {
    let mut cmd = base("quota_clients.py");
    cmd.arg("--url")
        .arg(url)
        .arg("--clients")
        .arg(clients.to_string())
        .arg("--seconds")
        .arg(seconds.to_string());
    if let Some(p) = proxy {
        cmd.arg("--proxy").arg(p);
    }
    for c in credentials {
        cmd.arg("--credential").arg(c);
    }
    // Requests still queued at the deadline finish after it.
    let out = run(
        &mut cmd,
        std::time::Duration::try_from_secs_f64(seconds).unwrap_or_default()
            + std::time::Duration::from_secs(180),
    );
    assert!(
        out.status.success(),
        "quota_clients.py failed:\n{}",
        show(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("quota_clients.py printed no JSON ({e}):\n{}", show(&out)))
}
