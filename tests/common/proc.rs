//! Child processes with bounded waits (no polling: a waiter thread reports
//! the exit through a channel; on timeout the child is killed).

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Send `signal` (e.g. "TERM", "INT", "KILL") to `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// A child being waited for by a background thread.
pub struct Running {
    pub pid: u32,
    what: String,
    rx: mpsc::Receiver<std::io::Result<Output>>,
}

impl Running {
    /// Start `cmd` with stdin closed and stdout/stderr captured.
    pub fn spawn(cmd: &mut Command) -> Running {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        Running::watch(child, what)
    }

    /// Wait for an already spawned child in the background.
    pub fn watch(child: Child, what: String) -> Running {
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Running { pid, what, rx }
    }

    /// The exit, within `timeout`; on timeout the child is killed and the
    /// test fails.
    pub fn wait(self, timeout: Duration) -> Output {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!("waiting for {} failed: {e}", self.what),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(self.pid.to_string())
                    .status();
                panic!("{} did not exit within {timeout:?}", self.what);
            }
        }
    }
}

/// Run `cmd` to completion, bounded by `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    Running::spawn(cmd).wait(timeout)
}

/// Exit code, or a description of the signal that ended the process.
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status}"),
    }
}

/// Stdout, stderr and status as one string for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe(&out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
