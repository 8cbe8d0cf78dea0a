//! What the benchmarks that drive the real binary share: ports, starting
//! `ezthrottle` and waiting for its ready line, one HTTP/1.1 exchange,
//! percentiles, and a process's CPU time. Each bench includes this file with
//! `#[path]` (bench targets are separate crates).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The test harness's own start-and-wait (one copy for tests and benches).
#[path = "../../tests/common/ready.rs"]
#[allow(dead_code)]
mod ready;

/// Start `ezthrottle run --config <path>` (logs at warn) and return once it
/// printed its ready line.
pub fn spawn_ready(config_path: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ezthrottle"))
        .args(["run", "--config"])
        .arg(config_path)
        .env("EZTHROTTLE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ezthrottle");
    let stdout = child.stdout.take().expect("stdout");
    // The lines keep draining on their own thread for the child's life.
    let (lines, _drain) = ready::drain_stdout(stdout);
    if let Err(e) = ready::wait_ready(&lines, Duration::from_secs(60)) {
        let _ = child.kill();
        panic!("ezthrottle did not get ready: {e:?}");
    }
    std::mem::forget(lines);
    child
}

/// One HTTP/1.1 exchange on a keep-alive connection; returns the status.
pub fn exchange(conn: &mut BufReader<TcpStream>, request: &[u8]) -> u16 {
    conn.get_mut().write_all(request).expect("write");
    let mut status_line = String::new();
    conn.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().expect("length");
            }
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).expect("body");
    status
}

/// `p50 … p90 … p99 …` in milliseconds.
pub fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    if v.is_empty() {
        return "no samples".into();
    }
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    format!(
        "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
        p(0.5),
        p(0.9),
        p(0.99)
    )
}

/// The value after `flag` (e.g. `--seconds`) in a bench's arguments, else
/// `default`; `None` (after saying so) when the binary runs without
/// `--bench`, i.e. under `cargo test --all-targets`.
pub fn bench_arg<T: std::str::FromStr>(name: &str, flag: &str, default: T) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("{name}: skipped (run with `cargo bench --bench {name}`)");
        return None;
    }
    Some(
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// Write a config with one pinned domain `pace<r>.test` (resolved to
/// loopback) per rate and return its path and the proxy port.
pub fn write_paced_config(dir: &Path, rates: &[f64]) -> (std::path::PathBuf, u16) {
    let proxy_port = free_port();
    let control_port = free_port();
    let mut config = format!(
        "data_dir = {:?}\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n[control]\nlisten = \"127.0.0.1:{control_port}\"\n[resolve]\n",
        dir.join("data")
    );
    for r in rates {
        config += &format!("\"pace{r}.test\" = \"127.0.0.1\"\n");
    }
    config += "[limits]\nrps = 2.0\nburst = 1\nmax_concurrent = 1000\nqueue_capacity = 100000\nmax_wait = \"600s\"\n";
    for r in rates {
        config += &format!("[limits.domains.\"pace{r}.test\"]\nrps = {r:.1}\npin = true\n");
    }
    let config_path = dir.join("ezthrottle.toml");
    std::fs::write(&config_path, config).expect("write config");
    (config_path, proxy_port)
}
