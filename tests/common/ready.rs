//! Start the real binary and wait for its ready line — the one copy, used
//! by the test harness (`harness.rs`) and the benchmarks
//! (`benches/support/mod.rs` includes this file with `#[path]`), so both
//! read the line the same way: `ezthrottle ready proxy=<addr> control=<addr>`.
//!
//! Only the standard library: a bench target is its own crate.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::ChildStdout;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why no ready line came.
#[derive(Debug)]
pub enum NotReady {
    /// Standard output closed first: the process exited (or closed it).
    Exited { seen: Vec<String> },
    /// Nothing within the timeout.
    Timeout { seen: Vec<String> },
    /// A ready line that does not name both addresses.
    Malformed(String),
}

/// Read `stdout` line by line on its own thread for as long as it is open
/// (a process writing to a full pipe would block), into a channel.
pub fn drain_stdout(stdout: ChildStdout) -> (mpsc::Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<String>();
    let thread = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Nobody listening any more is fine: keep draining.
            let _ = tx.send(line);
        }
    });
    (rx, thread)
}

/// Wait (bounded) for the ready line among `lines`; the addresses it names.
pub fn wait_ready(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
) -> Result<(SocketAddr, SocketAddr), NotReady> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("ezthrottle ready ") {
                    return parse_ready(rest).ok_or(NotReady::Malformed(line));
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(NotReady::Exited { seen }),
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(NotReady::Timeout { seen }),
        }
    }
}

/// `proxy=<addr> control=<addr>` in any order, other tokens ignored.
pub fn parse_ready(rest: &str) -> Option<(SocketAddr, SocketAddr)> {
    let mut proxy = None;
    let mut control = None;
    for tok in rest.split_whitespace() {
        if let Some(v) = tok.strip_prefix("proxy=") {
            proxy = v.parse().ok();
        } else if let Some(v) = tok.strip_prefix("control=") {
            control = v.parse().ok();
        }
    }
    Some((proxy?, control?))
}
