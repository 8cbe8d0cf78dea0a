//! Long-lived connections and the clients that open them (issue 14, items
//! 2-4), through the real binary: upgraded connections (WebSocket-style
//! `101`) and tunnels pass admission once and give their concurrency slot
//! back once established (unless `hold_slot_while_open`), `[proxy]
//! idle_timeout` closes them when they carry nothing, a CONNECT to a
//! plain-HTTP port runs the plain pipeline, and `Expect: 100-continue` is
//! answered when we hold the body.
//!
//! The origin is a small threaded TCP server: a request with `Upgrade`
//! gets `101` and then an echo; any other request gets `200` with its
//! request line echoed in a header, keep-alive.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::harness::EzBuilder;
use common::raw::{self, RawConn};
use common::{curl, error_code, Ezthrottle};

/// What the origin saw: each request head, as text.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

struct EchoOrigin {
    addr: SocketAddr,
    seen: Seen,
}

impl EchoOrigin {
    fn start() -> EchoOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Seen::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, s));
            }
        });
        EchoOrigin { addr, seen }
    }

    fn heads(&self) -> Vec<String> {
        self.seen.0.lock().expect("seen").clone()
    }
}

fn serve(conn: TcpStream, seen: Seen) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(conn);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let end = line == "\r\n";
            head.push_str(&line);
            if end {
                break;
            }
        }
        seen.0.lock().expect("seen").push(head.clone());
        let lower = head.to_ascii_lowercase();
        let len: usize = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let conn = reader.get_mut();
        if lower.contains("\r\nupgrade:") {
            let _ = conn.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            );
            // Echo until the peer closes.
            let mut buf = [0u8; 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if reader.get_mut().write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let line = head.lines().next().unwrap_or_default().to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Line: {line}\r\nX-Body-Len: {len}\r\n\r\nok"
        );
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// `idle`: the `[proxy] idle_timeout`.
fn proxy(origin: &EchoOrigin, idle: &str, limits: &str, extra: &str) -> Ezthrottle {
    EzBuilder::new()
        .proxy(&format!("idle_timeout = \"{idle}\""))
        .resolve("ws.test", "127.0.0.1")
        .resolve("tun.test", "127.0.0.1")
        .resolve("plain.test", "127.0.0.1")
        .connect_port(origin.addr.port())
        .limits(limits)
        .extra(extra)
        .start()
}

/// Open an upgraded connection to `ws.test` through the proxy; returns it
/// after the `101`.
fn upgrade(ez: &Ezthrottle, origin: &EchoOrigin) -> RawConn {
    let mut c = RawConn::connect(ez.proxy);
    let port = origin.addr.port();
    c.send(
        format!(
            "GET http://ws.test:{port}/socket HTTP/1.1\r\nHost: ws.test:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = c.read_connect_response();
    assert_eq!(
        r.status,
        101,
        "{}\norigin saw: {:?}",
        r.text(),
        origin.heads()
    );
    c
}

fn echo(c: &mut RawConn, msg: &[u8]) {
    c.send(msg);
    let stream = c.reader_mut();
    let mut got = vec![0u8; msg.len()];
    stream.read_exact(&mut got).expect("echo");
    assert_eq!(got, msg);
}

/// A GET to `host` that may wait at most one second for admission.
fn get_now(ez: &Ezthrottle, origin: &EchoOrigin, host: &str) -> common::Fetch {
    curl()
        .proxy(ez)
        .args(["-H", "X-EZThrottle-Max-Wait: 1"])
        .fetch(&format!("http://{host}:{}/next", origin.addr.port()))
}

/// With `max_concurrent = 1`, an open upgraded connection no longer holds
/// the domain's only slot: the next request goes at once. With
/// `hold_slot_while_open = true` it keeps it, and the next request times
/// out waiting.
#[test]
fn an_upgrade_gives_its_slot_back_unless_told_to_hold_it() {
    let origin = EchoOrigin::start();
    let ez = proxy(&origin, "60s", "rps = 1000.0\nmax_concurrent = 1", "");
    let mut ws = upgrade(&ez, &origin);
    echo(&mut ws, b"hello");
    get_now(&ez, &origin, "ws.test").assert_status(200);
    echo(&mut ws, b"still open");

    let ez = proxy(
        &origin,
        "60s",
        "rps = 1000.0\nmax_concurrent = 1",
        "[limits.domains.\"ws.test\"]\nhold_slot_while_open = true\n",
    );
    let mut ws = upgrade(&ez, &origin);
    let r = get_now(&ez, &origin, "ws.test");
    assert_eq!(r.code, 429, "{}", r.describe());
    assert_eq!(error_code(&r.body), "throttle_wait_timeout");
    echo(&mut ws, b"held");
    drop(ws);
}

/// An upgraded connection that carries nothing for `idle_timeout` is
/// closed, not before; traffic either way keeps it open.
#[test]
fn idle_upgrades_are_closed_and_busy_ones_are_not() {
    let origin = EchoOrigin::start();
    let ez = proxy(&origin, "1s", "rps = 1000.0\nmax_concurrent = 10", "");
    let mut busy = upgrade(&ez, &origin);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        echo(&mut busy, b"ping");
        std::thread::sleep(Duration::from_millis(300));
    }
    echo(&mut busy, b"after 2.5 s of traffic");

    let mut quiet = upgrade(&ez, &origin);
    let opened = Instant::now();
    assert!(quiet.is_closed_by_peer(), "closed by the proxy");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "not before the timeout: {:?}",
        opened.elapsed()
    );
}

/// Tunnels (`tls = "tunnel"`): each CONNECT waits for admission, then gives
/// the slot back; two tunnels are open at once under `max_concurrent = 1`;
/// a silent tunnel is closed after `idle_timeout`.
#[test]
fn tunnels_give_their_slot_back_and_close_when_idle() {
    let origin = EchoOrigin::start();
    let ez = proxy(
        &origin,
        "1s",
        "rps = 1000.0\nmax_concurrent = 1",
        "[limits.domains.\"tun.test\"]\ntls = \"tunnel\"\n",
    );
    let target = format!("tun.test:{}", origin.addr.port());
    let (mut a, r) = raw::connect(ez.proxy, &target);
    assert_eq!(r.status, 200, "{}", r.text());
    let (mut b, r) = raw::connect(ez.proxy, &target);
    assert_eq!(
        r.status,
        200,
        "second tunnel while the first is open: {}",
        r.text()
    );
    for c in [&mut a, &mut b] {
        c.send(b"GET /through HTTP/1.1\r\nHost: tun.test\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
    let quiet = Instant::now();
    assert!(a.is_closed_by_peer(), "the idle tunnel is closed");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "{:?}",
        quiet.elapsed()
    );
}

/// A CONNECT to a plain-HTTP port (undici's `EnvHttpProxyAgent` does this
/// for `http://` URLs; here curl's `--proxytunnel`) carries plain HTTP:
/// it runs through the plain pipeline (paced, counted, logged) instead of
/// failing a TLS handshake.
#[test]
fn connect_to_a_plain_http_port_runs_the_plain_pipeline() {
    let origin = EchoOrigin::start();
    let ez = proxy(&origin, "1s", "rps = 1000.0\nmax_concurrent = 10", "");
    let url = format!("http://plain.test:{}/tunnelled?x=1", origin.addr.port());
    let r = curl().proxy(&ez).arg("--proxytunnel").fetch(&url);
    assert_eq!((r.connect_code, r.code), (200, 200), "{}", r.describe());
    assert_eq!(
        r.header("x-request-line"),
        Some("GET /tunnelled?x=1 HTTP/1.1")
    );
    let domains = common::harness::control_get(&ez, "/api/v1/domains");
    assert!(domains.contains("\"plain.test\""), "{domains}");
}

/// A keyed upload with `Expect: 100-continue` (curl adds it above 1 MB):
/// we hold the body, so we answer `100 Continue` ourselves; the upstream
/// gets the body without the `Expect`.
#[test]
fn expect_100_continue_is_answered_when_we_hold_the_body() {
    let origin = EchoOrigin::start();
    let ez = proxy(&origin, "1s", "rps = 1000.0\nmax_concurrent = 10", "");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("body");
    std::fs::write(&file, common::upload_bytes(1_500_000)).expect("write");
    let run = curl()
        .proxy(&ez)
        .args(["-v", "-X", "POST", "-H", "Idempotency-Key: up-1"])
        .args(["-H", "Expect: 100-continue", "--expect100-timeout", "60"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://plain.test:{}/upload", origin.addr.port()))
        .run();
    assert_eq!(run.exit, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("< HTTP/1.1 100 Continue"),
        "no 100 Continue: {}",
        run.stderr
    );
    assert!(run.stderr.contains("< HTTP/1.1 200"), "{}", run.stderr);
    let head = origin
        .heads()
        .into_iter()
        .find(|h| h.starts_with("POST /upload"))
        .expect("the upload arrived");
    assert!(!head.to_ascii_lowercase().contains("expect:"), "{head}");
    assert!(head.contains("1500000"), "{head}");
}
