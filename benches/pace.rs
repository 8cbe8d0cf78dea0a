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
mod serve;

#[path = "../tests/common/limit_origin.rs"]
#[allow(dead_code)]
mod limit_origin;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use limit_origin::LimitOrigin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RATES: &[f64] = &[2.0, 50.0, 500.0];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("pace: skipped (run with `cargo bench --bench pace`)");
        return;
    }
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);

    let origin = LimitOrigin::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy_port = free_port();
    let control_port = free_port();
    let mut config = format!(
        "data_dir = {:?}\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n[control]\nlisten = \"127.0.0.1:{control_port}\"\n[resolve]\n",
        dir.path().join("data")
    );
    for r in RATES {
        config += &format!("\"pace{r}.test\" = \"127.0.0.1\"\n");
    }
    config += "[limits]\nrps = 2.0\nmax_concurrent = 1000\nqueue_capacity = 100000\nmax_wait = \"600s\"\n";
    for r in RATES {
        config += &format!("[limits.domains.\"pace{r}.test\"]\nrps = {r:.1}\npin = true\n");
    }
    let config_path = dir.path().join("ezthrottle.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ezthrottle"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("EZTHROTTLE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ezthrottle");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line.starts_with("ezthrottle ready") => {}
        other => panic!("ezthrottle did not get ready: {other:?}"),
    }

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
