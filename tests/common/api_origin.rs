//! A mutating API on loopback (plain HTTP and TLS) for the idempotency
//! tests: every call gets a fresh serial number, so a replay is told apart
//! from a second real call by its body alone, and the origin counts what it
//! served per path.
//!
//! Query parameters (all optional):
//! - `status=NNN`: answer with that status (default 201);
//! - `delay_ms=N`: hold the answer N ms (the arrival is reported at once);
//! - `pad=N`: add N bytes of padding to the body;
//! - `abort=1`: close the connection without answering;
//! - `fail_first=N&fail_status=NNN`: the first N calls to this path answer
//!   `fail_status` (default 503), later ones answer normally;
//! - `retry_after=S`: send `Retry-After: S` with those failures.
//!
//! The `Via` header of every call is kept per path ([`ApiOrigin::vias`]), so
//! a test can tell which proxy (or region) a call came through.
//!
//! Response headers, in this order: `X-Call`, `Content-Type`, two
//! `Set-Cookie`, `X-Echo-Key` (the request's `Idempotency-Key`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::ca::TestPki;
use super::serve::{Listen, Loopback};
use super::sha256_hex;

struct State {
    calls: AtomicU64,
    per_path: Mutex<HashMap<String, usize>>,
    vias: Mutex<HashMap<String, Vec<String>>>,
    arrivals: mpsc::Sender<String>,
}

pub struct ApiOrigin {
    pub http_addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub pki: TestPki,
    state: Arc<State>,
    arrivals: Mutex<mpsc::Receiver<String>>,
    _server: Loopback,
    _dir: tempfile::TempDir,
}

impl ApiOrigin {
    pub fn start() -> ApiOrigin {
        let dir = tempfile::tempdir().expect("api origin tempdir");
        let pki = TestPki::new(dir.path());
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(State {
            calls: AtomicU64::new(0),
            per_path: Mutex::new(HashMap::new()),
            vias: Mutex::new(HashMap::new()),
            arrivals: tx,
        });
        let st = state.clone();
        let handler = move |req| handle(req, st.clone());
        let server = Loopback::new("api origin");
        let http_addr = server.serve(Listen::plain(), handler.clone());
        let tls_addr = server.serve(pki.listen_tls(), handler);
        ApiOrigin {
            http_addr,
            tls_addr,
            pki,
            state,
            arrivals: Mutex::new(rx),
            _server: server,
            _dir: dir,
        }
    }

    /// `http://<host>:<port><path>`; map `host` to 127.0.0.1 in `[resolve]`.
    pub fn http_url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.http_addr.port())
    }

    /// `https://origin.test:<port><path>` (the name on the TLS certificate).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://origin.test:{}{path}", self.tls_addr.port())
    }

    /// Calls served for `path` (without query), both listeners.
    pub fn count(&self, path: &str) -> usize {
        let m = self.state.per_path.lock().expect("counts");
        m.get(path).copied().unwrap_or(0)
    }

    /// The `Via` header of each call to `path`, in arrival order.
    pub fn vias(&self, path: &str) -> Vec<String> {
        let m = self.state.vias.lock().expect("vias");
        m.get(path).cloned().unwrap_or_default()
    }

    /// All calls served.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Wait (bounded) for the next request to arrive; returns its path.
    pub fn wait_arrival(&self, timeout: Duration) -> String {
        let rx = self.arrivals.lock().expect("arrivals");
        rx.recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no request reached the api origin in {timeout:?}: {e}"))
    }
}

fn param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    })
}

#[derive(Debug)]
struct Abort;
impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("abort requested")
    }
}
impl std::error::Error for Abort {}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, Abort> {
    let path = req.uri().path().to_string();
    let status: u16 = param(&req, "status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(201);
    let delay: u64 = param(&req, "delay_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pad: usize = param(&req, "pad").and_then(|v| v.parse().ok()).unwrap_or(0);
    let abort = param(&req, "abort").is_some();
    let fail_first: usize = param(&req, "fail_first")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fail_status: u16 = param(&req, "fail_status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(503);
    let retry_after = param(&req, "retry_after");
    let via = req
        .headers()
        .get("via")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let method = req.method().to_string();
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let n = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let nth = {
        let mut m = state.per_path.lock().expect("counts");
        let c = m.entry(path.clone()).or_insert(0);
        *c += 1;
        *c
    };
    state
        .vias
        .lock()
        .expect("vias")
        .entry(path.clone())
        .or_default()
        .push(via);
    let failing = nth <= fail_first;
    let status = if failing { fail_status } else { status };
    let _ = state.arrivals.send(path.clone());
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if abort {
        return Err(Abort);
    }
    let value = serde_json::json!({
        "call": n,
        "method": method,
        "path": path,
        "body_len": body.len(),
        "body_sha256": sha256_hex(&body),
        "pad": "p".repeat(pad),
    });
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&value).expect("json"),
    )));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert("x-call", n.to_string().parse().expect("hv"));
    h.insert("content-type", "application/json".parse().expect("hv"));
    h.append("set-cookie", format!("a={n}; Path=/").parse().expect("hv"));
    h.append(
        "set-cookie",
        format!("b={n}; HttpOnly").parse().expect("hv"),
    );
    h.insert(
        "x-echo-key",
        key.parse().unwrap_or_else(|_| "?".parse().expect("hv")),
    );
    if let (true, Some(after)) = (failing, retry_after) {
        h.insert("retry-after", after.parse().expect("hv"));
    }
    Ok(resp)
}
