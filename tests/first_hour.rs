//! The first hour of a new user (issue 14, "Clear errors that say what to
//! do"): every failure a newcomer meets names its cause and its fix.
//!
//! - `502 upstream_tls_failed` names the reason (unknown issuer → the
//!   `[tls] upstream_ca_file` key; a name mismatch), and a rejected
//!   certificate is tried once, not retried;
//! - a client that does not trust our CA gets one warn line saying how to;
//! - `ca export` / `ca path` never create a CA;
//! - `config check` and `run` name a missing file's key;
//! - an invalid `EZTHROTTLE_LOG` stops the start, naming the variable;
//! - logs written to a file carry no ANSI colour codes;
//! - config errors name the key's own line.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proc::{run, show};
use common::{curl, error_code, error_message, eventually, ezthrottle_cmd, Ezthrottle, Origin};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP relay in front of `target` that counts the connections made to it:
/// how many TLS attempts the proxy made (the origin itself counts HTTP
/// requests, and a rejected handshake never gets that far).
struct CountingRelay {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl CountingRelay {
    fn start(target: SocketAddr) -> CountingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                pipe(&client, &upstream);
                pipe(&upstream, &client);
            }
        });
        CountingRelay { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copy `from` → `to` on a thread until either side ends.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn name_mismatch_is_named() {
    let origin = Origin::start();
    // The origin's certificate is for origin.test and a few names, not for mismatch.test.
    let ez = Ezthrottle::for_origin(&origin)
        .resolve("mismatch.test", "127.0.0.1")
        .start();
    let f = curl().proxy(&ez).cacert(&ez.ca_path).fetch(&format!(
        "https://mismatch.test:{}/echo",
        origin.tls_addr.port()
    ));
    assert_eq!(f.code, 502, "{}", f.describe());
    assert_eq!(error_code(&f.body), "upstream_tls_failed", "{}", f.text());
    let message = error_message(&f.body);
    assert!(
        message.contains("not valid for the name mismatch.test"),
        "{message}"
    );
    assert!(!message.contains("upstream_ca_file"), "{message}");
}

/// A rejected certificate would be rejected again: one TLS attempt only.
#[test]
fn a_rejected_certificate_is_not_retried() {
    let origin = Origin::start();
    let relay = CountingRelay::start(origin.tls_addr);
    let ez = Ezthrottle::for_origin(&origin)
        .no_upstream_ca()
        .connect_port(relay.port)
        .start();
    let f = curl()
        .proxy(&ez)
        .cacert(&ez.ca_path)
        .fetch(&format!("https://origin.test:{}/echo", relay.port));
    assert_eq!(f.code, 502, "{}", f.describe());
    assert_eq!(error_code(&f.body), "upstream_tls_failed", "{}", f.text());
    assert_eq!(
        relay.accepted(),
        1,
        "a TLS verification failure must not be retried"
    );
}

#[test]
fn a_client_that_does_not_trust_our_ca_gets_one_warning_and_logs_carry_no_colours() {
    let origin = Origin::start();
    let ez = Ezthrottle::for_origin(&origin).start();
    // No --cacert: curl (OpenSSL) aborts with an unknown_ca alert.
    for _ in 0..3 {
        let f = curl().proxy(&ez).fetch(&origin.https_url("/echo"));
        assert_ne!(f.exit, 0, "curl must not trust our CA: {}", f.describe());
    }
    let advice = "does not trust ezthrottle's CA";
    let log = eventually(Duration::from_secs(10), "the untrusted-CA warning", || {
        let log = ez.stderr_log();
        log.contains(advice).then_some(log)
    });
    assert_eq!(
        log.matches(advice).count(),
        1,
        "once per client and domain:\n{log}"
    );
    let line = log.lines().find(|l| l.contains(advice)).unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    let port = ez.control.port();
    assert!(
        line.contains(&format!("curl http://127.0.0.1:{port}/ca.pem")),
        "{line}"
    );
    assert!(line.contains("ezthrottle ca export"), "{line}");
    assert!(line.contains("origin.test"), "{line}");
    // Standard error is a file here: no ANSI colour codes anywhere.
    assert!(!log.contains("\x1b["), "ANSI codes in a log file:\n{log}");
}

#[test]
fn ca_export_and_path_never_create_a_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("empty-data");
    for args in [
        vec!["ca", "export"],
        vec!["ca", "export", "--out", "x.pem"],
        vec!["ca", "path"],
    ] {
        let mut cmd = ezthrottle_cmd();
        cmd.current_dir(dir.path())
            .args(&args)
            .arg("--data-dir")
            .arg(&data);
        let out = run(&mut cmd, CMD_TIMEOUT);
        assert!(!out.status.success(), "{args:?}: {}", show(&out));
        let err = stderr(&out);
        assert!(err.contains("no CA in data dir"), "{args:?}: {err}");
        assert!(err.contains(s(&data)), "{args:?} must name the dir: {err}");
        assert!(err.contains("ezthrottle ca init"), "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} created {}", data.display());
        assert!(!dir.path().join("x.pem").exists(), "{args:?} wrote a file");
    }
    // The default data dir, relative to where the command ran: named
    // absolute, and not created either.
    let mut cmd = ezthrottle_cmd();
    cmd.current_dir(dir.path()).args(["ca", "export"]);
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(!out.status.success(), "{}", show(&out));
    let default = dir.path().join("ezthrottle-data");
    assert!(stderr(&out).contains(s(&default)), "{}", show(&out));
    assert!(!default.exists(), "ca export created {}", default.display());

    // `ca init` creates; export then works.
    let mut cmd = ezthrottle_cmd();
    cmd.args(["ca", "init", "--data-dir"]).arg(&data);
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", show(&out));
    let mut cmd = ezthrottle_cmd();
    cmd.args(["ca", "export", "--data-dir"]).arg(&data);
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"));
}

#[test]
fn a_missing_upstream_ca_file_is_named_by_config_check_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("corp-ca.pem");
    let cfg = dir.path().join("ezthrottle.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n\n[proxy]\nlisten = \"127.0.0.1:{}\"\n\n[control]\nlisten = \"127.0.0.1:{}\"\n\n[tls]\nupstream_ca_file = {:?}\n",
            s(&dir.path().join("data")),
            common::free_port(),
            common::free_port(),
            s(&missing)
        ),
    )
    .expect("write config");
    for command in [&["config", "check"][..], &["run"][..]] {
        let mut cmd = ezthrottle_cmd();
        cmd.args(command).arg("--config").arg(&cfg);
        let out = run(&mut cmd, CMD_TIMEOUT);
        assert!(!out.status.success(), "{command:?}: {}", show(&out));
        let err = stderr(&out);
        assert!(err.contains("tls.upstream_ca_file"), "{command:?}: {err}");
        assert!(err.contains("does not exist"), "{command:?}: {err}");
        assert!(err.contains(s(&missing)), "{command:?}: {err}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ezthrottle ready"),
            "{command:?} started: {}",
            show(&out)
        );
    }
    // A config made for another machine (a chart's, for a pod where the
    // file is mounted) is checked without its files.
    let mut cmd = ezthrottle_cmd();
    cmd.args(["config", "check", "--skip-file-checks", "--config"])
        .arg(&cfg);
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("upstream_ca_file"));
}

#[test]
fn an_invalid_log_filter_stops_the_start_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = ezthrottle_cmd();
    cmd.env("EZTHROTTLE_LOG", "info,ezthrottle=loud")
        .args(["run", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args([
            "--control-listen",
            &format!("127.0.0.1:{}", common::free_port()),
        ]);
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("EZTHROTTLE_LOG"), "{err}");
    assert!(err.contains("not a valid log filter"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ezthrottle ready"),
        "{}",
        show(&out)
    );
}

#[test]
fn an_unknown_key_after_other_tables_names_its_own_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ezthrottle.toml");
    // Line 9 holds the unknown key.
    std::fs::write(
        &cfg,
        "[proxy]\nlisten = \"127.0.0.1:4000\"\n\n[limits]\nmax_wait = \"10s\"\n\n[limits.domains.\"a.test\"]\nrps = 3\nbogus = 1\n",
    )
    .expect("write config");
    let mut cmd = ezthrottle_cmd();
    cmd.args(["config", "check", "--config"]).arg(&cfg);
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(!out.status.success(), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("limits.domains.\"a.test\".bogus"), "{err}");
    assert!(err.contains("(line 9)"), "{err}");
}

/// `scripts/run` with a stand-in `cargo` (a real release build takes
/// minutes): the build's chatter goes to standard error, the binary is
/// looked for under `CARGO_BUILD_TARGET_DIR`, its path is said on standard
/// error, and standard output carries only what the binary prints (the
/// ready line).
#[test]
fn scripts_run_keeps_stdout_for_the_ready_line_and_finds_the_target_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = dir.path().join("bin");
    let target = dir.path().join("elsewhere");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    std::fs::create_dir_all(target.join("release")).expect("mkdir");
    let script = |path: &Path, body: &str| {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    // `cargo build` talks on stdout; `cargo metadata` is unavailable, so
    // the script falls back to the variables.
    script(
        &bin_dir.join("cargo"),
        "if [ \"$1\" = build ]; then echo '   Compiling ezthrottle (stand-in)'; exit 0; fi\nexit 1",
    );
    script(
        &target.join("release").join("ezthrottle"),
        "echo \"ezthrottle ready proxy=127.0.0.1:1 control=127.0.0.1:2 args=$*\"",
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = std::process::Command::new(repo.join("scripts").join("run"));
    cmd.env("PATH", path)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CARGO_BUILD_TARGET_DIR", &target)
        .args(["--listen", "127.0.0.1:9"]);
    let out = run(&mut cmd, CMD_TIMEOUT);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "ezthrottle ready proxy=127.0.0.1:1 control=127.0.0.1:2 args=run --listen 127.0.0.1:9",
        "stdout must hold the ready line only: {}",
        show(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("Compiling"),
        "build output goes to stderr: {err}"
    );
    let bin = target.join("release").join("ezthrottle");
    assert!(
        err.contains(&format!("binary: {}", bin.display())),
        "the binary's path is said: {err}"
    );
}
