//! The configuration, parsed once into typed, validated structs.
//!
//! CONTRACT (other modules code against these types; keep field names):
//! everything below is validated by `Config::load` / `Config::from_toml_str`,
//! so the rest of the program never re-checks a value.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

mod control;
mod effective;
mod egress;
mod encryption_key;
mod files;
mod idempotency;
mod jobs;
mod limits;
mod load;
pub mod presets;
mod proxy;
mod raw;
mod regions;
mod resolve;
mod retry;
mod storage;
mod tls;
mod webhooks;

// Each section's struct lives beside the code that builds and validates it.
pub use control::ControlConfig;
pub use encryption_key::EncryptionKey;
pub use idempotency::IdempotencyConfig;
pub use jobs::JobsConfig;
pub use limits::{DomainConfig, DomainLimits, LimitsConfig};
pub use proxy::{HeadLimits, ProxyConfig, DEFAULT_MAX_BUFFERED};
pub use regions::RegionConfig;
pub use retry::RetryConfig;
pub use storage::{MetricsConfig, RedisConfig, StorageBackend, StorageConfig};
pub use tls::{TlsConfig, TlsMode, UpstreamProtocol};
pub use webhooks::{validate_secret, WebhooksConfig, MAX_SECRET_BYTES, MIN_SECRET_CHARS};
#[cfg(test)]
mod tests;

/// A config error that names the file, the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file path, or `<defaults>` / `<command line>` / `<environment>`.
    pub file: String,
    /// Dotted key path, e.g. `limits.domains."api.example.com".rps`.
    pub key: String,
    pub reason: String,
}

/// Values from the command line / environment that beat the file (SPEC §2).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub control_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Do not check that the files the config names exist here: the config
    /// is for another machine (`config check --skip-file-checks` on a config
    /// rendered for a pod, whose files are mounted there).
    pub skip_file_checks: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (`None`: built-in defaults).
    pub source: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub proxy: ProxyConfig,
    pub control: ControlConfig,
    pub tls: TlsConfig,
    /// `[resolve]`: static host -> IP overrides (host lower-cased).
    pub resolve: BTreeMap<String, IpAddr>,
    pub limits: LimitsConfig,
    pub retry: RetryConfig,
    pub idempotency: IdempotencyConfig,
    pub webhooks: WebhooksConfig,
    pub jobs: JobsConfig,
    pub regions: BTreeMap<String, RegionConfig>,
    pub storage: StorageConfig,
    pub metrics: MetricsConfig,
    /// `[egress]`: where the proxy, jobs and webhooks may connect (SPEC §13).
    pub egress: EgressConfig,
}

/// `[egress]`: additions to the built-in egress policy (SPEC §13; the rules
/// themselves live in `crate::egress`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// Addresses and hosts opened beyond the defaults. Key `allow`.
    pub allow: Vec<EgressRule>,
    /// Ports jobs and webhooks may use besides 80 and 443 (inclusive ranges;
    /// a single port is `(p, p)`). Key `allow_ports`.
    pub allow_ports: Vec<(u16, u16)>,
    /// Addresses and hosts refused everywhere; beats `allow`. Key `deny`.
    pub deny: Vec<EgressRule>,
    /// Ports refused everywhere (inclusive ranges). Key `deny_ports`.
    pub deny_ports: Vec<(u16, u16)>,
}

/// One `[egress] allow` / `deny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRule {
    /// A CIDR, or one address (`/32`, `/128`).
    Net(ipnet::IpNet),
    /// An exact host name, lower-case, no trailing dot.
    Host(String),
    /// `*.example.com`: any name below `example.com` (stored as `.example.com`).
    Suffix(String),
}

impl Config {
    /// Load from a file, or built-in defaults when `path` is `None`, then
    /// apply overrides and validate.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (mut config, file) = match path {
            None => (
                Self::from_toml_str("", "<defaults>")?,
                "<defaults>".to_string(),
            ),
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: file.clone(),
                    key: "<file>".into(),
                    reason: format!("cannot read: {e}"),
                })?;
                let mut c = Self::from_toml_str(&text, &file)?;
                c.source = Some(p.to_path_buf());
                (c, file)
            }
        };
        if let Some(a) = overrides.listen {
            config.proxy.listen = a;
        }
        if let Some(a) = overrides.control_listen {
            config.control.listen = a;
        }
        if let Some(d) = &overrides.data_dir {
            config.data_dir = d.clone();
        }
        let cx = load::Ctx { file: &file };
        load::cross_checks(&cx, &config)?;
        if !overrides.skip_file_checks {
            files::check(&cx, &config)?;
        }
        Ok(config)
    }

    /// Parse TOML text; `file` names it in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        load::parse(text, file)
    }

    /// The config for `host` (lower-case, no port): an exact
    /// `[limits.domains]` entry, else the longest matching `*.suffix` entry.
    pub fn domain(&self, host: &str) -> Option<&DomainConfig> {
        if let Some(d) = self.limits.domains.get(host) {
            return Some(d);
        }
        self.limits
            .domains
            .iter()
            .filter_map(|(k, d)| {
                let suffix = k.strip_prefix("*.")?;
                let rest = host.strip_suffix(suffix)?;
                (rest.len() > 1 && rest.ends_with('.')).then_some((suffix.len(), d))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, d)| d)
    }

    /// TLS mode for a CONNECT host (default intercept).
    pub fn tls_mode(&self, host: &str) -> TlsMode {
        self.domain(host)
            .map(|d| d.tls)
            .unwrap_or(TlsMode::Intercept)
    }

    pub fn upstream_protocol(&self, host: &str) -> UpstreamProtocol {
        self.domain(host)
            .map(|d| d.upstream_protocol)
            .unwrap_or_default()
    }

    /// The preset for `host`, unless presets are off or a [limits.domains]
    /// table matches the host: a table the user wrote replaces the vendor
    /// defaults entirely, so what runs is always what the file says.
    pub fn preset(&self, host: &str) -> Option<&'static presets::Preset> {
        if !self.limits.presets || self.domain(host).is_some() {
            return None;
        }
        presets::lookup(host)
    }

    /// The headers whose values split `host`'s budget: the domain table's
    /// budget_key if it set one, else the preset's (when presets apply), else
    /// none (one budget per host, SPEC §5).
    pub fn budget_key(&self, host: &str) -> Vec<http::HeaderName> {
        if let Some(d) = self.domain(host) {
            return d.budget_key.clone().unwrap_or_default();
        }
        self.preset(host)
            .map(|p| p.budget_headers())
            .unwrap_or_default()
    }

    /// Effective limits for `host`.
    pub fn limits_for(&self, host: &str) -> &DomainLimits {
        self.domain(host)
            .map(|d| &d.limits)
            .unwrap_or(&self.limits.defaults)
    }

    /// The effective config as TOML (for `config check`), secrets masked.
    pub fn to_effective_toml(&self) -> String {
        effective::render(self)
    }
}
