//! The HTTP client webhooks are POSTed with: rustls trusting the system roots
//! plus `[tls] upstream_ca_file` (SPEC §4, same trust as upstream traffic),
//! `[resolve]` overrides, no proxy from the environment (the process may
//! itself be somebody's `HTTP_PROXY`), no redirects (a 3xx is not a 2xx),
//! bounded connect and request times.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::config::Config;

/// Bound on one delivery attempt: connect, send, and the response head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the TCP (and TLS) connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tls.upstream_ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("webhook HTTP client: {0}")]
    Build(String),
}

pub fn build(config: &Config) -> Result<reqwest::Client, ClientError> {
    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
    let mut check = RootCertStore::empty();
    match pingora::tls::load_native_certs() {
        Ok(certs) => {
            // reqwest refuses the whole client if one root fails to parse;
            // skip the bad ones (as the upstream bundle does).
            for cert in certs {
                if check.add(cert.clone()).is_ok() {
                    roots.push(cert);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhooks: cannot load the system trust roots");
        }
    }
    if let Some(path) = &config.tls.upstream_ca_file {
        let err = |reason: String| ClientError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("unreadable PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err("contains no PEM certificate".into()));
        }
        for (i, cert) in certs.into_iter().enumerate() {
            check.add(cert.clone()).map_err(|e| {
                err(format!(
                    "certificate #{} is not usable as a trust anchor: {e}",
                    i + 1
                ))
            })?;
            roots.push(cert);
        }
    }

    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!(
            "ezthrottle/",
            env!("CARGO_PKG_VERSION"),
            " webhooks"
        ));
    for cert in roots {
        let cert = reqwest::Certificate::from_der(cert.as_ref())
            .map_err(|e| ClientError::Build(e.to_string()))?;
        builder = builder.add_root_certificate(cert);
    }
    for (host, ip) in &config.resolve {
        // The port of the URL is used; this one is ignored.
        builder = builder.resolve(host, SocketAddr::new(*ip, 0));
    }
    builder
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))
}
