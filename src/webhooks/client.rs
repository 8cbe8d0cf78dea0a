//! The HTTP client webhooks are POSTed with: rustls trusting the system roots
//! plus `[tls] upstream_ca_file` (SPEC §4, same trust as upstream traffic),
//! `[resolve]` overrides, no proxy from the environment (the process may
//! itself be somebody's `HTTP_PROXY`), no redirects (a 3xx is not a 2xx),
//! bounded connect and request times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::config::Config;
use crate::egress::{Egress, Purpose};
use crate::resolve::Resolver;

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

/// The webhook HTTP client and the egress policy its connections keep.
#[derive(Clone)]
pub struct WebhookClient {
    pub http: reqwest::Client,
    pub egress: Arc<Egress>,
    pub resolver: Arc<Resolver>,
}

impl WebhookClient {
    /// The egress check before a delivery: the URL as written, then every
    /// address its host resolves to, with the port (our own listeners are a
    /// loop). reqwest resolves again through [`EgressResolver`], which keeps
    /// only the addresses the policy allows, so a changed DNS answer cannot
    /// reach a refused address; it is told no port, so a name that turns
    /// into one of our own listeners in between is the one thing it cannot
    /// see — only possible where `[egress] allow` opened loopback.
    pub async fn check(&self, url: &url::Url) -> Result<(), String> {
        let (host, port) =
            crate::egress::url_host_port(url).ok_or("the webhook URL has no host or port")?;
        match self
            .egress
            .resolve(&self.resolver, Purpose::Webhook, &host, port)
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(refusal)) => Err(format!("egress_denied: {refusal}")),
            // Unresolvable now: let the attempt fail (and retry) as usual.
            Err(_) => Ok(()),
        }
    }
}

/// reqwest's DNS hook: our resolver (`[resolve]` overrides included), keeping
/// only addresses the egress policy allows for webhooks.
struct EgressResolver {
    egress: Arc<Egress>,
    resolver: Arc<Resolver>,
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.egress.clone();
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let ips = resolver.resolve(&host).await.map_err(
                |e| -> Box<dyn std::error::Error + Send + Sync> { e.to_string().into() },
            )?;
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = ips
                .into_iter()
                .filter(|ip| match egress.check_ip(Purpose::Webhook, &host, *ip) {
                    Ok(()) => true,
                    Err(r) => {
                        refusal.get_or_insert(r);
                        false
                    }
                })
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if allowed.is_empty() {
                let why = refusal
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| format!("{host}: no address"));
                return Err(format!("egress_denied: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub fn build(config: &Config) -> Result<WebhookClient, ClientError> {
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
    let egress = Arc::new(Egress::new(config));
    let resolver = Arc::new(Resolver::new(config).map_err(|e| ClientError::Build(e.to_string()))?);
    let http = builder
        .dns_resolver(Arc::new(EgressResolver {
            egress: egress.clone(),
            resolver: resolver.clone(),
        }))
        .build()
        .map_err(|e| ClientError::Build(e.to_string()))?;
    Ok(WebhookClient {
        http,
        egress,
        resolver,
    })
}
