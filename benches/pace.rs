//! Pace accuracy benchmark: one domain configured at 2, 50 and 500 req/s,
//! driven for 20 s each with more offered load than allowed, through the real
//! `ezthrottle` binary to a local origin that timestamps every arrival.
//!
//! Prints, per rate: requests that reached the origin, achieved rate
//! (arrivals-1 over the span from first to last arrival), achieved/configured,
//! and the largest number of arrivals in any 1 s window.
//!
//! Run: `cargo bench --bench pace` (add `-- --seconds 5` for a quick look).
//! Under `cargo test --all-targets` it is invoked without `--bench` and does
//! nothing, so the suite stays fast.

#[path = "../tests/common/serve.rs"]
#[allow(dead_code)]
mod serve;

#[path = "../tests/common/limit_origin.rs"]
#[allow(dead_code)]
mod limit_origin;

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use limit_origin::LimitOrigin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RATES: &[f64] = &[2.0, 50.0, 500.0];

fn main() {
    let Some(seconds) = support::bench_arg("pace", "--seconds", 20) else {
        return;
    };
    let origin = LimitOrigin::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config_path, proxy_port) = support::write_paced_config(dir.path(), RATES);
    let mut child = support::spawn_ready(&config_path);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:>10} {:>9} {:>10} {:>12} {:>10} {:>16}",
        "configured", "requests", "achieved", "achieved/cfg", "max in 1s", "allowed in 1s"
    );
    for &rate in RATES {
        let host = format!("pace{rate}.test");
        // Offer about twice the allowed rate: closed-loop clients whose
        // round trip is dominated by the wait for admission.
        let clients = ((rate * 2.0).ceil() as usize).clamp(4, 1000);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let url = origin.url(&host, "/p");
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let url = url.clone();
                let host = host.clone();
                tasks.push(tokio::spawn(client(proxy_port, url, host, deadline)));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let visits = origin.visits(&host);
        let times: Vec<Instant> = visits.iter().map(|v| v.arrived).collect();
        let n = times.len();
        let achieved = if n > 1 {
            (n - 1) as f64 / (times[n - 1] - times[0]).as_secs_f64()
        } else {
            0.0
        };
        let mut max_window = 0;
        let mut lo = 0;
        for hi in 0..n {
            while times[hi] - times[lo] >= Duration::from_secs(1) {
                lo += 1;
            }
            max_window = max_window.max(hi - lo + 1);
        }
        println!(
            "{:>10.1} {:>9} {:>10.3} {:>12.4} {:>10} {:>16}",
            rate,
            n,
            achieved,
            achieved / rate,
            max_window,
            rate.floor() as usize + 1
        );
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// One keep-alive client sending absolute-form GETs through the proxy until
/// the deadline.
async fn client(proxy_port: u16, url: String, host: String, deadline: Instant) {
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port)).await else {
        return;
    };
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(&host)
        .to_string();
    let request = format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        if conn.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        // Read one response: headers, then Content-Length bytes of body.
        let mut have = 0;
        let (head_end, body_len) = loop {
            let Ok(k) = conn.read(&mut buf[have..]).await else {
                return;
            };
            if k == 0 {
                return;
            }
            have += k;
            if let Some(pos) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (pos + 4, len);
            }
            if have == buf.len() {
                return;
            }
        };
        let mut body_have = have - head_end;
        while body_have < body_len {
            let Ok(k) = conn.read(&mut buf[..]).await else {
                return;
            };
            if k == 0 {
                return;
            }
            body_have += k;
        }
    }
}
