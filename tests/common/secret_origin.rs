//! A plain-HTTP origin on 127.0.0.1 that records every request it gets
//! (head and body) and either answers at once or holds requests unanswered
//! (so a job stays stored and unfinished), for the tests that plant secrets
//! in logs and in the store.
//!
//! Answer: `200`, `Content-Type: application/json`, a `Set-Cookie` and a
//! JSON body that carry the secrets given at start — so a response body and
//! response headers hold secrets only the origin knows.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request as the origin read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request line and header lines, as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn target(&self) -> String {
        self.head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_string()
    }
}

struct State {
    seen: Mutex<Vec<Seen>>,
    answer: AtomicBool,
    body: String,
    cookie: String,
}

pub struct SecretOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
    _server: super::serve::Loopback,
}

impl SecretOrigin {
    /// Listen on an ephemeral port; answer with `body` and `Set-Cookie:
    /// sid=<cookie>` while answering is on (`answer`).
    pub fn start(body: &str, cookie: &str, answer: bool) -> SecretOrigin {
        Self::start_on(
            TcpListener::bind("127.0.0.1:0").expect("bind"),
            body,
            cookie,
            answer,
        )
    }

    /// Same, on `listener` (e.g. a port a job was pointed at earlier).
    pub fn start_on(listener: TcpListener, body: &str, cookie: &str, answer: bool) -> SecretOrigin {
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            answer: AtomicBool::new(answer),
            body: body.to_string(),
            cookie: cookie.to_string(),
        });
        let server = super::serve::Loopback::new("secret origin");
        let st = state.clone();
        let addr = server.serve_tcp_on(listener, move |tcp| serve(tcp, st.clone()));
        SecretOrigin {
            addr,
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set_answer(&self, yes: bool) {
        self.state.answer.store(yes, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }

    /// Wait (bounded) until a request whose target starts with `path` arrived.
    pub fn wait_for(&self, path: &str, timeout: Duration) -> Seen {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .seen()
                .into_iter()
                .find(|s| s.target().starts_with(path))
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no request for {path} reached the origin within {timeout:?}; seen: {:?}",
                self.seen().iter().map(Seen::target).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long a connection may sit idle between requests before the origin
/// closes it.
const IDLE: Duration = Duration::from_secs(30);

/// Read more into `buf`; `false` at EOF, error or after `IDLE`.
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(IDLE, tcp.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Read one request (head + Content-Length body); `None` at EOF/error.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(tcp, buf).await || buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        if !read_more(tcp, buf).await {
            return None;
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some(Seen {
        head: head.trim_end().to_string(),
        body,
    })
}

async fn serve(mut tcp: TcpStream, st: Arc<State>) {
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut tcp, &mut buf).await {
        st.seen.lock().expect("seen lock").push(seen);
        if !st.answer.load(Ordering::SeqCst) {
            // Hold: never answer this request; the connection stays open
            // until the peer goes away or the origin stops (dropping this
            // task closes it).
            let mut one = [0u8; 1];
            while matches!(tcp.read(&mut one).await, Ok(n) if n > 0) {}
            return;
        }
        let body = &st.body;
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: sid={}; Path=/\r\nContent-Length: {}\r\n\r\n{}",
            st.cookie,
            body.len(),
            body
        );
        if tcp.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
