//! The real `ezthrottle` binary under test.
//!
//! `Ezthrottle::for_origin(&origin).start()` writes a config into a temp dir,
//! runs `ezthrottle run --config FILE`, waits (bounded) for the single stdout
//! line `ezthrottle ready proxy=<addr> control=<addr>`, and keeps draining
//! stdout and stderr in background threads (stderr goes to a file that is
//! printed when a test fails).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::origin::Origin;
use super::proc::{describe, send_signal, Running};
use super::{free_port, toml_str};

/// How long the binary may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a signalled binary may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(45);

/// The binary's own variables; it also starts without the clients' ones
/// ([`super::CLIENT_ENV`]).
const EZTHROTTLE_ENV: &[&str] = &[
    "EZTHROTTLE_CONFIG",
    "EZTHROTTLE_DATA_DIR",
    "EZTHROTTLE_LOG_FORMAT",
    "EZTHROTTLE_WEBHOOK_SECRET",
];

/// A `Command` for the binary with a clean environment (no inherited
/// ezthrottle or proxy variables).
pub fn ezthrottle_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ezthrottle"));
    for k in EZTHROTTLE_ENV.iter().chain(super::CLIENT_ENV) {
        cmd.env_remove(k);
    }
    cmd.env("EZTHROTTLE_LOG", "info,ezthrottle=debug");
    cmd
}

/// [`ezthrottle_cmd`] started as `sh -c 'umask MASK && exec BIN ARGS…'`:
/// the process (same pid, thanks to `exec`) runs with that umask. Arguments
/// added to the command go to the binary.
pub fn umask_cmd(mask: u32) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_ezthrottle"));
    for k in EZTHROTTLE_ENV.iter().chain(super::CLIENT_ENV) {
        cmd.env_remove(k);
    }
    cmd.env("EZTHROTTLE_LOG", "info,ezthrottle=debug");
    cmd
}

/// What to put in the config and on the command line.
#[derive(Clone, Debug)]
pub struct EzBuilder {
    upstream_ca: Option<PathBuf>,
    connect_ports: Vec<u16>,
    connect_self: bool,
    listen_flags: bool,
    resolve: Vec<(String, String)>,
    limits: String,
    extra_toml: String,
    /// Lines added to the `[proxy]` table.
    proxy_toml: String,
    /// Lines of an `[egress]` table (none when empty).
    egress_toml: String,
    /// Lines added to the `[tls]` table.
    tls_toml: String,
    /// Address the proxy listener binds (default 127.0.0.1).
    proxy_ip: std::net::Ipv4Addr,
    data_dir: Option<PathBuf>,
    data_dir_in_file: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Start through `sh` with this umask (file-mode tests).
    umask: Option<u32>,
    /// Lines of a `[storage]` table (none when empty).
    storage_toml: String,
    /// CA certificate and key copied into the work dir at start and named by
    /// `[tls] ca_cert` / `ca_key` (replicas that must share one CA).
    ca_files: Option<(PathBuf, PathBuf)>,
    /// Stay on the embedded store even under `EZT_TEST_BACKEND=redis`.
    storage_embedded: bool,
}

impl EzBuilder {
    pub fn new() -> EzBuilder {
        EzBuilder {
            upstream_ca: None,
            connect_ports: vec![443],
            connect_self: false,
            listen_flags: false,
            resolve: vec![("origin.test".into(), "127.0.0.1".into())],
            limits: "rps = 1000.0\nmax_concurrent = 100".to_string(),
            extra_toml: String::new(),
            proxy_toml: String::new(),
            egress_toml: String::new(),
            tls_toml: String::new(),
            proxy_ip: std::net::Ipv4Addr::LOCALHOST,
            data_dir: None,
            data_dir_in_file: true,
            args: vec![],
            env: vec![],
            umask: None,
            storage_toml: String::new(),
            ca_files: None,
            storage_embedded: false,
        }
    }

    /// `[tls] upstream_ca_file`.
    pub fn upstream_ca(mut self, path: &Path) -> Self {
        self.upstream_ca = Some(path.to_path_buf());
        self
    }

    /// Leave `[tls] upstream_ca_file` out (the proxy then trusts only system roots).
    pub fn no_upstream_ca(mut self) -> Self {
        self.upstream_ca = None;
        self
    }

    /// Add a port to `[proxy] connect_ports`.
    pub fn connect_port(mut self, port: u16) -> Self {
        self.connect_ports.push(port);
        self
    }

    /// Also allow CONNECT to the proxy's own port (to test loop detection).
    pub fn connect_self(mut self) -> Self {
        self.connect_self = true;
        self
    }

    /// Pass `--listen` / `--control-listen` with other ports than the file's;
    /// the ready line must then show the flag addresses.
    pub fn listen_flags(mut self) -> Self {
        self.listen_flags = true;
        self
    }

    /// Add (or replace) a `[resolve]` entry.
    pub fn resolve(mut self, host: &str, ip: &str) -> Self {
        self.resolve.retain(|(h, _)| h != host);
        self.resolve.push((host.into(), ip.into()));
        self
    }

    /// The body of the `[limits]` table (default `rps = 1000.0` and
    /// `max_concurrent = 100`, so tests that are not about throttling stay
    /// fast); `""` leaves the built-in defaults.
    pub fn limits(mut self, body: &str) -> Self {
        self.limits = body.to_string();
        self
    }

    /// Keys added to the `[tls]` table (one `key = value` per line).
    pub fn tls(mut self, toml: &str) -> Self {
        self.tls_toml.push_str(toml);
        self.tls_toml.push('\n');
        self
    }

    /// Keys added to the `[proxy]` table (one `key = value` per line).
    pub fn proxy(mut self, toml: &str) -> Self {
        self.proxy_toml.push_str(toml);
        self.proxy_toml.push('\n');
        self
    }

    /// Bind the proxy listener to another loopback address, e.g. 127.0.0.2
    /// standing in for a gateway's network address.
    pub fn proxy_ip(mut self, ip: std::net::Ipv4Addr) -> Self {
        self.proxy_ip = ip;
        self
    }

    /// Keys of the `[egress]` table (one `key = value` per line).
    pub fn egress(mut self, toml: &str) -> Self {
        self.egress_toml.push_str(toml);
        self.egress_toml.push('\n');
        self
    }

    /// What a user whose jobs and webhooks call services on this host writes:
    /// loopback and unprivileged ports opened for jobs and webhooks (the
    /// egress policy refuses both by default, SPEC §13).
    pub fn egress_loopback(self) -> Self {
        self.egress("allow = [\"127.0.0.0/8\"]\nallow_ports = [\"1024-65535\"]")
    }

    /// TOML appended at the end of the config (after `[limits]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// Use this data dir (default: `<tempdir>/data`).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Write `data_dir` into the file (default true).
    pub fn data_dir_in_file(mut self, yes: bool) -> Self {
        self.data_dir_in_file = yes;
        self
    }

    /// Extra command-line argument after `run --config FILE`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Extra environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run the binary with this umask (set by `sh`, which then `exec`s it).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// Keys of the `[storage]` table (one `key = value` per line). Use this,
    /// not [`extra`](Self::extra), for storage keys when combining them with
    /// [`redis`](Self::redis): TOML allows one `[storage]` table.
    pub fn storage(mut self, toml: &str) -> Self {
        self.storage_toml.push_str(toml);
        self.storage_toml.push('\n');
        self
    }

    /// `[storage] backend = "redis"` with `url` = the server's URL.
    pub fn redis(self, server: &super::redis_server::RedisServer) -> Self {
        self.redis_url(&server.url())
    }

    /// `[storage] backend = "redis"` with this `url` (e.g. a closed port,
    /// for "Redis down at start").
    ///
    /// Commands get 1 s rather than the default 250 ms: tests run debug
    /// builds, several at once, on two cores, where a command answered late
    /// would put a replica into its degraded (local share) mode and make
    /// the test about the machine's load rather than the product.
    pub fn redis_url(self, url: &str) -> Self {
        self.storage(&format!(
            "backend = \"redis\"\nurl = {}\ntimeout = \"1s\"",
            toml_str(url)
        ))
    }

    /// Keep the embedded store (the data dir's SQLite file) even when
    /// `EZT_TEST_BACKEND=redis` would put this instance on Redis: for tests
    /// about the embedded file itself.
    pub fn storage_embedded(mut self) -> Self {
        self.storage_embedded = true;
        self
    }

    /// Whether `start` puts this instance on a Redis of its own: under
    /// `EZT_TEST_BACKEND=redis`, unless the test chose a backend itself
    /// ([`redis`](Self::redis), a `backend` key, a `[storage]` table in
    /// [`extra`](Self::extra)) or opted out ([`storage_embedded`](Self::storage_embedded)).
    fn auto_redis(&self) -> bool {
        redis_backend_requested()
            && !self.storage_embedded
            && !self
                .storage_toml
                .lines()
                .any(|l| l.trim_start().starts_with("backend"))
            && !self.extra_toml.contains("[storage]")
    }

    /// `[storage] prefix` (with [`redis`](Self::redis)).
    pub fn redis_prefix(self, prefix: &str) -> Self {
        self.storage(&format!("prefix = {}", toml_str(prefix)))
    }

    /// Use this CA (PEM certificate and PKCS#8 key): both are copied into the
    /// instance's work dir when it starts (so the source may go away later)
    /// and named by `[tls] ca_cert` / `ca_key`.
    pub fn ca_files(mut self, cert: &Path, key: &Path) -> Self {
        self.ca_files = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// Mint from the same CA as `other` (a running instance).
    pub fn ca_from(self, other: &Ezthrottle) -> Self {
        let key = other.ca_key_path();
        self.ca_files(&other.ca_path, &key)
    }

    /// Start `n` instances of this builder that share one CA (made with
    /// `ezthrottle ca init`), each with its own work dir, data dir and
    /// ports. With [`redis`](Self::redis) they are replicas on one Redis.
    pub fn start_replicas(self, n: usize) -> Vec<Ezthrottle> {
        assert!(
            self.data_dir.is_none() || n <= 1,
            "start_replicas: replicas need their own data dirs; do not set data_dir"
        );
        let ca = SharedCa::new();
        let builder = self.ca_files(&ca.cert, &ca.key);
        (0..n).map(|_| builder.clone().start()).collect()
    }

    /// The config file `start` would write (with fresh ports), for tests
    /// that run `ezthrottle config check` on it.
    pub fn render_config(&self, data_dir: &Path) -> String {
        self.config_text(data_dir, free_port(), free_port())
    }

    fn config_text(&self, data_dir: &Path, proxy: u16, control: u16) -> String {
        let mut t = String::new();
        if self.data_dir_in_file {
            t += &format!("data_dir = {}\n", toml_str(&data_dir.to_string_lossy()));
        }
        let mut ports: Vec<String> = self.connect_ports.iter().map(|p| p.to_string()).collect();
        if self.connect_self {
            ports.push(proxy.to_string());
        }
        t += &format!(
            "\n[proxy]\nlisten = \"{}:{proxy}\"\nconnect_ports = [{}]\n{}",
            self.proxy_ip,
            ports.join(", "),
            self.proxy_toml
        );
        t += &format!("\n[control]\nlisten = \"127.0.0.1:{control}\"\n");
        if self.upstream_ca.is_some() || self.ca_files.is_some() || !self.tls_toml.is_empty() {
            t += "\n[tls]\n";
            t += &self.tls_toml;
        }
        if let Some(ca) = &self.upstream_ca {
            t += &format!("upstream_ca_file = {}\n", toml_str(&ca.to_string_lossy()));
        }
        if self.ca_files.is_some() {
            let (cert, key) = copied_ca_paths(data_dir);
            t += &format!(
                "ca_cert = {}\nca_key = {}\n",
                toml_str(&cert.to_string_lossy()),
                toml_str(&key.to_string_lossy())
            );
        }
        t += "\n[resolve]\n";
        for (host, ip) in &self.resolve {
            t += &format!("{} = {}\n", toml_str(host), toml_str(ip));
        }
        t += &format!("\n[limits]\n{}\n", self.limits);
        if !self.egress_toml.is_empty() {
            t += &format!("\n[egress]\n{}", self.egress_toml);
        }
        if !self.storage_toml.is_empty() {
            t += &format!("\n[storage]\n{}", self.storage_toml);
        }
        t += &self.extra_toml;
        t
    }

    /// Start the binary; panics (with its stderr) unless it gets ready in time.
    /// A port taken between picking and binding is retried with new ports.
    ///
    /// Under `EZT_TEST_BACKEND=redis` (see [`auto_redis`](Self::auto_redis))
    /// the instance gets `[storage] backend = "redis"` on a private
    /// redis-server that the returned handle owns. With an explicit
    /// [`data_dir`](Self::data_dir) the server belongs to that dir instead:
    /// a later start with the same data dir (a restart) finds the same
    /// server and so the same state, as a restarted replica would.
    pub fn start(self) -> Ezthrottle {
        let (builder, redis) = if self.auto_redis() {
            let server = match &self.data_dir {
                Some(dir) => redis_for_data_dir(dir),
                None => Arc::new(super::redis_server::RedisServer::start()),
            };
            (self.redis(&server), Some(server))
        } else {
            (self, None)
        };
        builder.start_inner(redis)
    }

    fn start_inner(self, redis: Option<Arc<super::redis_server::RedisServer>>) -> Ezthrottle {
        let work = tempfile::tempdir().expect("ezthrottle tempdir");
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match self.try_start(work.path()) {
                Ok(mut ez) => {
                    ez.work = Some(work);
                    ez.redis = redis;
                    return ez;
                }
                Err((msg, retry)) => {
                    if !retry {
                        panic!("{msg}");
                    }
                    last_err = msg;
                }
            }
        }
        panic!("ezthrottle did not start after 3 attempts: {last_err}");
    }

    fn try_start(&self, work: &Path) -> Result<Ezthrottle, (String, bool)> {
        let data_dir = self.data_dir.clone().unwrap_or_else(|| work.join("data"));
        let proxy_port = free_port();
        let mut control_port = free_port();
        while control_port == proxy_port {
            control_port = free_port();
        }
        if let Some((cert, key)) = &self.ca_files {
            let (to_cert, to_key) = copied_ca_paths(&data_dir);
            copy_ca_file(cert, &to_cert, 0o644);
            copy_ca_file(key, &to_key, 0o600);
        }
        let config_path = work.join("ezthrottle.toml");
        std::fs::write(
            &config_path,
            self.config_text(&data_dir, proxy_port, control_port),
        )
        .expect("write config");
        let stderr_path = work.join(format!("stderr-{proxy_port}.log"));

        let mut cmd = match self.umask {
            Some(mask) => umask_cmd(mask),
            None => ezthrottle_cmd(),
        };
        cmd.arg("run").arg("--config").arg(&config_path);
        cmd.args(&self.args);
        let (proxy_port, control_port) = if self.listen_flags {
            let p = free_port();
            let mut c = free_port();
            while c == p {
                c = free_port();
            }
            cmd.arg("--listen").arg(format!("127.0.0.1:{p}"));
            cmd.arg("--control-listen").arg(format!("127.0.0.1:{c}"));
            (p, c)
        } else {
            (proxy_port, control_port)
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ezthrottle");

        let mut stderr = child.stderr.take().expect("stderr");
        let mut log = std::fs::File::create(&stderr_path).expect("create stderr log");
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let _ = log.write_all(&buf[..n]);
                        let _ = log.flush();
                    }
                }
            }
        });

        let stdout = child.stdout.take().expect("stdout");
        let (rx, stdout_thread) = super::ready::drain_stdout(stdout);

        let mut ez = Ezthrottle {
            proxy: SocketAddr::from((self.proxy_ip, proxy_port)),
            control: SocketAddr::from(([127, 0, 0, 1], control_port)),
            ca_path: if self.ca_files.is_some() {
                copied_ca_paths(&data_dir).0
            } else {
                data_dir.join("ca").join("ca.pem")
            },
            data_dir,
            config_path,
            stderr_path,
            child: Some(child),
            threads: vec![stderr_thread, stdout_thread],
            stdout_lines: std::sync::Mutex::new(rx),
            work: None,
            quiet: false,
            redis: None,
        };

        let waited =
            super::ready::wait_ready(&ez.stdout_lines.lock().expect("stdout lock"), READY_TIMEOUT);
        match waited {
            Ok((p, c)) => {
                assert_eq!(p, ez.proxy, "ready line proxy address");
                assert_eq!(c, ez.control, "ready line control address");
                Ok(ez)
            }
            Err(super::ready::NotReady::Malformed(line)) => {
                panic!("malformed ready line: {line:?}")
            }
            Err(super::ready::NotReady::Exited { seen }) => {
                // stdout closed: the process exited (or closed stdout) before ready.
                let status = ez.kill_and_reap();
                let log = ez.stderr_log();
                let in_use = log.contains("in use") || log.contains("AddrInUse");
                ez.quiet = true;
                Err((
                    format!(
                        "ezthrottle exited before ready ({}); stdout: {seen:?}\n--- stderr ---\n{}",
                        status.map(|s| describe(&s)).unwrap_or_default(),
                        tail(&log, 200)
                    ),
                    in_use,
                ))
            }
            Err(super::ready::NotReady::Timeout { seen }) => {
                ez.kill_and_reap();
                let log = ez.stderr_log();
                ez.quiet = true;
                Err((
                    format!(
                        "ezthrottle printed no ready line within {READY_TIMEOUT:?}; stdout: {seen:?}\n--- stderr ---\n{}",
                        tail(&log, 200)
                    ),
                    false,
                ))
            }
        }
    }
}

impl Default for EzBuilder {
    fn default() -> Self {
        EzBuilder::new()
    }
}

/// Where [`EzBuilder::ca_files`] copies the CA: next to the data dir (not in
/// it, so ezthrottle's own `<data_dir>/ca/` stays unused), as `ca.pem` and
/// `ca.key` (so [`Ezthrottle::ca_key_path`] is the certificate's sibling).
fn copied_ca_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let parent = data_dir.parent().unwrap_or(data_dir);
    let dir = parent.join("shared-ca");
    (dir.join("ca.pem"), dir.join("ca.key"))
}

fn copy_ca_file(from: &Path, to: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().expect("parent")).expect("create shared-ca dir");
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy CA file {} -> {}: {e}", from.display(), to.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).expect("chmod CA file");
}

/// A CA made once with `ezthrottle ca init` in a temp dir, for instances that
/// must mint from the same CA ([`EzBuilder::ca_files`]; each copies it at start,
/// so this may be dropped once they run).
pub struct SharedCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl SharedCa {
    pub fn new() -> SharedCa {
        let dir = tempfile::tempdir().expect("shared CA tempdir");
        let data = dir.path().join("data");
        let out = super::proc::run(
            ezthrottle_cmd()
                .arg("ca")
                .arg("init")
                .arg("--data-dir")
                .arg(&data),
            EXIT_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "ezthrottle ca init: {}",
            super::proc::show(&out)
        );
        SharedCa {
            cert: data.join("ca").join("ca.pem"),
            key: data.join("ca").join("ca.key"),
            _dir: dir,
        }
    }

    /// The certificate (PEM).
    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).expect("read shared CA")
    }
}

impl Default for SharedCa {
    fn default() -> Self {
        SharedCa::new()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// A running `ezthrottle run`. Dropping it kills the process.
pub struct Ezthrottle {
    pub proxy: SocketAddr,
    pub control: SocketAddr,
    pub data_dir: PathBuf,
    /// `<data_dir>/ca/ca.pem`, or the copy of [`EzBuilder::ca_files`].
    pub ca_path: PathBuf,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    threads: Vec<JoinHandle<()>>,
    /// Stdout lines after the ready line (Mutex: the handle is shared across
    /// client threads, and a Receiver is not Sync).
    stdout_lines: std::sync::Mutex<mpsc::Receiver<String>>,
    work: Option<tempfile::TempDir>,
    quiet: bool,
    /// The redis-server `EZT_TEST_BACKEND=redis` gave this instance (dropped
    /// after the process, see `Drop`).
    redis: Option<Arc<super::redis_server::RedisServer>>,
}

impl Ezthrottle {
    /// Builder preset for `origin`: trusts the origin's test CA upstream,
    /// allows CONNECT to its TLS port, resolves `origin.test` to 127.0.0.1.
    pub fn for_origin(origin: &Origin) -> EzBuilder {
        EzBuilder::new()
            .upstream_ca(&origin.pki.ca_path)
            .connect_port(origin.tls_addr.port())
    }

    /// `http://127.0.0.1:<proxy port>`
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// `http://127.0.0.1:<control port><path>`
    pub fn control_url(&self, path: &str) -> String {
        format!("http://{}{}", self.control, path)
    }

    /// `POST /api/v1/jobs` with `job` as its JSON body (curl, no token).
    pub fn submit_job(&self, job: &serde_json::Value) -> super::curl::Fetch {
        super::curl::curl()
            .arg("-X")
            .arg("POST")
            .arg("-H")
            .arg("Content-Type: application/json")
            .arg("--data-binary")
            .arg(job.to_string())
            .fetch(&self.control_url("/api/v1/jobs"))
    }

    /// The redis-server `EZT_TEST_BACKEND=redis` put this instance on, if any.
    pub fn auto_redis(&self) -> Option<&super::redis_server::RedisServer> {
        self.redis.as_deref()
    }

    /// The CA key next to [`ca_path`](Self::ca_path).
    pub fn ca_key_path(&self) -> PathBuf {
        self.ca_path.with_file_name("ca.key")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process already stopped").id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The ezthrottle CA PEM as written to the data dir.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.ca_path.display()))
    }

    /// Send `signal` and wait (bounded) for the exit.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let child = self.child.take().expect("process already stopped");
        let pid = child.id();
        let waiter = Running::watch(child, format!("ezthrottle (pid {pid})"));
        send_signal(pid, signal);
        let out = waiter.wait(EXIT_TIMEOUT);
        self.join_threads();
        out.status
    }

    /// SIGKILL at once, from this process (no `kill` command started
    /// first), then the exit status: a crash the instant a test decides.
    pub fn kill_9_now(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("process already stopped");
        child.kill().expect("kill -9");
        let status = child.wait().expect("wait");
        self.join_threads();
        status
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn stop_sigterm(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// SIGINT, then the exit status (bounded wait).
    pub fn stop_sigint(&mut self) -> ExitStatus {
        self.stop_with("INT")
    }

    /// Start a signal-driven stop in the background; `wait` it later.
    pub fn signal_nowait(&mut self, signal: &str) -> Running {
        let child = self.child.take().expect("process already stopped");
        let pid = child.id();
        let waiter = Running::watch(child, format!("ezthrottle (pid {pid})"));
        send_signal(pid, signal);
        waiter
    }

    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        self.join_threads();
        status
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Ezthrottle {
    fn drop(&mut self) {
        self.kill_and_reap();
        self.join_threads();
        if std::thread::panicking() && !self.quiet {
            eprintln!(
                "--- ezthrottle stderr (proxy {}, control {}) ---\n{}\n--- end ---",
                self.proxy,
                self.control,
                tail(&self.stderr_log(), 300)
            );
        }
        // Keep the work dir alive until the process is gone.
        drop(self.work.take());
        // Then its Redis (unless a data dir's registry entry still holds it).
        drop(self.redis.take());
    }
}

/// `EZT_TEST_BACKEND=redis`: tests that start instances with
/// [`EzBuilder::start`] run them on the Redis backend (each on its own
/// redis-server). Unset or `embedded`: the embedded store.
pub fn redis_backend_requested() -> bool {
    match std::env::var("EZT_TEST_BACKEND").as_deref() {
        Ok("redis") => true,
        Ok("") | Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("EZT_TEST_BACKEND={other:?}: expected \"redis\" or \"embedded\""),
    }
}

/// Redis servers of explicit data dirs, so that an instance restarted on
/// the same data dir finds its state again (the state lives in Redis, not in
/// the dir). An entry lives while its dir exists or an instance holds it;
/// its server is also killed when the thread that started it (the test's)
/// ends ([`RedisOptions::die_with_thread`]), so none outlives the test run.
static DATA_DIR_REDIS: Mutex<Vec<(PathBuf, Arc<super::redis_server::RedisServer>)>> =
    Mutex::new(Vec::new());

fn redis_for_data_dir(dir: &Path) -> Arc<super::redis_server::RedisServer> {
    let key = dir.to_path_buf();
    let mut map = DATA_DIR_REDIS.lock().unwrap_or_else(|e| e.into_inner());
    // Forget servers whose dir is gone and that no instance holds.
    map.retain(|(d, s)| d.exists() || Arc::strong_count(s) > 1);
    if let Some((_, s)) = map.iter().find(|(d, _)| *d == key) {
        return s.clone();
    }
    let server = Arc::new(super::redis_server::RedisServer::start_with(
        super::redis_server::RedisOptions {
            die_with_thread: true,
            ..Default::default()
        },
    ));
    map.push((key, server.clone()));
    server
}

/// GET `path` on the control port; the body as text (panics unless 200).
pub fn control_get(ez: &Ezthrottle, path: &str) -> String {
    let r = super::raw::get(ez.control, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.text()
}
