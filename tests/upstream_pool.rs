//! Kept-alive upstream connections: reused by the next request to the same
//! origin and never handed to another, given up when the origin closes them,
//! and let go when the origin closes one that sits idle (the vendored
//! pingora-core's recently idle list and its sweep, docs/connections.md).

mod common;

use common::raw::RawConn;
use common::{EzBuilder, Ezthrottle};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A raw keep-alive origin that answers every request with its own `name`
/// as the body and counts the connections it accepted.
///
/// - `/close`: answers, then closes the connection (no `Connection: close`,
///   as an origin whose keep-alive timeout just ran out would), and says so
///   on `closed`.
/// - `/says-close`: answers with `Connection: close`, and leaves the
///   connection open for the proxy to close.
/// - `/http10`: answers as HTTP/1.0 without `Connection: keep-alive`, and
///   leaves the connection open; `/http10-keep-alive`: with it.
/// - `/split`: sends the head, then the body in a second write a moment
///   later; `/extra`: sends 5 bytes past the body's `Content-Length` in
///   the same write (as a broken origin would).
/// - `/fin`: answers, waits for [`RawOrigin::finish`], then closes its
///   sending side and waits up to 30 s for the proxy to close the
///   connection; says on `let_go` whether it did.
struct RawOrigin {
    _server: common::serve::Loopback,
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The most requests any one connection carried.
    most_on_one: Arc<AtomicUsize>,
    closed: Mutex<mpsc::Receiver<()>>,
    let_go: Mutex<mpsc::Receiver<bool>>,
    finish: tokio::sync::mpsc::UnboundedSender<()>,
}

impl RawOrigin {
    fn start(name: &'static str) -> RawOrigin {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = common::serve::Loopback::new(name);
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = mpsc::channel();
        let (let_go_tx, let_go) = mpsc::channel();
        let (finish, finish_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let finish_rx = Arc::new(tokio::sync::Mutex::new(finish_rx));
        let counter = accepted.clone();
        let most_on_one = Arc::new(AtomicUsize::new(0));
        let most = most_on_one.clone();
        let addr = server.serve_tcp(move |mut tcp| {
            counter.fetch_add(1, Ordering::SeqCst);
            let (closed_tx, let_go_tx) = (closed_tx.clone(), let_go_tx.clone());
            let finish_rx = finish_rx.clone();
            let most = most.clone();
            async move {
                let mut served = 0;
                // The proxy sends one request at a time on a connection.
                while let Some(head) = common::serve::read_request_head(&mut tcp).await {
                    served += 1;
                    most.fetch_max(served, Ordering::SeqCst);
                    let (version, extra) = if head.starts_with(b"GET /says-close ") {
                        ("1.1", "Connection: close\r\n")
                    } else if head.starts_with(b"GET /http10 ") {
                        ("1.0", "")
                    } else if head.starts_with(b"GET /http10-keep-alive ") {
                        ("1.0", "Connection: keep-alive\r\n")
                    } else {
                        ("1.1", "")
                    };
                    let head_only = format!(
                        "HTTP/{version} 200 OK\r\n{extra}Content-Length: {}\r\n\r\n",
                        name.len()
                    );
                    let written = if head.starts_with(b"GET /split ") {
                        // Two segments, so the proxy reads the head alone
                        // (traffic shaping, not synchronisation: the test
                        // asserts the same either way).
                        let head_sent = tcp.write_all(head_only.as_bytes()).await;
                        let _ = tcp.flush().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        match head_sent {
                            Ok(()) => tcp.write_all(name.as_bytes()).await,
                            Err(e) => Err(e),
                        }
                    } else if head.starts_with(b"GET /extra ") {
                        tcp.write_all(format!("{head_only}{name}EXTRA").as_bytes())
                            .await
                    } else {
                        tcp.write_all(format!("{head_only}{name}").as_bytes()).await
                    };
                    if written.is_err() {
                        return;
                    }
                    if head.starts_with(b"GET /close ") {
                        drop(tcp);
                        let _ = closed_tx.send(());
                        return;
                    }
                    if head.starts_with(b"GET /fin ") {
                        if finish_rx.lock().await.recv().await.is_none() {
                            return;
                        }
                        let _ = tcp.shutdown().await;
                        let mut rest = [0u8; 64];
                        let closed = tokio::time::timeout(Duration::from_secs(30), async {
                            // Anything but a clean end (more bytes, an error)
                            // is not the proxy letting go.
                            matches!(tcp.read(&mut rest).await, Ok(0))
                        })
                        .await;
                        let _ = let_go_tx.send(closed.unwrap_or(false));
                        return;
                    }
                }
            }
        });
        RawOrigin {
            _server: server,
            addr,
            accepted,
            most_on_one,
            closed: Mutex::new(closed),
            let_go: Mutex::new(let_go),
            finish,
        }
    }

    /// Lets a `/fin` connection close its sending side.
    fn finish(&self) {
        self.finish.send(()).expect("the origin runs");
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }
}

/// A proxy that resolves each of `hosts` to 127.0.0.1 (plain HTTP only: no
/// upstream CA).
fn proxy_resolving(hosts: &[&str]) -> Ezthrottle {
    hosts
        .iter()
        .fold(EzBuilder::new(), |b, host| b.resolve(host, "127.0.0.1"))
        .start()
}

fn get(conn: &mut RawConn, url: &str, host: &str) -> String {
    conn.send(format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let resp = conn.read_response();
    assert_eq!(resp.status, 200, "{url}: {}", resp.text());
    resp.text()
}

/// Requests in turn to two origins, interleaved on one client connection:
/// each origin sees one connection for all of its requests, and every answer
/// comes from the origin asked (a connection kept for one origin is never
/// taken for the other).
#[test]
fn requests_in_turn_reuse_one_connection_per_origin() {
    let a = RawOrigin::start("origin-a");
    let b = RawOrigin::start("origin-b");
    let ez = proxy_resolving(&["a.test", "b.test"]);
    let mut conn = RawConn::connect(ez.proxy);
    for i in 0..20 {
        let (origin, host) = if i % 2 == 0 {
            (&a, "a.test")
        } else {
            (&b, "b.test")
        };
        let host_port = format!("{host}:{}", origin.addr.port());
        let body = get(&mut conn, &origin.url(host, "/"), &host_port);
        let want = if i % 2 == 0 { "origin-a" } else { "origin-b" };
        assert_eq!(body, want, "request {i} answered by the wrong origin");
    }
    assert_eq!(a.accepted(), 1, "origin a's connection is reused");
    assert_eq!(b.accepted(), 1, "origin b's connection is reused");
}

/// An origin that closes each connection right after answering: the closed
/// connection is not handed out again, so every next request still gets its
/// answer, on a new connection.
#[test]
fn a_connection_the_origin_closed_is_not_used_again() {
    let origin = RawOrigin::start("closing");
    let ez = proxy_resolving(&["closing.test"]);
    let host = format!("closing.test:{}", origin.addr.port());
    let mut conn = RawConn::connect(ez.proxy);
    for i in 0..5 {
        let body = get(&mut conn, &origin.url("closing.test", "/close"), &host);
        assert_eq!(body, "closing", "request {i}");
        origin
            .closed
            .lock()
            .expect("closed channel")
            .recv_timeout(Duration::from_secs(30))
            .expect("the origin closed the connection");
    }
    assert_eq!(origin.accepted(), 5, "one connection per request");
}

/// An idle kept-alive connection that the origin closes is closed by the
/// proxy too, with no request to find it: not held half-closed until some
/// later request looks at it. The origin closes only once the proxy has
/// certainly put the connection aside for reuse (it has answered the
/// client's next request, to another origin), so this is the idle case, not
/// a close seen as the answer ends. (A connection put aside waits up to a
/// second in the recently idle list before the pool's idle watch takes it;
/// the test waits for the close itself, up to 30 s.) The next request to the
/// origin then gets a new connection.
#[test]
fn an_idle_connection_the_origin_closes_is_let_go() {
    let origin = RawOrigin::start("finishing");
    let other = RawOrigin::start("other");
    let ez = proxy_resolving(&["finishing.test", "other.test"]);
    let host = format!("finishing.test:{}", origin.addr.port());
    let other_host = format!("other.test:{}", other.addr.port());
    let mut conn = RawConn::connect(ez.proxy);
    assert_eq!(
        get(&mut conn, &origin.url("finishing.test", "/fin"), &host),
        "finishing"
    );
    assert_eq!(
        get(&mut conn, &other.url("other.test", "/"), &other_host),
        "other"
    );
    origin.finish();
    let let_go = origin
        .let_go
        .lock()
        .expect("let_go channel")
        .recv_timeout(Duration::from_secs(60))
        .expect("the origin reports");
    assert!(
        let_go,
        "the proxy kept the connection the origin closed for 30 s"
    );
    assert_eq!(
        get(&mut conn, &origin.url("finishing.test", "/"), &host),
        "finishing"
    );
    assert_eq!(origin.accepted(), 2);
}

/// What the origin's answer says about keep-alive decides whether its
/// connection is used again, after the proxy has taken the answer's head
/// for the client: `Connection: close` and a bare HTTP/1.0 answer are not
/// kept (though the origin leaves them open), an HTTP/1.0 answer with
/// `Connection: keep-alive` is.
#[test]
fn keep_alive_follows_what_the_origin_answered() {
    let ez = proxy_resolving(&["ka.test"]);
    let mut conn = RawConn::connect(ez.proxy);
    for (path, connections) in [
        ("/says-close", 3),
        ("/http10", 3),
        ("/http10-keep-alive", 1),
    ] {
        let origin = RawOrigin::start("keep-alive");
        let host = format!("ka.test:{}", origin.addr.port());
        for _ in 0..3 {
            assert_eq!(
                get(&mut conn, &origin.url("ka.test", path), &host),
                "keep-alive"
            );
        }
        assert_eq!(origin.accepted(), connections, "{path}: connections");
        let most = origin.most_on_one.load(Ordering::SeqCst);
        assert_eq!(most, 3 / connections, "{path}: requests on one connection");
    }
}

/// A response body is handed on whole and exactly, however it arrives: with
/// its head (kept in the head's buffer, not copied: the vendored
/// pingora-core's `take_preread_whole_body`), after it, or with bytes past
/// its `Content-Length`. The connection is used again after the first two;
/// after the third it is not, since what followed the body is not a
/// response to anything.
#[test]
fn a_body_with_its_head_after_it_or_with_bytes_past_its_length() {
    let origin = RawOrigin::start("alpha");
    let ez = proxy_resolving(&["alpha.test"]);
    let mut c = RawConn::connect(ez.proxy);
    let url = |path| origin.url("alpha.test", path);
    let host = format!("alpha.test:{}", origin.addr.port());
    assert_eq!(get(&mut c, &url("/whole"), &host), "alpha");
    assert_eq!(get(&mut c, &url("/split"), &host), "alpha");
    assert_eq!(get(&mut c, &url("/whole"), &host), "alpha");
    assert_eq!(
        origin.accepted(),
        1,
        "one connection for whole and split bodies"
    );
    assert_eq!(get(&mut c, &url("/extra"), &host), "alpha");
    assert_eq!(get(&mut c, &url("/whole"), &host), "alpha");
    assert_eq!(
        origin.accepted(),
        2,
        "the connection with bytes past the body was used again"
    );
}
