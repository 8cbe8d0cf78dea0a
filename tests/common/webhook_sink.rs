//! A webhook receiver on loopback: records every delivery (headers and exact
//! body bytes) and can be told to fail the first N with 500. Tests await
//! deliveries through a channel, never by sleeping.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the sink answered.
    pub status: u16,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        super::json(&self.body)
    }
}

struct State {
    fail_first: usize,
    seen: AtomicUsize,
    all: Mutex<Vec<Delivery>>,
    tx: mpsc::Sender<Delivery>,
}

pub struct WebhookSink {
    pub addr: SocketAddr,
    state: Arc<State>,
    rx: Mutex<mpsc::Receiver<Delivery>>,
    _server: super::serve::Loopback,
}

impl WebhookSink {
    pub fn start() -> WebhookSink {
        Self::failing_first(0)
    }

    /// The first `n` deliveries get `500`; later ones `200`.
    pub fn failing_first(n: usize) -> WebhookSink {
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(State {
            fail_first: n,
            seen: AtomicUsize::new(0),
            all: Mutex::new(Vec::new()),
            tx,
        });
        let st = state.clone();
        let server = super::serve::Loopback::new("webhook sink");
        let addr = server.serve(super::serve::Listen::plain(), move |req| {
            handle(req, st.clone())
        });
        WebhookSink {
            addr,
            state,
            rx: Mutex::new(rx),
            _server: server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every delivery so far (failed ones included).
    pub fn all(&self) -> Vec<Delivery> {
        self.state.all.lock().expect("sink").clone()
    }

    /// Wait (bounded) for the next delivery.
    pub fn next(&self, timeout: Duration) -> Delivery {
        let rx = self.rx.lock().expect("sink rx");
        rx.recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no webhook delivery within {timeout:?}: {e}"))
    }

    /// Wait (bounded) until `done(all deliveries)` holds.
    pub fn until(&self, timeout: Duration, what: &str, done: impl Fn(&[Delivery]) -> bool) {
        let deadline = Instant::now() + timeout;
        let rx = self.rx.lock().expect("sink rx");
        loop {
            if done(&self.all()) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} deliveries",
                    self.all().len()
                );
            }
            // Each delivery is an event; wake on it (or re-check at the deadline).
            let _ = rx.recv_timeout(left);
        }
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req.into_body().collect().await?.to_bytes().to_vec();
    let n = state.seen.fetch_add(1, Ordering::SeqCst);
    let status = if n < state.fail_first { 500 } else { 200 };
    let d = Delivery {
        path,
        headers,
        body,
        status,
    };
    state.all.lock().expect("sink").push(d.clone());
    let _ = state.tx.send(d);
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    Ok(resp)
}
