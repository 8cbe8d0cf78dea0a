//! A real `redis-server` for the Redis-backend tests: its own loopback port,
//! its own temp dir, never the system service.
//!
//! ```ignore
//! let mut redis = RedisServer::start();            // no persistence
//! let mut redis = RedisServer::start_aof();        // appendonly yes, fsync always
//! let ez = EzBuilder::new().redis(&redis).start();
//! redis.stop();                                    // SIGTERM: the port now refuses
//! redis.restart();                                 // same port, same dir
//! let n: i64 = redis.cmd(&["DBSIZE"]);
//! ```
//!
//! Readiness is event-based: the server's log goes to a pipe that a thread
//! forwards line by line; start waits (bounded) for "Ready to accept
//! connections", or for the pipe to close (the server exited: the test fails
//! with its log), then confirms with PING. Dropping the handle kills the
//! server.
//!
//! The binary is `redis-server` from PATH (scripts/test installs it), or
//! `EZT_REDIS_SERVER`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::free_port;
use super::proc::{send_signal, Running};

/// How long redis-server may take to accept connections.
pub const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a signalled redis-server may take to exit (AOF flush included).
pub const REDIS_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect/read/write bound of the test client.
pub const REDIS_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The line redis-server logs once it listens.
const READY_LINE: &str = "Ready to accept connections";

/// How the server is run.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `--appendonly yes --appendfsync always`: every acknowledged write
    /// survives stop/kill and restart. Default: no persistence at all
    /// (`--save "" --appendonly no`).
    pub appendonly: bool,
    /// `--requirepass` (clients then need `redis://:PASSWORD@…`).
    pub password: Option<String>,
    /// More `--name value` arguments, e.g. `("maxmemory", "10mb")`.
    pub args: Vec<(String, String)>,
    /// The server gets SIGKILL when the thread that started it exits
    /// (`PR_SET_PDEATHSIG`): for servers kept in a registry past their
    /// handle's owner, which must not outlive the test (thread) using them.
    pub die_with_thread: bool,
}

/// A running (or stopped) redis-server owned by the test.
pub struct RedisServer {
    pub port: u16,
    pub addr: SocketAddr,
    opts: RedisOptions,
    /// Temp dir: `data/` (Redis `--dir`) and `redis-<n>.log` per run.
    work: tempfile::TempDir,
    child: Option<Child>,
    log_thread: Option<JoinHandle<()>>,
    log_path: PathBuf,
    runs: u32,
}

impl RedisServer {
    /// A throwaway server without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    /// A server with AOF (`appendonly yes`, `appendfsync always`), whose data
    /// survives [`stop`](Self::stop) / [`kill`](Self::kill) + [`restart`](Self::restart).
    pub fn start_aof() -> RedisServer {
        RedisServer::start_with(RedisOptions {
            appendonly: true,
            ..RedisOptions::default()
        })
    }

    /// A server run with `opts`. A port taken between picking and binding is
    /// retried with a new one.
    pub fn start_with(opts: RedisOptions) -> RedisServer {
        let work = tempfile::tempdir().expect("redis tempdir");
        std::fs::create_dir_all(work.path().join("data")).expect("redis data dir");
        let mut server = RedisServer {
            port: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            opts,
            work,
            child: None,
            log_thread: None,
            log_path: PathBuf::new(),
            runs: 0,
        };
        let mut last = String::new();
        for _attempt in 0..3 {
            server.port = free_port();
            server.addr = SocketAddr::from(([127, 0, 0, 1], server.port));
            match server.launch() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => last = log,
                Err(log) => panic!("redis-server did not start:\n{log}"),
            }
        }
        panic!("redis-server did not start after 3 attempts (port in use):\n{last}");
    }

    /// `redis://127.0.0.1:<port>/0` (with the password when there is one).
    pub fn url(&self) -> String {
        match &self.opts.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Redis's `--dir` (where `appendonlydir/` lives).
    pub fn data_dir(&self) -> PathBuf {
        self.work.path().join("data")
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is stopped").id()
    }

    /// SIGTERM and a bounded wait for the exit (Redis flushes the AOF first).
    /// Afterwards the port refuses connections.
    pub fn stop(&mut self) {
        self.stop_with("TERM");
    }

    /// SIGKILL (a crash) and a bounded wait for the exit.
    pub fn kill(&mut self) {
        self.stop_with("KILL");
    }

    /// SIGSTOP: the process keeps its port but answers nothing (commands
    /// time out instead of being refused). Undo with [`resume`](Self::resume).
    pub fn freeze(&self) {
        send_signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn resume(&self) {
        send_signal(self.pid(), "CONT");
    }

    /// Start again on the same port and dir (after [`stop`](Self::stop) or
    /// [`kill`](Self::kill)); panics if the port has been taken meanwhile.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart: redis-server is still running"
        );
        if let Err(log) = self.launch() {
            panic!("redis-server did not restart on port {}:\n{log}", self.port);
        }
    }

    /// A new connection (bounded connect, read and write).
    pub fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let conn = client.get_connection_with_timeout(REDIS_CLIENT_TIMEOUT)?;
        conn.set_read_timeout(Some(REDIS_CLIENT_TIMEOUT))?;
        conn.set_write_timeout(Some(REDIS_CLIENT_TIMEOUT))?;
        Ok(conn)
    }

    /// A new connection; panics if the server does not answer.
    pub fn conn(&self) -> redis::Connection {
        self.try_conn()
            .unwrap_or_else(|e| panic!("connect to redis {}: {e}", self.addr))
    }

    /// Run one command on a new connection: `try_cmd(&["GET", "k"])`.
    pub fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        for a in rest {
            cmd.arg(*a);
        }
        cmd.query(&mut self.try_conn()?)
    }

    /// [`try_cmd`](Self::try_cmd), panicking on an error.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on {}: {e}", self.addr))
    }

    /// PING → PONG (panics otherwise).
    pub fn ping(&self) {
        let pong: String = self.cmd(&["PING"]);
        assert_eq!(pong, "PONG", "PING on {}", self.addr);
    }

    /// `INFO <section>` as key → value (`""` for every section).
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String = if section.is_empty() {
            self.cmd(&["INFO"])
        } else {
            self.cmd(&["INFO", section])
        };
        parse_info(&text)
    }

    /// Keys matching `pattern` (`KEYS`, sorted; test data sets are small).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.cmd(&["KEYS", pattern]);
        keys.sort();
        keys
    }

    /// `FLUSHALL`.
    pub fn flushall(&self) {
        let _: String = self.cmd(&["FLUSHALL"]);
    }

    /// The server's log of its current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn binary() -> String {
        std::env::var("EZT_REDIS_SERVER")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "redis-server".to_string())
    }

    /// Spawn on `self.port` and wait for the ready line; Err(log) if it exits
    /// first.
    fn launch(&mut self) -> Result<(), String> {
        self.runs += 1;
        self.log_path = self.work.path().join(format!("redis-{}.log", self.runs));
        let mut cmd = Command::new(RedisServer::binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.data_dir())
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg("")
            .arg("--save")
            .arg("")
            .arg("--maxmemory-policy")
            .arg("noeviction");
        if self.opts.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(p) = &self.opts.password {
            cmd.arg("--requirepass").arg(p);
        }
        for (k, v) in &self.opts.args {
            cmd.arg(format!("--{k}")).arg(v);
        }
        if self.opts.die_with_thread {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install redis-server (scripts/test does) or set EZT_REDIS_SERVER",
                RedisServer::binary()
            )
        });

        // stdout (the log) and stderr (argument errors) both go to the log
        // file; stdout lines are also forwarded until the ready line.
        let mut log = std::fs::File::create(&self.log_path).expect("create redis log");
        let mut err_log = log.try_clone().expect("clone redis log");
        let stderr = child.stderr.take().expect("stderr");
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(err_log, "{line}");
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<()>();
        let log_thread = std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                let _ = log.flush();
                if line.contains(READY_LINE) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
            let _ = stderr_thread.join();
        });

        let waited = rx.recv_timeout(REDIS_READY_TIMEOUT);
        self.child = Some(child);
        self.log_thread = Some(log_thread);
        match waited {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The log pipe closed: the server exited.
                self.reap();
                return Err(self.log());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.reap();
                return Err(format!(
                    "no {READY_LINE:?} within {REDIS_READY_TIMEOUT:?}\n{}",
                    self.log()
                ));
            }
        }
        // Listening: one PING proves it answers (bounded by the client timeout).
        match self.try_cmd::<String>(&["PING"]) {
            Ok(p) if p == "PONG" => Ok(()),
            other => {
                self.reap();
                Err(format!("PING after ready: {other:?}\n{}", self.log()))
            }
        }
    }

    fn stop_with(&mut self, signal: &str) {
        let child = self.child.take().expect("redis-server already stopped");
        let pid = child.id();
        let waiter = Running::watch(
            child,
            format!("redis-server (pid {pid}, port {})", self.port),
        );
        send_signal(pid, signal);
        waiter.wait(REDIS_EXIT_TIMEOUT);
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }

    /// SIGKILL (SIGCONT first, in case it is frozen) and reap.
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.reap();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let start = lines.len().saturating_sub(40);
            eprintln!(
                "--- redis-server log (port {}) ---\n{}\n--- end ---",
                self.port,
                lines[start..].join("\n")
            );
        }
    }
}

/// `INFO` text → key → value (section headers and blank lines skipped).
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether `path` holds any AOF data (Redis 7 keeps it in `appendonlydir/`).
pub fn aof_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir.join("appendonlydir")) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
