//! Shared harness for the black-box tests: the real `ezthrottle` binary,
//! real origin servers (plain and TLS) on loopback, real clients (curl,
//! Python) and a raw HTTP/1.1 client for the cases clients refuse to send.
//!
//! Every wait in here is bounded: a hung proxy fails a test, it never hangs it.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod api_origin;
pub mod ca;
pub mod curl;
pub mod exchange_origin;
pub mod harness;
pub mod limit_origin;
pub mod metrics;
pub mod on_their_way;
pub mod origin;
pub mod proc;
pub mod proxy_suite;
pub mod py;
pub mod quota_origin;
pub mod raw;
pub mod ready;
// Not `mod redis`: that would shadow the `redis` crate in `use common::*` files.
#[path = "redis.rs"]
pub mod redis_server;
pub mod secret_origin;
pub mod serve;
pub mod webhook_sink;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use curl::{curl, Fetch};
pub use harness::{ezthrottle_cmd, EzBuilder, Ezthrottle, SharedCa};
pub use origin::Origin;
pub use raw::{RawConn, RawResponse};
pub use redis_server::{RedisOptions, RedisServer};

/// Default bound for one client call (curl, python, raw request).
/// Every variable a client (or the binary) might read for proxies or CA
/// trust: cleared before each run, so only what a test sets is in effect.
pub const CLIENT_ENV: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "grpc_proxy",
    "no_grpc_proxy",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "NODE_USE_ENV_PROXY",
    "NODE_OPTIONS",
    "PYTHONPATH",
];

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A loopback port that was free a moment ago (bind :0, read, drop).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A loopback address nothing listens on (a port that was just freed).
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The deterministic byte pattern the origin's `/bytes?n=N` serves.
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Pseudo-random but reproducible bytes for uploads (different from the
/// download pattern so a mix-up cannot pass).
pub fn upload_bytes(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// The Python interpreter the tests use: `EZT_PYTHON` (set by `scripts/test`
/// to a venv with `requests`), else `python3`.
pub fn python() -> String {
    std::env::var("EZT_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

/// Path of a helper script in `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
        .join(name)
}

/// Quote a string for TOML (JSON string escaping is valid TOML basic-string
/// escaping for everything we write).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to json")
}

/// Poll `check` until it returns `Some`, at most `timeout`. Only for state that
/// offers no event to await (e.g. a metric recorded after the response was
/// sent); the poll is bounded and fails loudly.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parse a JSON body, with the body in the panic message if it is not JSON.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(2000)])
        )
    })
}

/// `error.code` of a SPEC §8 error body (panics with the body if absent).
pub fn error_code(body: &[u8]) -> String {
    let v = json(body);
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {v}"))
        .to_string()
}

/// `error.message` of a SPEC §8 error body.
pub fn error_message(body: &[u8]) -> String {
    let v = json(body);
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message in {v}"))
        .to_string()
}
