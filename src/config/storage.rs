//! `[storage]` (embedded or Redis, encryption at rest) and `[metrics]`.

use std::time::Duration;

use super::load::{duration, format_duration, positive_u32, Ctx};
use super::raw::{RawMetrics, RawStorage};
use super::{ConfigError, EncryptionKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    Embedded,
    Redis(RedisConfig),
}

/// `[storage] backend = "redis"`: where the shared state lives (docs/distributed.md).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://`, possibly with user and password: a secret,
    /// never printed (see [`RedisConfig::shown_url`]).
    pub url: String,
    /// Where the URL came from: `config`, `env:VAR` or `file:/path`.
    pub url_source: String,
    /// Every Redis command gives up after this (`storage.timeout`, default 250ms).
    pub timeout: std::time::Duration,
    /// Every key starts with `<prefix>:` so deployments can share a server.
    pub prefix: String,
    /// `storage.cluster`: the URL names a seed node of a Redis Cluster.
    pub cluster: bool,
}

impl RedisConfig {
    /// The URL with any user and password masked.
    pub fn shown_url(&self) -> String {
        match self.url.split_once('@') {
            Some((scheme_user, host)) => {
                let scheme = scheme_user.split("://").next().unwrap_or("redis");
                format!("{scheme}://****@{host}")
            }
            None => self.url.clone(),
        }
    }
}

/// Never print the password in the URL.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown_url())
            .field("url_source", &self.url_source)
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .field("cluster", &self.cluster)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Encrypts stored job headers, bodies, results and webhook secrets at
    /// rest. Read at load time from `encryption_key_file` or the variable
    /// named by `encryption_key_env`; never inline. Debug-prints redacted.
    pub encryption_key: Option<EncryptionKey>,
    /// Where the key came from, for `config check`: `file:/path` or `env:VAR`.
    pub encryption_key_source: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub max_domains: usize,
}

/// `[storage] encryption_key_file` / `encryption_key_env`: the key is read
/// here so a missing file or variable, or a malformed key, is a config error
/// (also for `config check`). An inline `encryption_key` is refused: config
/// files end up in repositories, ConfigMaps and backups.
fn encryption_key(
    cx: &Ctx,
    raw: &RawStorage,
) -> Result<(Option<EncryptionKey>, Option<String>), ConfigError> {
    if raw.encryption_key.is_some() {
        return Err(cx.err(
            "storage.encryption_key",
            "a key must not be written in the config file; put it in a file (encryption_key_file = \"/path\") or an environment variable (encryption_key_env = \"VAR\")",
        ));
    }
    match (&raw.encryption_key_file, &raw.encryption_key_env) {
        (Some(_), Some(_)) => Err(cx.err(
            "storage.encryption_key_file",
            "set either encryption_key_file or encryption_key_env, not both",
        )),
        (Some(path), None) => {
            let key = "storage.encryption_key_file";
            if path.is_empty() {
                return Err(cx.err(key, "must not be empty"));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| cx.err(key, format!("cannot read {path}: {e}")))?;
            let k = EncryptionKey::parse(&text)
                .map_err(|reason| cx.err(key, format!("the key in {path} {reason}")))?;
            Ok((Some(k), Some(format!("file:{path}"))))
        }
        (None, Some(var)) => {
            let key = "storage.encryption_key_env";
            if var.is_empty() {
                return Err(cx.err(key, "must name an environment variable"));
            }
            let text = std::env::var(var).map_err(|e| {
                cx.err(
                    key,
                    format!("environment variable {var} is not usable: {e}"),
                )
            })?;
            let k = EncryptionKey::parse(&text).map_err(|reason| {
                cx.err(
                    key,
                    format!("the key in environment variable {var} {reason}"),
                )
            })?;
            Ok((Some(k), Some(format!("env:{var}"))))
        }
        (None, None) => Ok((None, None)),
    }
}

/// `[storage]` of the Redis backend. The URL may carry a password, so it can
/// come from a file or an environment variable (a Kubernetes Secret) instead
/// of the config file; it is read here so that a missing one is a config
/// error naming the key.
fn redis_config(cx: &Ctx, raw: &RawStorage) -> Result<RedisConfig, ConfigError> {
    let given = [
        raw.url.is_some(),
        raw.url_env.is_some(),
        raw.url_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(cx.err("storage.url", "set only one of url, url_env and url_file"));
    }
    let (key, url, url_source) = if let Some(u) = &raw.url {
        ("storage.url", u.clone(), "config".to_string())
    } else if let Some(var) = &raw.url_env {
        let key = "storage.url_env";
        if var.is_empty() {
            return Err(cx.err(key, "must name an environment variable"));
        }
        let u = std::env::var(var).map_err(|e| {
            cx.err(
                key,
                format!("environment variable {var} is not usable: {e}"),
            )
        })?;
        (key, u.trim().to_string(), format!("env:{var}"))
    } else if let Some(path) = &raw.url_file {
        let key = "storage.url_file";
        if path.is_empty() {
            return Err(cx.err(key, "must not be empty"));
        }
        let u = std::fs::read_to_string(path)
            .map_err(|e| cx.err(key, format!("cannot read {path}: {e}")))?;
        (key, u.trim().to_string(), format!("file:{path}"))
    } else {
        return Err(cx.err(
            "storage.url",
            "is required with backend = \"redis\" (or url_env / url_file)",
        ));
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(cx.err(
            key,
            format!(
                "expected redis://host:port or rediss://..., got {:?}",
                mask_url(&url)
            ),
        ));
    }
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(cx.err(
            key,
            format!(
                "{:?} is not a usable Redis URL: {}",
                mask_url(&url),
                e.category()
            ),
        ));
    }
    let timeout = match &raw.timeout {
        Some(t) => duration(cx, "storage.timeout", t)?,
        None => Duration::from_millis(250),
    };
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        return Err(cx.err(
            "storage.timeout",
            format!(
                "must be between 1ms and 10s, got {}",
                format_duration(timeout)
            ),
        ));
    }
    let prefix = raw.prefix.clone().unwrap_or_else(|| "ezt".to_string());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(cx.err(
            "storage.prefix",
            format!("must be 1-64 letters, digits, '-', '_' or '.', got {prefix:?}"),
        ));
    }
    Ok(RedisConfig {
        url,
        url_source,
        timeout,
        prefix,
        cluster: raw.cluster.unwrap_or(false),
    })
}

fn mask_url(u: &str) -> String {
    // redis://user:password@host — never echo a password.
    match u.split_once('@') {
        Some((_, host)) => format!("****@{host}"),
        None => u.to_string(),
    }
}

pub(super) fn build(cx: &Ctx, s: &RawStorage) -> Result<StorageConfig, ConfigError> {
    let backend = match s.backend.as_deref() {
        None | Some("embedded") => {
            for (key, set) in [
                ("storage.url", s.url.is_some()),
                ("storage.url_env", s.url_env.is_some()),
                ("storage.url_file", s.url_file.is_some()),
                ("storage.timeout", s.timeout.is_some()),
                ("storage.prefix", s.prefix.is_some()),
                ("storage.cluster", s.cluster.is_some()),
            ] {
                if set {
                    return Err(cx.err(key, "only used with backend = \"redis\""));
                }
            }
            StorageBackend::Embedded
        }
        Some("redis") => StorageBackend::Redis(redis_config(cx, s)?),
        Some(other) => {
            return Err(cx.err(
                "storage.backend",
                format!("expected \"embedded\" or \"redis\", got {other:?}"),
            ))
        }
    };

    let (encryption_key, encryption_key_source) = encryption_key(cx, s)?;
    Ok(StorageConfig {
        backend,
        encryption_key,
        encryption_key_source,
    })
}

pub(super) fn build_metrics(cx: &Ctx, m: &RawMetrics) -> Result<MetricsConfig, ConfigError> {
    Ok(MetricsConfig {
        max_domains: positive_u32(
            cx,
            "metrics.max_domains",
            m.max_domains.unwrap_or(500),
            1_000_000,
        )? as usize,
    })
}
