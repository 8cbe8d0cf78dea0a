//! An API that states its own limits: a plain-HTTP origin on loopback whose
//! responses carry whatever rate-limit headers the query asks for, and that
//! records, per `Host`, when each request arrived and left and how many were
//! in progress at once (its peak concurrency).
//!
//! Query parameters (all optional):
//! - `delay_ms=N`: hold the request N ms before answering;
//! - `status=NNN`: answer with that status (default 200);
//! - `h=Name:Value`: add a response header (repeatable; values are sent
//!   verbatim so tests can send garbage like `NaN`);
//! - `id=X`: a label recorded with the arrival (to tell requests apart).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Visit {
    pub host: String,
    pub id: String,
    pub arrived: Instant,
    pub left: Option<Instant>,
}

#[derive(Default)]
struct HostStats {
    current: usize,
    peak: usize,
}

#[derive(Default)]
struct State {
    visits: Vec<Visit>,
    hosts: HashMap<String, HostStats>,
}

pub struct LimitOrigin {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrivals: Mutex<mpsc::Receiver<String>>,
    _server: super::serve::Loopback,
}

impl LimitOrigin {
    pub fn start() -> LimitOrigin {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = mpsc::channel();
        let st = state.clone();
        let server = super::serve::Loopback::new("limit origin");
        let addr = server.serve(super::serve::Listen::plain(), move |req| {
            handle(req, st.clone(), tx.clone())
        });
        LimitOrigin {
            addr,
            state,
            arrivals: Mutex::new(rx),
            _server: server,
        }
    }

    /// `http://<host>:<port><path_and_query>`; `host` must be mapped to
    /// 127.0.0.1 in the proxy's `[resolve]`.
    pub fn url(&self, host: &str, path_and_query: &str) -> String {
        format!("http://{host}:{}{path_and_query}", self.addr.port())
    }

    /// Visits to `host`, in arrival order.
    pub fn visits(&self, host: &str) -> Vec<Visit> {
        let st = self.state.lock().expect("state");
        st.visits
            .iter()
            .filter(|v| v.host == host)
            .cloned()
            .collect()
    }

    pub fn count(&self, host: &str) -> usize {
        self.visits(host).len()
    }

    pub fn peak(&self, host: &str) -> usize {
        let st = self.state.lock().expect("state");
        st.hosts.get(host).map(|h| h.peak).unwrap_or(0)
    }

    /// Wait (bounded) for the next request to arrive; returns its `id`.
    pub fn wait_arrival(&self, timeout: Duration) -> String {
        let rx = self.arrivals.lock().expect("arrivals");
        rx.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!("no request reached the limit origin within {timeout:?}: {e}")
        })
    }

    /// Gaps between consecutive arrivals at `host`.
    pub fn gaps(&self, host: &str) -> Vec<Duration> {
        let v = self.visits(host);
        v.windows(2).map(|w| w[1].arrived - w[0].arrived).collect()
    }
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    arrivals: mpsc::Sender<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase())
        .unwrap_or_default();
    let q = query_pairs(req.uri().query().unwrap_or(""));
    // Read the request body like a real API: hyper closes a connection whose
    // request body was left unread, which would make every pooled
    // connection to this origin stale.
    let _ = req.into_body().collect().await;
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let id = get("id").unwrap_or_default();
    let index = {
        let mut st = state.lock().expect("state");
        let h = st.hosts.entry(host.clone()).or_default();
        h.current += 1;
        h.peak = h.peak.max(h.current);
        st.visits.push(Visit {
            host: host.clone(),
            id: id.clone(),
            arrived: Instant::now(),
            left: None,
        });
        st.visits.len() - 1
    };
    let _ = arrivals.send(id.clone());
    if let Some(ms) = get("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    let mut resp = Response::builder().status(status);
    for (k, v) in &q {
        if k == "h" {
            if let Some((name, value)) = v.split_once(':') {
                resp = resp.header(name.trim(), value.trim());
            }
        }
    }
    {
        let mut st = state.lock().expect("state");
        if let Some(h) = st.hosts.get_mut(&host) {
            h.current -= 1;
        }
        st.visits[index].left = Some(Instant::now());
    }
    let body = format!("{{\"host\":\"{host}\",\"id\":\"{id}\",\"status\":{status}}}");
    Ok(resp
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad header")))))
}
