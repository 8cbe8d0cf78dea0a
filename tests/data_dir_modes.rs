//! Everything under the data dir is private: files 0600, directories 0700,
//! whatever the umask the binary runs with — and a data dir left by an older
//! version (world-readable database) is fixed at start, with a warning.
//! Real binary started through `sh -c 'umask 000; exec …'`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{curl, Ezthrottle, Origin};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every path under `dir` (not following symlinks), with `dir` itself.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
                out.push(e.path());
            }
        }
        i += 1;
    }
    out
}

/// Assert every file is 0600 and every directory 0700; returns the paths.
fn assert_private(dir: &Path) -> Vec<PathBuf> {
    let all = walk(dir);
    let loose: Vec<String> = all
        .iter()
        .filter(|p| {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            mode(p) != want
        })
        .map(|p| format!("{} {:04o}", p.display(), mode(p)))
        .collect();
    assert!(
        loose.is_empty(),
        "not private under the data dir: {loose:?}"
    );
    all
}

/// Make the data dir busy enough that SQLite has its WAL and SHM files and
/// the CA and the trust bundle exist.
fn use_it(ez: &Ezthrottle, origin: &Origin) {
    curl()
        .proxy(ez)
        .fetch(&origin.http_url("/echo"))
        .assert_status(200);
    let f = curl()
        .arg("-X")
        .arg("POST")
        .arg("-H")
        .arg("Content-Type: application/json")
        .arg("--data-binary")
        .arg(r#"{"primary_secret":"0123456789abcdef0123"}"#)
        .fetch(&ez.control_url("/api/v1/webhook-secrets"));
    f.assert_status(200);
}

#[test]
fn a_fresh_data_dir_under_umask_000_is_private_without_warnings() {
    let origin = Origin::start();
    // Checks the embedded store's files (ezthrottle.db, -wal, -shm).
    let mut ez = Ezthrottle::for_origin(&origin)
        .storage_embedded()
        .umask(0o000)
        .start();
    use_it(&ez, &origin);
    let data = ez.data_dir.clone();
    let all = assert_private(&data);
    let names: Vec<String> = all
        .iter()
        .filter_map(|p| p.strip_prefix(&data).ok())
        .map(|p| p.display().to_string())
        .collect();
    for want in [
        "ezthrottle.db",
        "ezthrottle.db-wal",
        "ezthrottle.db-shm",
        "ca/ca.key",
        "ca/ca.pem",
        "tls/upstream-roots.pem",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    ez.stop_sigterm();
    let log = ez.stderr_log();
    assert!(!log.contains("readable by others"), "no fix needed: {log}");
}

#[test]
fn a_world_readable_data_dir_from_an_older_version_is_fixed_with_a_warning() {
    let origin = Origin::start();
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    // A previous run leaves its database, WAL, CA and trust bundle…
    // Loosens and re-checks the embedded store's files (ezthrottle.db…).
    let mut first = Ezthrottle::for_origin(&origin)
        .storage_embedded()
        .data_dir(&data)
        .start();
    use_it(&first, &origin);
    first.stop_sigterm();
    // …world-readable, as versions before this one wrote them under umask 022.
    let mut loosened = Vec::new();
    for p in walk(&data) {
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
        loosened.push(p);
    }
    assert!(mode(&data.join("ezthrottle.db")) == 0o644);
    assert!(loosened.len() >= 6, "{loosened:?}");

    let mut ez = Ezthrottle::for_origin(&origin)
        .storage_embedded()
        .data_dir(&data)
        .umask(0o000)
        .start();
    // Still the same store: the secret set by the first run is there.
    curl()
        .fetch(&ez.control_url("/api/v1/webhook-secrets"))
        .assert_status(200);
    use_it(&ez, &origin);
    assert_private(&data);
    ez.stop_sigterm();
    let log = ez.stderr_log();
    for f in ["ezthrottle.db", "ca.key", "ca.pem"] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("readable by others; fixed")
                && l.contains(f)),
            "no warning for {f}:\n{log}"
        );
    }
    assert!(
        log.contains("old_mode=\"0644\"") || log.contains("old_mode=0644"),
        "{log}"
    );
}
