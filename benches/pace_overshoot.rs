//! Pace overshoot benchmark (issue 11): one domain each at 500, 2,000 and
//! 5,000 req/s (burst 1), driven with more offered load than allowed through
//! the real `ezthrottle` binary to a raw origin that timestamps every request
//! the moment its head is read.
//!
//! Prints, per rate: requests that reached the origin, achieved rate,
//! achieved/configured; per window size (10 ms, 100 ms, 1 s) the most
//! arrivals in any window against `rps·w + burst` and the share of windows
//! (one starting at each arrival) above it; and the proxy's CPU time
//! (user + system, from /proc) per request and as a share of one core.
//!
//! Run: `cargo bench --bench pace_overshoot` (`-- --seconds 5` for a quick
//! look). Under `cargo test --all-targets` it does nothing.

#[path = "../tests/common/serve.rs"]
#[allow(dead_code)]
mod serve;

#[path = "../tests/common/exchange_origin.rs"]
#[allow(dead_code)]
mod exchange_origin;

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use exchange_origin::{windows, ExchangeOrigin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RATES: &[f64] = &[500.0, 2000.0, 5000.0];
const WINDOWS_MS: &[u64] = &[10, 100, 1000];

/// User + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // getconf CLK_TCK is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let Some(seconds) = support::bench_arg("pace_overshoot", "--seconds", 10) else {
        return;
    };
    let origin = ExchangeOrigin::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config_path, proxy_port) = support::write_paced_config(dir.path(), RATES);
    let mut child = support::spawn_ready(&config_path);
    let pid = child.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:>6} {:>8} {:>9} {:>7}  {:>26}  {:>26}  {:>26}  {:>10} {:>8}",
        "rps",
        "requests",
        "achieved",
        "ach/cfg",
        "10 ms: max/allowed, %over",
        "100 ms: max/allowed, %over",
        "1 s: max/allowed, %over",
        "CPU µs/req",
        "CPU %"
    );
    for &rate in RATES {
        let host = format!("pace{rate}.test");
        // Closed-loop keep-alive clients, enough for twice the rate at a few
        // ms per round trip outside the queue.
        let clients = ((rate / 100.0).ceil() as usize).clamp(8, 100);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let url = origin.url(&host, "/p");
        let first = origin.arrivals().len();
        let cpu0 = cpu_seconds(pid);
        let wall0 = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..clients)
                .map(|_| tokio::spawn(client(proxy_port, url.clone(), deadline)))
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
        let cpu = cpu_seconds(pid) - cpu0;
        let wall = wall0.elapsed().as_secs_f64();
        let times: Vec<Instant> = origin.arrivals()[first..].to_vec();
        let n = times.len();
        let achieved = if n > 1 {
            (n - 1) as f64 / (times[n - 1] - times[0]).as_secs_f64()
        } else {
            0.0
        };
        let mut cols = Vec::new();
        for &w in WINDOWS_MS {
            let window = Duration::from_millis(w);
            let allowed = (rate * window.as_secs_f64() + 1.0 + 1e-9).floor() as usize;
            let (max, over) = windows(&times, window, allowed);
            cols.push(format!(
                "{max:>6}/{allowed:<6} {:>6.2}%",
                100.0 * over as f64 / n.max(1) as f64
            ));
        }
        println!(
            "{:>6.0} {:>8} {:>9.1} {:>7.4}  {:>26}  {:>26}  {:>26}  {:>10.1} {:>7.1}%",
            rate,
            n,
            achieved,
            achieved / rate,
            cols[0],
            cols[1],
            cols[2],
            1e6 * cpu / n.max(1) as f64,
            100.0 * cpu / wall
        );
    }
    // The proxy idle (nobody waiting): the fine wait costs nothing then.
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "idle: {:.1}% of a core",
        100.0 * (cpu_seconds(pid) - cpu0) / 2.0
    );
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
}

/// One keep-alive client sending absolute-form GETs through the proxy until
/// the deadline.
async fn client(proxy_port: u16, url: String, deadline: Instant) {
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port)).await else {
        return;
    };
    let _ = conn.set_nodelay(true);
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let request = format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let mut buf = vec![0u8; 16 * 1024];
    while Instant::now() < deadline {
        if conn.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        let mut have = 0;
        loop {
            let Ok(k) = conn.read(&mut buf[have..]).await else {
                return;
            };
            if k == 0 {
                return;
            }
            have += k;
            let Some(pos) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                if have == buf.len() {
                    return;
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if have >= pos + 4 + len {
                break;
            }
        }
    }
}
