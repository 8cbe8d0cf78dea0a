//! The origin server the proxy talks to: hyper 1 on 127.0.0.1, plain HTTP
//! and TLS (tokio-rustls, leaf signed by a throwaway test CA; HTTP/2 or
//! HTTP/1.1 as the client picks in ALPN).
//!
//! Routes:
//! - `/echo`: JSON `{method, target, authority, path, version, headers:
//!   [[name, value]..], body_len, body_sha256}`; `target` is the request
//!   target exactly as received on the wire (origin-form `/p?q`, or
//!   absolute-form if a proxy wrongly forwarded it); `authority` is HTTP/2's
//!   `:authority` (null over HTTP/1.1, which has `Host`).
//! - `/bytes?n=N`: N bytes of `i % 251`.
//! - `/slow?ms=N`: tells the test (channel) when the request ARRIVES, answers
//!   `slow done` after N ms.
//! - `/status/NNN`: that status, body `{"status":NNN}`.
//! - `/headers`: several custom response headers incl. two `Set-Cookie`.
//!
//! Every request is counted per path (without query).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::ca::TestPki;
use super::serve::{Listen, Loopback};
use super::{pattern_bytes, sha256_hex};

/// Body of `/headers`.
pub const HEADERS_BODY: &str = "headers ok";
/// Body of `/slow`.
pub const SLOW_BODY: &str = "slow done";

struct OriginState {
    counts: Mutex<HashMap<String, usize>>,
    arrivals: mpsc::Sender<String>,
}

pub struct Origin {
    /// Plain HTTP listener.
    pub http_addr: SocketAddr,
    /// TLS listener (certificate for `origin.test`, `127.0.0.1`...).
    pub tls_addr: SocketAddr,
    pub pki: TestPki,
    state: Arc<OriginState>,
    arrivals: Mutex<mpsc::Receiver<String>>,
    _server: Loopback,
    _dir: tempfile::TempDir,
}

impl Origin {
    /// Start both listeners on ephemeral loopback ports (own runtime, so the
    /// blocking test thread never starves it).
    pub fn start() -> Origin {
        let dir = tempfile::tempdir().expect("origin tempdir");
        let pki = TestPki::new(dir.path());
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(OriginState {
            counts: Mutex::new(HashMap::new()),
            arrivals: tx,
        });
        let st = state.clone();
        let handler = move |req| handle(req, st.clone());
        let server = Loopback::new("origin");
        let http_addr = server.serve(Listen::plain(), handler.clone());
        // h2 for the clients that offer it (ezthrottle does for requests
        // that arrived over HTTP/2), HTTP/1.1 for the rest.
        let tls_addr = server.serve(pki.listen_tls().h2(), handler);

        Origin {
            http_addr,
            tls_addr,
            pki,
            state,
            arrivals: Mutex::new(rx),
            _server: server,
            _dir: dir,
        }
    }

    /// `http://origin.test:<port><path>`
    pub fn http_url(&self, path: &str) -> String {
        format!("http://origin.test:{}{}", self.http_addr.port(), path)
    }

    /// `https://origin.test:<tlsport><path>`
    pub fn https_url(&self, path: &str) -> String {
        format!("https://origin.test:{}{}", self.tls_addr.port(), path)
    }

    /// How many requests arrived for `path` (without query), both listeners.
    pub fn count(&self, path: &str) -> usize {
        let counts = self.state.counts.lock().expect("counts lock");
        counts.get(path).copied().unwrap_or(0)
    }

    /// Wait (bounded) for the next `/slow` request to arrive; returns its target.
    pub fn wait_slow_arrival(&self, timeout: Duration) -> String {
        let rx = self.arrivals.lock().expect("arrivals lock");
        rx.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!("no /slow request reached the origin within {timeout:?}: {e}")
        })
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    })
}

fn respond(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<OriginState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    {
        let mut counts = state.counts.lock().expect("counts lock");
        *counts.entry(path.clone()).or_insert(0) += 1;
    }
    // HTTP/1.1: the request target as written (absolute-form would be a
    // proxy bug). HTTP/2 has no request line: `:path` is the target, and
    // hyper folds `:scheme` and `:authority` into the URI.
    let target = if req.version() == hyper::Version::HTTP_2 {
        req.uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default()
    } else {
        req.uri().to_string()
    };

    if path == "/slow" {
        let ms: u64 = query_param(&req, "ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let _ = state.arrivals.send(target);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(respond(200, SLOW_BODY));
    }
    if path == "/bytes" {
        let n: usize = query_param(&req, "n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut resp = respond(200, pattern_bytes(n));
        resp.headers_mut().insert(
            "content-type",
            "application/octet-stream".parse().expect("hv"),
        );
        return Ok(resp);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let mut resp = respond(code, format!("{{\"status\":{code}}}"));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("hv"));
        return Ok(resp);
    }
    if path == "/headers" {
        let mut resp = respond(200, HEADERS_BODY);
        let h = resp.headers_mut();
        h.insert("x-custom-one", "alpha".parse().expect("hv"));
        h.insert("x-custom-two", "beta; gamma=1".parse().expect("hv"));
        h.append("set-cookie", "a=1; Path=/".parse().expect("hv"));
        h.append("set-cookie", "b=2; Path=/; HttpOnly".parse().expect("hv"));
        h.insert("cache-control", "no-store".parse().expect("hv"));
        return Ok(resp);
    }
    if path == "/echo" {
        let method = req.method().to_string();
        // HTTP/2's `:authority` (HTTP/1.1 names the authority in `Host`).
        let authority = req.uri().authority().map(|a| a.to_string());
        let version = format!("{:?}", req.version());
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(respond(400, format!("body read failed: {e}"))),
        };
        let value = serde_json::json!({
            "method": method,
            "target": target,
            "authority": authority,
            "path": path,
            "version": version,
            "headers": headers,
            "body_len": body.len(),
            "body_sha256": sha256_hex(&body),
        });
        let mut resp = respond(200, serde_json::to_vec(&value).expect("json"));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("hv"));
        return Ok(resp);
    }
    Ok(respond(404, "not found"))
}

/// The echo JSON, parsed, with helpers.
pub struct Echo(pub serde_json::Value);

impl Echo {
    pub fn parse(body: &[u8]) -> Echo {
        Echo(super::json(body))
    }
    pub fn method(&self) -> &str {
        self.0["method"].as_str().expect("method")
    }
    /// The HTTP version the request arrived in (`HTTP/1.1`, `HTTP/2.0`).
    pub fn version(&self) -> &str {
        self.0["version"].as_str().expect("version")
    }
    /// Request target as received on the wire.
    pub fn target(&self) -> &str {
        self.0["target"].as_str().expect("target")
    }
    /// The `:authority` of an HTTP/2 request (`None` over HTTP/1.1: see
    /// the `Host` header).
    pub fn authority(&self) -> Option<String> {
        self.0["authority"].as_str().map(str::to_string)
    }
    pub fn body_len(&self) -> u64 {
        self.0["body_len"].as_u64().expect("body_len")
    }
    pub fn body_sha256(&self) -> &str {
        self.0["body_sha256"].as_str().expect("body_sha256")
    }
    /// All (lower-case name, value) pairs as received.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.0["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|p| {
                (
                    p[0].as_str().expect("name").to_string(),
                    p[1].as_str().expect("value").to_string(),
                )
            })
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}
