//! Admission at the edges (issue 11, item 3), through the real binary and
//! measured where it matters: at the origin.
//!
//! - the pace: at 2,000 req/s, sliding windows of 10 ms, 100 ms and 1 s
//!   keep to `rps·w + burst` arrivals (upper bounds on counts, see
//!   `OVER_SHARE` for what trip jitter allows; nothing bounds speed);
//! - the concurrency cap: clients that hang up while the origin is still
//!   working on their request do not free their slot until the origin's
//!   exchange has ended, so the origin never has more than `max_concurrent`
//!   open; a dead origin holds a slot no longer than `[proxy] read_timeout`.
//!
//! Synchronisation is by events (arrivals announced by the origin, responses
//! read), never by sleeping.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::exchange_origin::{windows, ExchangeOrigin};
use common::harness::EzBuilder;
use common::{curl, json, Ezthrottle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// One test at a time: each measures timing and would load the others.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn start(limits: &str, proxy: &str, hosts: &[&str]) -> Ezthrottle {
    // No access log: thousands of lines a second would cost the proxy CPU
    // and the pace test its timing.
    let mut b = EzBuilder::new()
        .env("EZTHROTTLE_LOG", "warn")
        .limits(limits)
        .extra("[retry]\nmax_retries = 0\nmax_reroutes = 0\n");
    if !proxy.is_empty() {
        b = b.proxy(proxy);
    }
    for h in hosts {
        b = b.resolve(h, "127.0.0.1");
    }
    b.start()
}

/// A client that sends one request and keeps the connection open until
/// dropped (then it hangs up without reading the answer).
fn send_only(ez: &Ezthrottle, url: &str) -> TcpStream {
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("authority")
        .to_string();
    let mut s = TcpStream::connect(ez.proxy).expect("connect proxy");
    write!(s, "GET {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n").expect("send request");
    s
}

fn in_flight(ez: &Ezthrottle, domain: &str) -> u64 {
    let f = curl().fetch(&ez.control_url("/api/v1/domains"));
    assert_eq!(f.code, 200, "{}", f.describe());
    let all = json(&f.body);
    all["domains"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["domain"] == domain))
        .and_then(|d| d["in_flight"].as_u64())
        .unwrap_or(0)
}

#[test]
fn concurrency_at_the_origin_stays_under_the_cap_while_clients_hang_up() {
    let _serial = serial();
    const CAP: usize = 5;
    const CLIENTS: usize = 30;
    let origin = ExchangeOrigin::start();
    let ez = start(
        &format!(
            "rps = 1000.0\nmax_concurrent = {CAP}\nqueue_capacity = 1000\nmax_wait = \"120s\""
        ),
        "",
        &["hangup.test"],
    );
    let mut clients: Vec<Option<TcpStream>> = (0..CLIENTS)
        .map(|i| {
            Some(send_only(
                &ez,
                &origin.url("hangup.test", &format!("/slow?delay_ms=300&id={i}")),
            ))
        })
        .collect();
    // Each client hangs up as soon as its request has reached the origin,
    // while the origin still works on it.
    for _ in 0..CLIENTS {
        let id: usize = origin.next_arrival(WAIT).parse().expect("id");
        clients[id] = None;
    }
    assert!(
        origin.peak() <= CAP,
        "the origin had {} exchanges open at once, cap {CAP}",
        origin.peak()
    );
    // Every slot comes back once the origin has answered.
    common::eventually(WAIT, "all slots released", || {
        (in_flight(&ez, "hangup.test") == 0).then_some(())
    });
    // ...and only then: every exchange had ended at the origin first.
    assert_eq!(origin.open(), 0);
}

#[test]
fn a_dead_origin_holds_a_slot_no_longer_than_the_read_timeout() {
    let _serial = serial();
    let origin = ExchangeOrigin::start();
    let ez = start(
        "rps = 1000.0\nmax_concurrent = 1\nqueue_capacity = 10\nmax_wait = \"60s\"",
        "read_timeout = \"1s\"",
        &["dead.test"],
    );
    // The origin never answers within the test: the client gives up.
    let a = send_only(&ez, &origin.url("dead.test", "/hang?delay_ms=600000&id=a"));
    assert_eq!(origin.next_arrival(WAIT), "a");
    drop(a);
    // The next request is admitted once the bound has passed.
    let started = Instant::now();
    let f = curl()
        .proxy(&ez)
        .fetch(&origin.url("dead.test", "/fast?id=b"));
    assert_eq!(f.code, 200, "{}", f.describe());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the slot of an exchange still open at the origin was freed after {:?}",
        started.elapsed()
    );
}

/// The proxy watches the client while the origin works on its request
/// (docs/performance.md, "The tenth pass": a request without a body goes
/// in turn, not as a duplex, and still watches): a client that hangs up
/// ends the exchange at once. The upstream connection is closed, so the
/// origin can stop working, and the slot comes back; neither waits for the
/// origin's answer nor for the read timeout (600 s here).
#[test]
fn a_client_that_hangs_up_ends_its_exchange_at_the_origin_at_once() {
    let _serial = serial();
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let server = common::serve::Loopback::new("watching origin");
    // Reads one request head, never answers, and says when the proxy
    // closes the connection.
    let addr = server.serve_tcp(move |mut tcp| {
        let tx = tx.clone();
        async move {
            if common::serve::read_request_head(&mut tcp).await.is_none() {
                return;
            }
            let _ = tx.send("arrived");
            let mut buf = [0u8; 1024];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send("closed");
        }
    });
    let ez = start(
        "rps = 1000.0\nmax_concurrent = 4",
        "read_timeout = \"600s\"",
        &["watch.test"],
    );
    let client = send_only(&ez, &format!("http://watch.test:{}/work", addr.port()));
    assert_eq!(rx.recv_timeout(WAIT), Ok("arrived"));
    assert_eq!(in_flight(&ez, "watch.test"), 1);
    drop(client);
    assert_eq!(
        rx.recv_timeout(WAIT),
        Ok("closed"),
        "the proxy kept the exchange open at the origin after its client hung up"
    );
    common::eventually(WAIT, "the slot released", || {
        (in_flight(&ez, "watch.test") == 0).then_some(())
    });
}

/// One keep-alive client: `n` GETs of `url` through the proxy, one at a time.
async fn client(proxy: std::net::SocketAddr, url: String, n: usize) {
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("authority")
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect proxy");
    let _ = conn.set_nodelay(true);
    let request = format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..n {
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut have = 0;
        loop {
            let k = conn.read(&mut buf[have..]).await.expect("read");
            assert!(k > 0, "proxy closed the connection");
            have += k;
            let Some(pos) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if have >= pos + 4 + len {
                break;
            }
        }
    }
}

/// What the origin sees is the proxy's starts shifted by each request's
/// trip (proxy task wake-up, write, origin read). A request delayed by a
/// preempted thread arrives together with the ones started after it, so on
/// a busy machine a window at the origin goes over `rps·w + burst` now and
/// then although every start kept the pace (the proxy's own starts are held
/// to the bound exactly: unit tests in `admission::domain`). What tells the
/// designs apart at the origin is how many windows go over: with slots
/// granted back-dated by up to 2 ms (the old design) 15–24 % of windows of
/// every size did (up to 34 requests in a 10 ms window, 21 allowed); now
/// none on a quiet machine and under 1 % with the build jobs of two other
/// engineers on the same 2 cores. Allowed here: under 5 % of windows (one
/// starting at each arrival).
const OVER_SHARE: f64 = 0.05;

#[test]
fn the_pace_at_the_origin_keeps_to_rps_times_window_plus_burst() {
    let _serial = serial();
    const RPS: f64 = 2000.0;
    const BURST: f64 = 1.0;
    // Enough closed-loop clients to keep the queue full, few enough not to
    // starve the proxy of CPU.
    const CLIENTS: usize = 10;
    const EACH: usize = 600; // 6,000 requests: 3 s at the pace
    let origin = ExchangeOrigin::start();
    let ez = start(
        &format!(
            "rps = {RPS:.1}\nburst = {BURST}\nmax_concurrent = 1000\nqueue_capacity = 10000\nmax_wait = \"120s\""
        ),
        "",
        &["pace.test"],
    );
    let url = origin.url("pace.test", "/p");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(client(ez.proxy, url.clone(), EACH)))
            .collect();
        for t in tasks {
            t.await.expect("client");
        }
    });
    let times = origin.arrivals();
    assert_eq!(times.len(), CLIENTS * EACH);
    let span = (times[times.len() - 1] - times[0]).as_secs_f64();
    eprintln!("achieved {:.0} req/s", (times.len() - 1) as f64 / span);
    let mut report = Vec::new();
    let mut failed = false;
    for w in [10u64, 100, 1000] {
        let window = Duration::from_millis(w);
        let exact = (RPS * window.as_secs_f64() + BURST).floor() as usize;
        let (seen, over) = windows(&times, window, exact);
        let share = over as f64 / times.len() as f64;
        let line = format!(
            "{w} ms: at most {seen} (bound {exact}), {:.2} % of windows over",
            100.0 * share
        );
        eprintln!("{line}");
        report.push(line);
        failed |= share >= OVER_SHARE;
    }
    assert!(!failed, "pace exceeded: {}", report.join("; "));
}
