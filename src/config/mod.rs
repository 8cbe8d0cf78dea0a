//! The configuration, parsed once into typed, validated structs.
//!
//! CONTRACT (other modules code against these types; keep field names):
//! everything below is validated by `Config::load` / `Config::from_toml_str`,
//! so the rest of the program never re-checks a value.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod effective;
mod egress;
mod files;
mod load;
mod raw;
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

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// default 127.0.0.1:4000
    pub listen: SocketAddr,
    /// default [443]
    pub connect_ports: Vec<u16>,
    /// Client networks allowed to use the proxy; default loopback only
    /// (`["127.0.0.0/8", "::1/128"]`). Key `allow_clients`.
    pub allow_clients: Vec<ipnet::IpNet>,
    /// Longest time SIGTERM/SIGINT waits for in-flight requests; default 30s. Key `drain_timeout`.
    pub drain_timeout: Duration,
    /// Upstream TCP connect timeout; default 10s. Key `connect_timeout`.
    pub connect_timeout: Duration,
    /// Upstream read idle timeout; default 60s. Key `read_timeout`.
    pub read_timeout: Duration,
    /// A tunnel or an upgraded connection (WebSocket) that carries nothing
    /// either way for this long is closed; default 5m. Key `idle_timeout`.
    pub idle_timeout: Duration,
    /// Request-head limits, keys `max_request_line` (default 8KiB → 414),
    /// `max_header_line` (16KiB → 431), `max_head` (64KiB → 431) and
    /// `max_headers` (100 → 431); enforced by `accept::framing`.
    pub head_limits: crate::accept::framing::HeadLimits,
    /// How long a request head may take from its first byte (and a new
    /// connection its first head) before `408`; default 30s. Key `head_timeout`.
    pub head_timeout: Duration,
    /// Process-wide cap on client bytes held in memory (unfinished heads,
    /// pipelined bytes, bodies read ahead); over it → `503`. Default 64MiB.
    /// Key `max_buffered`.
    pub max_buffered: u64,
    /// Worker threads of the proxy service; default: number of CPUs. Key `threads`.
    pub threads: usize,
    /// Clients whose `X-EZThrottle-Workspace` and Proxy-Authorization user are
    /// believed when `[control] api_keys` are set (otherwise only a verified
    /// key names the workspace). Default empty. Key `trusted_clients`.
    pub trusted_clients: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// default 127.0.0.1:4001
    pub listen: SocketAddr,
    /// bearer token -> workspace
    pub api_keys: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub upstream_ca_file: Option<PathBuf>,
    /// Offer `h2` (beside `http/1.1`) in ALPN on intercepted connections.
    /// Default true; `false` is the escape hatch for a client whose HTTP/2
    /// misbehaves through us. Key `http2`.
    pub http2: bool,
}

/// Which HTTP version we speak to a domain's origin. Key
/// `upstream_protocol` (docs/http2.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// Follow the client: a request that arrived over HTTP/2 offers the
    /// origin `h2` (it may still pick HTTP/1.1), one that arrived over
    /// HTTP/1.1 stays HTTP/1.1. gRPC works end to end without configuration
    /// and HTTP/1.1 traffic keeps its one-exchange-per-connection accounting.
    #[default]
    Auto,
    /// Never offer `h2` (an origin whose HTTP/2 misbehaves).
    Http1,
    /// Offer `h2` for every request to a TLS origin, HTTP/1.1 clients too,
    /// so many client connections share a few multiplexed ones.
    H2,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Intercept,
    Tunnel,
}

/// The limits a domain runs with (also the `[limits]` defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainLimits {
    pub rps: f64,
    pub max_concurrent: u32,
    pub burst: u32,
    pub queue_capacity: usize,
    pub max_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// The `[limits]` table: defaults for every domain.
    pub defaults: DomainLimits,
    pub rps_ceiling: f64,
    pub concurrency_ceiling: u32,
    /// Longest max wait a request may ask for with `X-EZThrottle-Max-Wait`
    /// (longer asks are clamped; configured max waits may not exceed it).
    /// Default 1h. Key `max_wait_ceiling`.
    pub max_wait_ceiling: Duration,
    /// `[limits.domains."host"]`, keyed by lower-cased host (exact, or `*.suffix`).
    pub domains: BTreeMap<String, DomainConfig>,
    /// Use the built-in presets (`crate::admission::presets`) for hosts no
    /// `[limits.domains]` table matches; default true. Key `presets`.
    pub presets: bool,
}

/// One `[limits.domains."host"]` table, with `[limits]` defaults already
/// filled in for every key it did not set.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub limits: DomainLimits,
    /// Which limit keys this table set itself (for reporting `source = config`).
    pub rps_set: bool,
    pub max_concurrent_set: bool,
    pub pin: bool,
    /// A tunnel or an upgraded connection keeps its concurrency slot while
    /// open (default: it gives the slot back once established, having
    /// counted against the pace). Key `hold_slot_while_open`.
    pub hold_slot_while_open: bool,
    pub tls: TlsMode,
    pub upstream_protocol: UpstreamProtocol,
    /// Reroute order; default `["local"]`.
    pub regions: Vec<String>,
    /// Per-domain `[limits.domains."x".retry]` override, defaults filled from `[retry]`.
    pub retry: Option<RetryConfig>,
    /// Request headers whose values split this domain's budget (one throttle
    /// per credential). `None`: the table did not set `budget_key`;
    /// `Some(vec![])`: it set `budget_key = []`, one budget for the domain.
    pub budget_key: Option<Vec<http::HeaderName>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub max_reroutes: u32,
    pub retry_codes: Vec<u16>,
    pub reroute_codes: Vec<u16>,
    pub max_buffered_body: u64,
}

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub ttl: Duration,
    /// Responses larger than this pass through unstored (the key is freed).
    pub max_stored_body: u64,
    /// A keyed request's body is held in memory to fingerprint it before
    /// anything goes upstream; larger bodies get `413`. Key `max_request_body`.
    pub max_request_body: u64,
}

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Finished jobs (and their delivered or failed webhooks) are deleted
    /// this long after they ended; their keys are then free. Key `retention`.
    pub retention: Duration,
    /// A job still being retried this long after it was queued ends
    /// `failed` with its last answer. Default 24h. Key `deadline`.
    pub deadline: Duration,
    /// How long a claimed job stays its runner's without a renewal; renewed
    /// every third of it while the job runs. Default 30s. Key `lease`.
    pub lease: Duration,
}

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Default-workspace secret (or `EZTHROTTLE_WEBHOOK_SECRET`). Never printed.
    pub secret: Option<String>,
    pub max_attempts: u32,
    /// Delay before the 2nd attempt; doubles per attempt. Default 1s. Key `backoff`.
    pub backoff: Duration,
    /// Longest delay between two attempts; default 10m. Key `backoff_cap`.
    pub backoff_cap: Duration,
}

#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// `http://host:port` of the peer proxy.
    pub proxy: String,
}

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
    pub encryption_key: Option<crate::store::EncryptionKey>,
    /// Where the key came from, for `config check`: `file:/path` or `env:VAR`.
    pub encryption_key_source: Option<String>,
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

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub max_domains: usize,
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
    pub fn preset(&self, host: &str) -> Option<&'static crate::admission::presets::Preset> {
        if !self.limits.presets || self.domain(host).is_some() {
            return None;
        }
        crate::admission::presets::lookup(host)
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
