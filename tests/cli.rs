//! The command line (SPEC §2): `config check`, `ca init|path|export`, and
//! the precedence flag > env > file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::proc::{run, show};
use common::{ezthrottle_cmd, free_port, toml_str, Ezthrottle, Origin};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn ez(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = ezthrottle_cmd();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, CMD_TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A valid config in `dir` with `data_dir = <data_dir>`; returns its path.
fn good_config(dir: &Path, data_dir: &Path, proxy_port: u16) -> PathBuf {
    let path = dir.join("good.toml");
    let text = format!(
        "data_dir = {}\n\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\nconnect_ports = [443, 8443]\n\n\
         [control]\nlisten = \"127.0.0.1:{}\"\n\n[limits]\nrps = 7.5\nmax_concurrent = 3\n\n\
         [limits.domains.\"api.example.test\"]\nrps = 25.0\ntls = \"tunnel\"\n",
        toml_str(&data_dir.to_string_lossy()),
        free_port()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn config_check_accepts_a_good_file_and_prints_the_effective_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let cfg = good_config(dir.path(), &data, port);

    let out = ez(&["config", "check", "--config", s(&cfg)], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "effective config must show the proxy listen address:\n{text}"
    );
    assert!(
        text.contains("7.5"),
        "effective config must show rps:\n{text}"
    );
    assert!(
        text.contains("api.example.test"),
        "effective config must show the domain table:\n{text}"
    );
    assert!(
        text.contains(s(&data)),
        "effective config must show data_dir:\n{text}"
    );
}

#[test]
fn config_check_names_file_and_key_of_a_bad_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "bad-type.toml", "[limits]\nrps = \"fast\"\n");

    let out = ez(&["config", "check", "--config", s(&cfg)], &[]);
    assert!(!out.status.success(), "bad config accepted: {}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("limits.rps"), "must name the key: {err}");
    assert!(err.contains("bad-type.toml"), "must name the file: {err}");
}

#[test]
fn config_check_rejects_unknown_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "unknown.toml", "[proxy]\nlisten_addr = \"x\"\n");

    let out = ez(&["config", "check", "--config", s(&cfg)], &[]);
    assert!(
        !out.status.success(),
        "unknown key accepted: {}",
        show(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("listen_addr"), "must name the key: {err}");
    assert!(err.contains("unknown.toml"), "must name the file: {err}");
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("does-not-exist.toml");

    let out = ez(&["config", "check", "--config", s(&missing)], &[]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr(&out).contains("does-not-exist.toml"),
        "must name the missing file: {}",
        stderr(&out)
    );

    // `run` refuses too, promptly, and never prints the ready line.
    let out = ez(&["run", "--config", s(&missing)], &[]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(!stdout(&out).contains("ezthrottle ready"), "{}", show(&out));
}

#[test]
fn run_with_a_bad_config_exits_non_zero_without_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "bad.toml", "[limits]\nrps = \"fast\"\n");
    let out = ez(&["run", "--config", s(&cfg)], &[]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(!stdout(&out).contains("ezthrottle ready"), "{}", show(&out));
    assert!(stderr(&out).contains("limits.rps"), "{}", show(&out));
}

/// A Redis that cannot be reached at start is no start-up failure (the
/// replica serves at its share and connects later: docs/distributed.md),
/// and the log says so without the URL's password.
#[test]
fn a_redis_backend_that_is_down_at_start_starts_degraded_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = free_port();
    let cfg = write(
        dir.path(),
        "redis.toml",
        &format!(
            "data_dir = {}\n[proxy]\nlisten = \"127.0.0.1:{}\"\n[control]\nlisten = \"127.0.0.1:{}\"\n\
             [storage]\nbackend = \"redis\"\nurl = \"redis://user:hunter2@127.0.0.1:{closed}\"\n",
            toml_str(&dir.path().join("data").to_string_lossy()),
            free_port(),
            free_port()
        ),
    );
    let check = ez(&["config", "check", "--config", s(&cfg)], &[]);
    assert!(check.status.success(), "{}", show(&check));
    assert!(!stdout(&check).contains("hunter2"), "{}", show(&check));
    let mut ez = common::harness::EzBuilder::new()
        .redis_url(&format!("redis://user:hunter2@127.0.0.1:{closed}"))
        .start();
    // The log writer is asynchronous: wait for the line, not for "ready".
    let log = common::eventually(Duration::from_secs(15), "the redis warning", || {
        let log = ez.stderr_log();
        log.contains("redis not reachable at start").then_some(log)
    });
    assert!(!log.contains("hunter2"), "password echoed: {log}");
    ez.stop_sigterm();
}

#[test]
fn config_from_ezthrottle_config_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = good_config(dir.path(), &dir.path().join("data"), port);

    let out = ez(&["config", "check"], &[("EZTHROTTLE_CONFIG", &cfg)]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).contains(&format!("127.0.0.1:{port}")),
        "EZTHROTTLE_CONFIG was not used:\n{}",
        stdout(&out)
    );
}

#[test]
fn ca_init_path_and_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = good_config(dir.path(), &data, free_port());
    let ca_dir = data.join("ca");
    let ca_pem = ca_dir.join("ca.pem");

    let out = ez(&["ca", "init", "--config", s(&cfg)], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let pem = std::fs::read_to_string(&ca_pem)
        .unwrap_or_else(|e| panic!("ca init did not create {}: {e}", ca_pem.display()));
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "not a PEM certificate: {pem}"
    );
    assert!(
        !pem.contains("PRIVATE KEY"),
        "the CA PEM must not hold the key"
    );

    let keys: Vec<PathBuf> = std::fs::read_dir(&ca_dir)
        .expect("read ca dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("key"))
        })
        .collect();
    assert!(!keys.is_empty(), "no key file in {}", ca_dir.display());
    for key in &keys {
        let mode = std::fs::metadata(key)
            .expect("key metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
        let text = std::fs::read_to_string(key).expect("read key");
        assert!(
            text.contains("PRIVATE KEY"),
            "{} is not a key",
            key.display()
        );
    }

    // init again keeps the existing CA.
    let out = ez(&["ca", "init", "--config", s(&cfg)], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read_to_string(&ca_pem).expect("pem"), pem);

    let out = ez(&["ca", "path", "--config", s(&cfg)], &[]);
    assert!(out.status.success(), "{}", show(&out));
    let printed = PathBuf::from(stdout(&out).trim());
    assert_eq!(
        printed.canonicalize().expect("printed path exists"),
        ca_pem.canonicalize().expect("ca.pem"),
        "ca path printed {printed:?}"
    );

    let exported = dir.path().join("exported.pem");
    let out = ez(
        &["ca", "export", "--out", s(&exported), "--config", s(&cfg)],
        &[],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read_to_string(&exported).expect("exported"), pem);

    let out = ez(&["ca", "export", "--config", s(&cfg)], &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out).trim(), pem.trim());
}

#[test]
fn data_dir_env_beats_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file_dir = dir.path().join("from-file");
    let env_dir = dir.path().join("from-env");
    let cfg = good_config(dir.path(), &file_dir, free_port());

    // Before `ca init` the path is still printed, but the exit code says
    // there is no CA there yet (so `$(ezthrottle ca path)` fails loudly).
    let out = ez(
        &["ca", "path", "--config", s(&cfg)],
        &[("EZTHROTTLE_DATA_DIR", &env_dir)],
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).trim().starts_with(s(&env_dir)),
        "{}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca init"),
        "{}",
        show(&out)
    );

    let out = ez(
        &["ca", "init", "--config", s(&cfg)],
        &[("EZTHROTTLE_DATA_DIR", &env_dir)],
    );
    assert!(out.status.success(), "{}", show(&out));
    let out = ez(
        &["ca", "path", "--config", s(&cfg)],
        &[("EZTHROTTLE_DATA_DIR", &env_dir)],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout(&out).trim().starts_with(s(&env_dir)),
        "EZTHROTTLE_DATA_DIR must beat the file: {}",
        stdout(&out)
    );

    let out = ez(
        &["config", "check", "--config", s(&cfg)],
        &[("EZTHROTTLE_DATA_DIR", &env_dir)],
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains(s(&env_dir)), "{}", stdout(&out));
    assert!(!stdout(&out).contains(s(&file_dir)), "{}", stdout(&out));

    let out = ez(&["ca", "path", "--config", s(&cfg)], &[]);
    assert!(
        stdout(&out).trim().starts_with(s(&file_dir)),
        "without env the file's data_dir applies: {}",
        stdout(&out)
    );
}

#[test]
fn data_dir_flag_beats_env_which_beats_file() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file_dir = dir.path().join("from-file");
    let env_dir = dir.path().join("from-env");
    let flag_dir = dir.path().join("from-flag");
    // Embedded store: the runs below use three data dirs (three CAs) under
    // one `.data_dir`, which on one Redis would be replicas with different CAs.

    // flag + env + file: the flag wins.
    let mut ez = Ezthrottle::for_origin(&origin)
        .storage_embedded()
        .data_dir(&file_dir)
        .env("EZTHROTTLE_DATA_DIR", s(&env_dir))
        .arg("--data-dir")
        .arg(s(&flag_dir))
        .start();
    assert!(
        flag_dir.join("ca").join("ca.pem").exists(),
        "--data-dir must win: no CA in {}",
        flag_dir.display()
    );
    assert!(!env_dir.join("ca").exists(), "env dir was used");
    assert!(!file_dir.join("ca").exists(), "file dir was used");
    let served = common::raw::get(ez.control, "/ca.pem");
    assert_eq!(served.status, 200);
    assert_eq!(
        served.text().trim(),
        std::fs::read_to_string(flag_dir.join("ca").join("ca.pem"))
            .expect("pem")
            .trim()
    );
    assert!(ez.stop_sigterm().success());

    // env + file: env wins.
    let mut ez = Ezthrottle::for_origin(&origin)
        .storage_embedded()
        .data_dir(&file_dir)
        .env("EZTHROTTLE_DATA_DIR", s(&env_dir))
        .start();
    assert!(
        env_dir.join("ca").join("ca.pem").exists(),
        "env must beat the file"
    );
    assert!(!file_dir.join("ca").exists(), "file dir was used");
    assert!(ez.stop_sigterm().success());
}

#[test]
fn listen_flags_beat_the_file() {
    let origin = Origin::start();
    // The harness passes --listen/--control-listen with other ports than the
    // file's and checks the ready line names the flag addresses.
    let ez = Ezthrottle::for_origin(&origin).listen_flags().start();
    common::curl()
        .proxy(&ez)
        .fetch(&origin.http_url("/echo"))
        .assert_status(200);
}
