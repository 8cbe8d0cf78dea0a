//! An origin that sees exchanges the way a real API server does: a raw
//! HTTP/1.1 server on loopback that timestamps each request the moment its
//! head has been read, counts the exchanges it has open (from that moment
//! until it starts writing the answer) and their peak, and announces every
//! arrival on a channel so tests can await it.
//!
//! Like most API servers it does not watch the connection while it works on
//! a request: a client that hangs up mid-request is noticed only when the
//! answer has been written and the next request is read. Requests must not
//! have bodies (GET).
//!
//! Query parameters: `delay_ms=N` (work N ms before answering), `id=X`
//! (announced on arrival).

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Counts {
    arrivals: Vec<Instant>,
    open: usize,
    peak: usize,
}

pub struct ExchangeOrigin {
    pub addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    arrived: Mutex<mpsc::Receiver<String>>,
    _server: super::serve::Loopback,
}

impl ExchangeOrigin {
    pub fn start() -> ExchangeOrigin {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let (tx, rx) = mpsc::channel();
        let server = super::serve::Loopback::new("exchange origin");
        let c = counts.clone();
        let addr = server.serve_tcp(move |tcp| {
            let _ = tcp.set_nodelay(true);
            serve(tcp, c.clone(), tx.clone())
        });
        ExchangeOrigin {
            addr,
            counts,
            arrived: Mutex::new(rx),
            _server: server,
        }
    }

    /// `http://<host>:<port><path_and_query>` (map `host` to 127.0.0.1).
    pub fn url(&self, host: &str, path_and_query: &str) -> String {
        format!("http://{host}:{}{path_and_query}", self.addr.port())
    }

    /// Arrival instants, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.counts.lock().expect("counts").arrivals.clone()
    }

    /// Most exchanges open at once so far.
    pub fn peak(&self) -> usize {
        self.counts.lock().expect("counts").peak
    }

    /// Exchanges open now.
    pub fn open(&self) -> usize {
        self.counts.lock().expect("counts").open
    }

    /// Wait (bounded) for the next arrival; returns its `id`.
    pub fn next_arrival(&self, timeout: Duration) -> String {
        let rx = self.arrived.lock().expect("arrived");
        rx.recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no request reached the origin within {timeout:?}: {e}"))
    }
}

/// Windows of length `w` over sorted `times`, one starting at each: the
/// most instants in one, and how many hold more than `allowed`.
pub fn windows(times: &[Instant], w: Duration, allowed: usize) -> (usize, usize) {
    let (mut max, mut over, mut hi) = (0, 0, 0);
    for lo in 0..times.len() {
        hi = hi.max(lo);
        while hi + 1 < times.len() && times[hi + 1] - times[lo] <= w {
            hi += 1;
        }
        max = max.max(hi - lo + 1);
        over += usize::from(hi - lo + 1 > allowed);
    }
    (max, over)
}

fn query_value<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let q = target.split_once('?')?.1;
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn serve(mut tcp: TcpStream, counts: Arc<Mutex<Counts>>, arrived: mpsc::Sender<String>) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request head.
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let at = Instant::now();
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        {
            let mut c = counts.lock().expect("counts");
            c.arrivals.push(at);
            c.open += 1;
            c.peak = c.peak.max(c.open);
        }
        let id = query_value(&target, "id").unwrap_or("").to_string();
        let _ = arrived.send(id.clone());
        if let Some(ms) = query_value(&target, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        // The exchange is over from here on: the answer is being sent.
        counts.lock().expect("counts").open -= 1;
        let body = format!("{{\"id\":\"{id}\"}}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if tcp.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
