//! Files the config refers to (`[tls] ca_cert`, `ca_key`,
//! `upstream_ca_file`): each must exist and be readable when the config is
//! loaded, so `config check` refuses what `run` would refuse, and both name
//! the key. (`[storage] url_file` and `encryption_key_file` are read while
//! parsing and say the same on their own.)

use std::path::Path;

use super::load::Ctx;
use super::{Config, ConfigError};

/// Every file-valued key, checked in file order.
pub(super) fn check(cx: &Ctx, c: &Config) -> Result<(), ConfigError> {
    let files = [
        ("tls.ca_cert", &c.tls.ca_cert),
        ("tls.ca_key", &c.tls.ca_key),
        ("tls.upstream_ca_file", &c.tls.upstream_ca_file),
    ];
    for (key, path) in files {
        if let Some(path) = path {
            readable(cx, key, path)?;
        }
    }
    Ok(())
}

/// `path` is a regular file we can open for reading. Opening (not only
/// `metadata`) is what catches a file owned by another user.
fn readable(cx: &Ctx, key: &str, path: &Path) -> Result<(), ConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| cx.err(key, format!("{shown} {}", why(&e))))?;
    if meta.is_dir() {
        return Err(cx.err(key, format!("{shown} is a directory, not a file")));
    }
    std::fs::File::open(path).map_err(|e| cx.err(key, format!("{shown} {}", why(&e))))?;
    Ok(())
}

fn why(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "is not readable (permission denied)".into(),
        _ => format!("cannot be read: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn load(toml: &str, dir: &Path) -> Result<Config, ConfigError> {
        let file = dir.join("ezthrottle.toml");
        std::fs::write(&file, toml).expect("write config");
        Config::load(Some(&file), &Overrides::default())
    }

    #[test]
    fn missing_upstream_ca_file_names_the_key_and_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let err = load(
            &format!(
                "[tls]\nupstream_ca_file = {:?}\n",
                missing.display().to_string()
            ),
            dir.path(),
        )
        .expect_err("missing file must be refused");
        assert_eq!(err.key, "tls.upstream_ca_file");
        assert!(err.reason.contains("does not exist"), "{err}");
        assert!(err.reason.contains("nope.pem"), "{err}");
    }

    #[test]
    fn directories_and_present_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(
            &format!(
                "[tls]\nupstream_ca_file = {:?}\n",
                dir.path().display().to_string()
            ),
            dir.path(),
        )
        .expect_err("a directory is not a file");
        assert!(err.reason.contains("is a directory"), "{err}");

        let cert = dir.path().join("ca.pem");
        let key = dir.path().join("ca.key");
        std::fs::write(&cert, "x").expect("write");
        let err = load(
            &format!(
                "[tls]\nca_cert = {:?}\nca_key = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
            dir.path(),
        )
        .expect_err("missing key");
        assert_eq!(err.key, "tls.ca_key");
        std::fs::write(&key, "x").expect("write");
        let ok = load(
            &format!(
                "[tls]\nca_cert = {:?}\nca_key = {:?}\nupstream_ca_file = {:?}\n",
                cert.display().to_string(),
                key.display().to_string(),
                cert.display().to_string()
            ),
            dir.path(),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
