//! Config changes without a restart: `SIGHUP`, or a change of the config
//! file's content (how a Kubernetes ConfigMap update arrives: the mounted
//! file is swapped, no signal is sent), reloads the config.
//!
//! The new file is loaded and validated exactly as at start; a config that
//! does not validate is refused with a log line naming file, key and reason,
//! and the old one stays in force. What can change live — limits and domain
//! tables, presets, retry policy and regions, egress rules, API keys, CONNECT
//! ports, timeouts, jobs settings — takes effect for the next request, with
//! no connection dropped and no queued request lost (each domain's throttle
//! keeps its queue, see `Admission::reconfigure`). What cannot — the
//! listeners, worker threads, data dir, storage, TLS/CA, `[resolve]`,
//! metrics, idempotency and webhook settings, the request-head limits — is
//! kept as it was and named in a warning: those need a restart.
//!
//! The content is polled (SHA-256, every [`POLL`]) rather than watched with
//! inotify: a ConfigMap update replaces a symlinked directory, which file
//! watches follow badly, and one small read every two seconds costs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Config, Overrides};
use crate::state::Shared;

/// How often the config file's content is compared.
pub const POLL: Duration = Duration::from_secs(2);

/// The first 16 hex digits of the SHA-256 of `bytes` (what `/readyz`
/// shows as the config running).
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of the config file at `path` (`defaults` without a file).
pub fn file_hash(path: Option<&Path>) -> std::io::Result<String> {
    match path {
        None => Ok("defaults".into()),
        Some(p) => Ok(short_hash(&std::fs::read(p)?)),
    }
}

/// What a reload did.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The new config is in force; these keys changed but need a restart
    /// (their running values stay).
    Applied { needs_restart: Vec<&'static str> },
    /// Nothing changed.
    Unchanged,
}

/// Keys whose running values cannot change without a restart.
const RESTART_ONLY: &[&str] = &[
    "data_dir",
    "proxy.listen",
    "proxy.threads",
    "proxy.max_request_line",
    "proxy.max_header_line",
    "proxy.max_head",
    "proxy.max_headers",
    "proxy.max_buffered",
    "control.listen",
    "tls",
    "resolve",
    "storage",
    "metrics",
    "idempotency",
    "webhooks",
];

/// `new` with every restart-only value taken from `old`, and the names of
/// those that differed.
fn keep_restart_only(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let rendered = |c: &Config| {
        c.to_effective_toml()
            .parse::<toml::Table>()
            .unwrap_or_default()
    };
    let (a, b) = (rendered(old), rendered(&new));
    let at = |t: &toml::Table, key: &str| -> Option<toml::Value> {
        let mut parts = key.split('.');
        let mut v = t.get(parts.next()?)?.clone();
        for p in parts {
            v = v.get(p)?.clone();
        }
        Some(v)
    };
    let changed: Vec<&'static str> = RESTART_ONLY
        .iter()
        .copied()
        .filter(|k| at(&a, k) != at(&b, k))
        .collect();
    new.data_dir = old.data_dir.clone();
    new.proxy.listen = old.proxy.listen;
    new.proxy.threads = old.proxy.threads;
    new.proxy.head_limits = old.proxy.head_limits.clone();
    new.proxy.max_buffered = old.proxy.max_buffered;
    new.control.listen = old.control.listen;
    new.tls = old.tls.clone();
    new.resolve = old.resolve.clone();
    new.storage = old.storage.clone();
    new.metrics = old.metrics.clone();
    new.idempotency = old.idempotency.clone();
    new.webhooks = old.webhooks.clone();
    (new, changed)
}

/// Load `path` and put it in force. Errors name file, key and reason; the
/// running config is then untouched.
pub fn reload(shared: &Shared, path: &Path) -> Result<Outcome, crate::config::ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| crate::config::ConfigError {
        file: path.display().to_string(),
        key: "<file>".into(),
        reason: format!("cannot read: {e}"),
    })?;
    let hash = short_hash(&bytes);
    if **shared.config_hash.load() == hash {
        return Ok(Outcome::Unchanged);
    }
    let new = Config::load(Some(path), &Overrides::default())?;
    let old = shared.config.load_full();
    let (new, needs_restart) = keep_restart_only(&old, new);
    let new = Arc::new(new);
    shared.admission.reconfigure(new.clone());
    shared
        .egress
        .store(Arc::new(crate::egress::Egress::new(&new)));
    shared.config.store(new);
    shared.config_hash.store(Arc::new(hash));
    Ok(Outcome::Applied { needs_restart })
}

/// Reload on `SIGHUP` and whenever the file's content changes, until the
/// process ends. Every attempt is logged and counted in
/// `ezthrottle_config_reloads_total{result}`.
pub async fn watch_forever(shared: Arc<Shared>, path: Option<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    // Listening also keeps SIGHUP from ending the process (its default).
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the config file is still watched");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The content last looked at (in force, or refused): a refused file is
    // not tried again every tick, only when it changes again or on SIGHUP.
    let mut seen = (**shared.config_hash.load()).clone();
    loop {
        let why = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick() => {
                match path.as_deref().map(|p| file_hash(Some(p))) {
                    Some(Ok(h)) if h != seen => "the file changed",
                    // No file, unchanged, or unreadable for a moment (a
                    // ConfigMap swap): look again at the next tick.
                    _ => continue,
                }
            }
        };
        let Some(path) = path.as_deref() else {
            tracing::info!("SIGHUP: running on built-in defaults, no config file to reload");
            continue;
        };
        if let Ok(h) = file_hash(Some(path)) {
            seen = h;
        }
        let metrics = &shared.metrics;
        match reload(&shared, path) {
            Ok(Outcome::Applied { needs_restart }) => {
                metrics
                    .config_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(file = %path.display(), trigger = why, hash = %shared.config_hash.load(), "config reloaded");
                if !needs_restart.is_empty() {
                    tracing::warn!(keys = ?needs_restart, "these changed keys need a restart; their running values stay");
                }
            }
            Ok(Outcome::Unchanged) => {
                tracing::info!(file = %path.display(), trigger = why, "config unchanged");
            }
            Err(e) => {
                metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(trigger = why, error = %e, "config reload refused; the running config stays");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_keep_their_running_values_and_are_named() {
        let old = Config::from_toml_str(
            "[proxy]\nlisten = \"127.0.0.1:4000\"\n[limits]\nrps = 2.0\n",
            "old.toml",
        )
        .expect("old");
        let new = Config::from_toml_str(
            "[proxy]\nlisten = \"127.0.0.1:5000\"\n[limits]\nrps = 7.0\n",
            "new.toml",
        )
        .expect("new");
        let (applied, changed) = keep_restart_only(&old, new);
        assert_eq!(changed, vec!["proxy.listen"]);
        assert_eq!(applied.proxy.listen, old.proxy.listen);
        assert_eq!(applied.limits.defaults.rps, 7.0, "limits change live");
        let same = Config::from_toml_str("", "a.toml").expect("a");
        let (_, changed) =
            keep_restart_only(&same, Config::from_toml_str("", "b.toml").expect("b"));
        assert!(changed.is_empty());
    }

    #[test]
    fn hashes_are_short_and_stable() {
        assert_eq!(short_hash(b"x"), short_hash(b"x"));
        assert_ne!(short_hash(b"x"), short_hash(b"y"));
        assert_eq!(short_hash(b"x").len(), 16);
    }
}
