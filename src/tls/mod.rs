//! TLS: the local CA that signs intercepted hosts' certificates, the per-host
//! leaf cache, and the trust roots for upstream connections.
//!
//! CONTRACT (used by accept/, control/, cli.rs, server.rs):
//! - `LocalCa::load_or_create(&Config) -> Result<LocalCa, TlsError>`: uses
//!   `[tls] ca_cert`/`ca_key` when set, else `<data_dir>/ca/ca.pem` + `ca.key`
//!   (created on first use, key mode 0600, dirs created), reused after.
//! - `LocalCa::load_existing(&Config) -> Result<Option<LocalCa>, TlsError>` (no create).
//! - `LocalCa::cert_pem(&self) -> &str`, `LocalCa::cert_path(&Config) -> PathBuf`.
//! - `LeafCache::new(Arc<LocalCa>, http2: bool) -> LeafCache`;
//!   `LeafCache::server_config(&self, host: &str) -> Result<Arc<pingora::tls::ServerConfig>, TlsError>`
//!   mints (rcgen, ECDSA P-256, DNS or IP SAN) and caches per host; ALPN `http/1.1` only.
//! - `upstream_roots::bundle_path(&Config) -> Result<Option<PathBuf>, TlsError>`: `None` when no
//!   `upstream_ca_file` (pingora then uses the system roots); else writes system roots + that file
//!   into `<data_dir>/tls/upstream-roots.pem` and returns its path.

pub mod ca;
pub mod client_trust;
pub mod mint;
pub mod upstream_roots;

pub use ca::LocalCa;
pub use mint::LeafCache;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A setting combination that cannot work (e.g. `ca_cert` without `ca_key`).
    #[error("{0}")]
    Config(String),
    /// A CONNECT host no certificate can be minted for. `host` is already
    /// `{:?}`-quoted and length-capped, since it comes from the client.
    #[error("cannot mint a certificate for {host}: {reason}")]
    InvalidHost { host: String, reason: String },
}
