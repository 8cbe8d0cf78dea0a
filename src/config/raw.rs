//! The file as written: every key optional, unknown keys rejected. `load.rs`
//! turns this into the validated `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_dir: Option<String>,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub resolve: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    #[serde(default)]
    pub webhooks: RawWebhooks,
    #[serde(default)]
    pub jobs: RawJobs,
    #[serde(default)]
    pub regions: BTreeMap<String, RawRegion>,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub egress: RawEgress,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    pub allow: Option<Vec<String>>,
    pub allow_ports: Option<Vec<toml::Value>>,
    pub deny: Option<Vec<String>>,
    pub deny_ports: Option<Vec<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<String>,
    pub connect_ports: Option<Vec<i64>>,
    pub allow_clients: Option<Vec<String>>,
    pub drain_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_request_line: Option<toml::Value>,
    pub max_header_line: Option<toml::Value>,
    pub max_head: Option<toml::Value>,
    pub max_headers: Option<i64>,
    pub head_timeout: Option<String>,
    pub max_buffered: Option<toml::Value>,
    pub threads: Option<i64>,
    pub trusted_clients: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub listen: Option<String>,
    #[serde(default)]
    pub api_keys: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
    pub upstream_ca_file: Option<String>,
    pub http2: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub rps: Option<f64>,
    pub max_concurrent: Option<i64>,
    pub burst: Option<i64>,
    pub queue_capacity: Option<i64>,
    pub max_wait: Option<String>,
    pub rps_ceiling: Option<f64>,
    pub concurrency_ceiling: Option<i64>,
    pub max_wait_ceiling: Option<String>,
    pub presets: Option<bool>,
    #[serde(default)]
    pub domains: BTreeMap<String, RawDomain>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomain {
    pub rps: Option<f64>,
    pub max_concurrent: Option<i64>,
    pub burst: Option<i64>,
    pub queue_capacity: Option<i64>,
    pub max_wait: Option<String>,
    pub pin: Option<bool>,
    pub hold_slot_while_open: Option<bool>,
    pub tls: Option<String>,
    pub upstream_protocol: Option<String>,
    pub regions: Option<Vec<String>>,
    pub retry: Option<RawRetry>,
    /// A string or a list of strings; `load.rs` checks the shape so the
    /// error can name the key and the accepted forms.
    pub budget_key: Option<toml::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_retries: Option<i64>,
    pub max_reroutes: Option<i64>,
    pub retry_codes: Option<Vec<i64>>,
    pub reroute_codes: Option<Vec<i64>>,
    pub max_buffered_body: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    pub ttl: Option<String>,
    pub max_stored_body: Option<toml::Value>,
    pub max_request_body: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobs {
    pub retention: Option<String>,
    pub deadline: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    pub secret: Option<String>,
    pub max_attempts: Option<i64>,
    pub backoff: Option<String>,
    pub backoff_cap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub proxy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub url_file: Option<String>,
    pub timeout: Option<String>,
    pub prefix: Option<String>,
    pub cluster: Option<bool>,
    /// Only read to refuse it: a key must not sit in the config file.
    pub encryption_key: Option<toml::Value>,
    pub encryption_key_file: Option<String>,
    pub encryption_key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub max_domains: Option<i64>,
}
