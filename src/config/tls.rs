//! `[tls]`: our CA, extra upstream CAs, HTTP/2 to clients; the per-domain
//! TLS mode and upstream protocol.

use std::path::PathBuf;

use super::load::Ctx;
use super::raw::RawTls;
use super::ConfigError;

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

pub(super) fn build(cx: &Ctx, t: &RawTls) -> Result<TlsConfig, ConfigError> {
    let path = |v: &Option<String>| v.as_ref().map(PathBuf::from);
    let tls = TlsConfig {
        ca_cert: path(&t.ca_cert),
        ca_key: path(&t.ca_key),
        upstream_ca_file: path(&t.upstream_ca_file),
        http2: t.http2.unwrap_or(true),
    };
    if tls.ca_cert.is_some() != tls.ca_key.is_some() {
        let key = if tls.ca_cert.is_some() {
            "tls.ca_key"
        } else {
            "tls.ca_cert"
        };
        return Err(cx.err(key, "tls.ca_cert and tls.ca_key must be set together"));
    }
    Ok(tls)
}
