//! The front door: a pingora `ServerApp` on the proxy listener.
//!
//! pingora's HTTP proxy cannot see CONNECT (it answers 405 before any hook),
//! so every connection starts here: the client allow-list is checked, then
//! each request on the connection is sniffed. Plain requests go to pingora's
//! HTTP engine (our [`Pipeline`](crate::pipeline::Pipeline)); a CONNECT is
//! read here and becomes a tunnel or an intercepted TLS session. The
//! keep-alive loop is ours so that a CONNECT after a plain GET on the same
//! connection works.

pub mod connect;
pub mod intercept;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::config::TlsMode;
use crate::error::ProxyError;
use crate::pipeline::ctx::ConnInfo;
use crate::pipeline::Pipeline;
use crate::state::Shared;

/// How long an idle keep-alive connection waits for its next request.
const KEEPALIVE: Duration = Duration::from_secs(60);

pub struct FrontDoor {
    pub shared: Arc<Shared>,
    pub proxy: Arc<HttpProxy<Pipeline>>,
}

/// Whether `ip` may use the proxy port: `[proxy] allow_clients`, and this
/// host itself always — the job runner sends every job attempt through this
/// listener (`jobs/attempt.rs`), from loopback or from the listen address.
fn allowed(ip: std::net::IpAddr, listen: std::net::IpAddr, allow: &[ipnet::IpNet]) -> bool {
    ip.is_loopback() || ip == listen || allow.iter().any(|net| net.contains(&ip))
}

impl FrontDoor {
    pub fn new(shared: Arc<Shared>, proxy: Arc<HttpProxy<Pipeline>>) -> Self {
        FrontDoor { shared, proxy }
    }

    fn client_allowed(&self, client: Option<SocketAddr>) -> Result<(), ProxyError> {
        match client {
            Some(addr) => {
                let ip = addr.ip();
                // `::ffff:127.0.0.1` on a dual-stack socket is the IPv4 client.
                let ip = match ip {
                    std::net::IpAddr::V6(v6) => {
                        v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip)
                    }
                    v4 => v4,
                };
                let proxy = &self.shared.config.proxy;
                if allowed(ip, proxy.listen.ip(), &proxy.allow_clients) {
                    Ok(())
                } else {
                    Err(ProxyError::ClientNotAllowed(ip))
                }
            }
            // Not an inet socket (cannot happen on a TCP listener): refuse.
            None => Err(ProxyError::Internal),
        }
    }

    async fn handle_connect(
        self: &Arc<Self>,
        mut stream: Stream,
        conn: ConnInfo,
        shutdown: &ShutdownWatch,
    ) {
        let metrics = &self.shared.metrics;
        let target = match connect::read_head(&mut stream).await {
            Ok(t) => t,
            Err(err) => {
                metrics
                    .proxy_errors_total
                    .with_label_values(&[err.code()])
                    .inc();
                connect::refuse(&mut stream, &err).await;
                return;
            }
        };
        let ports = &self.shared.config.proxy.connect_ports;
        if !ports.contains(&target.port) {
            let err = ProxyError::ConnectPortDenied {
                port: target.port,
                allowed: ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            metrics
                .connections_total
                .with_label_values(&["denied"])
                .inc();
            metrics
                .proxy_errors_total
                .with_label_values(&[err.code()])
                .inc();
            tracing::info!(domain = %target.host, port = target.port, "CONNECT port denied");
            connect::refuse(&mut stream, &err).await;
            return;
        }
        if targets_self(&target.host, target.port, self.shared.config.proxy.listen) {
            let err = ProxyError::ProxyLoop;
            metrics
                .proxy_errors_total
                .with_label_values(&[err.code()])
                .inc();
            tracing::warn!(domain = %target.host, port = target.port, "CONNECT to the proxy itself");
            connect::refuse(&mut stream, &err).await;
            return;
        }
        match self.shared.config.tls_mode(&target.host) {
            TlsMode::Tunnel => {
                metrics
                    .connections_total
                    .with_label_values(&["connect_tunnel"])
                    .inc();
                tunnel::run(&self.shared, stream, &target, shutdown).await;
            }
            TlsMode::Intercept => {
                metrics
                    .connections_total
                    .with_label_values(&["connect_intercept"])
                    .inc();
                intercept::run(self, stream, conn, target, shutdown).await;
            }
        }
    }
}

/// A CONNECT aimed at our own listener by address (`127.0.0.1:4000`,
/// `localhost:4000`) is refused before `200`, so the client sees `508` rather
/// than a handshake with ourselves. Names that resolve to us are caught later
/// by the upstream phase, like plain requests.
fn targets_self(host: &str, port: u16, listen: SocketAddr) -> bool {
    let ip = if host == "localhost" {
        Some(std::net::IpAddr::from([127, 0, 0, 1]))
    } else {
        host.parse().ok()
    };
    ip.is_some_and(|ip| crate::pipeline::upstream::is_self(SocketAddr::new(ip, port), listen))
}

/// Wait for the first bytes of the next request; `None` when the client
/// closed, went idle past the keep-alive, or the server is shutting down.
async fn next_request(stream: &mut Stream, shutdown: &ShutdownWatch) -> Option<[u8; 8]> {
    let mut peek = [0u8; 8];
    let mut shutdown = shutdown.clone();
    if *shutdown.borrow() {
        return None;
    }
    tokio::select! {
        r = tokio::time::timeout(KEEPALIVE, stream.try_peek(&mut peek)) => match r {
            Ok(Ok(true)) => Some(peek),
            _ => None,
        },
        _ = shutdown.changed() => None,
    }
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()));
        if let Err(err) = self.client_allowed(client) {
            self.shared
                .metrics
                .connections_total
                .with_label_values(&["denied"])
                .inc();
            tracing::warn!(client = ?client, "client not allowed");
            connect::refuse(&mut stream, &err).await;
            return None;
        }
        let conn = ConnInfo {
            client,
            connect: None,
        };
        let mut settings = None;
        let mut counted = false;
        loop {
            let first = next_request(&mut stream, shutdown).await?;
            if &first == b"CONNECT " {
                self.handle_connect(stream, conn, shutdown).await;
                return None;
            }
            if !counted {
                counted = true;
                self.shared
                    .metrics
                    .connections_total
                    .with_label_values(&["plain"])
                    .inc();
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(s) = settings.take() {
                pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session);
            }
            session.set_keepalive(if *shutdown.borrow() {
                None
            } else {
                Some(KEEPALIVE.as_secs())
            });
            session.set_connection_user_context(Some(Box::new(conn.clone())));
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (s, p) = reused.consume();
            stream = s;
            settings = p;
        }
    }

    async fn cleanup(&self) {
        // Wakes keep-alive connections parked inside pingora so shutdown is not held up.
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn allow_list_plus_this_host() {
        let nets: Vec<ipnet::IpNet> = vec!["10.42.0.0/16".parse().unwrap()];
        let listen = "10.42.7.9".parse().unwrap();
        let ip = |s: &str| s.parse().unwrap();
        assert!(allowed(ip("10.42.1.2"), listen, &nets));
        assert!(!allowed(ip("10.43.1.2"), listen, &nets));
        assert!(!allowed(ip("192.168.1.1"), listen, &nets));
        // The job runner: loopback, or the listen address itself.
        assert!(allowed(ip("127.0.0.1"), listen, &nets));
        assert!(allowed(ip("::1"), listen, &nets));
        assert!(allowed(ip("10.42.7.9"), ip("10.42.7.9"), &[]));
    }
}
