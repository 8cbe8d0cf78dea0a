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
pub mod deadline;
pub mod framing;
pub mod http2;
pub mod idle;
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
use crate::egress::{Purpose, Refusal};
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

/// What ended [`FrontDoor::serve_http1`] on the outer connection: a CONNECT
/// head (already checked by `framing`), with the connection positioned just
/// after it.
struct ConnectRequest {
    stream: Stream,
    target: Result<crate::pipeline::ctx::ConnectTarget, ProxyError>,
}

/// Whether `ip` may use the proxy port: `[proxy] allow_clients`, and this
/// host itself always — the job runner sends every job attempt through this
/// listener (`jobs/attempt.rs`), from loopback or from the listen address.
fn allowed(ip: std::net::IpAddr, listen: std::net::IpAddr, allow: &[ipnet::IpNet]) -> bool {
    ip.is_loopback() || ip == listen || allow.iter().any(|net| net.contains(&ip))
}

impl FrontDoor {
    pub fn new(shared: Arc<Shared>, proxy: Arc<HttpProxy<Pipeline>>) -> Self {
        let cap = usize::try_from(shared.config.load().proxy.max_buffered).unwrap_or(usize::MAX);
        framing::set_budget_cap(cap);
        FrontDoor { shared, proxy }
    }

    /// Answer one of our own errors before pingora owns the request, count
    /// it, and close.
    async fn refuse(&self, stream: &mut Stream, err: &ProxyError) {
        self.shared
            .metrics
            .proxy_errors_total
            .with_label_values(&[err.code()])
            .inc();
        tracing::info!(error = err.code(), "request refused at the front door");
        framing::refuse_and_close(stream, err).await;
    }

    /// Serve HTTP/1.1 requests on one connection (a plain client connection,
    /// or the decrypted inside of an intercepted CONNECT) until it closes.
    ///
    /// Each head is read and checked by [`framing`] first; pingora then gets
    /// exactly that request through a [`framing::Framed`] window, and what
    /// the client sent after it (a pipelined request) comes back to us for
    /// the next turn of the loop, so pipelined requests are answered in
    /// order. On the outer connection a CONNECT head ends the loop and is
    /// returned; inside an intercepted connection it is refused.
    async fn serve_http1(
        &self,
        mut stream: Stream,
        conn: &ConnInfo,
        shutdown: &ShutdownWatch,
        outer: bool,
    ) -> Option<ConnectRequest> {
        // An Arc, not an arc-swap guard: the connection keeps its config for
        // its life, and a guard held that long takes one of the thread's few
        // fast slots, sending every other load on the thread the slow way.
        let config = self.shared.config.load_full();
        let proxy = &config.proxy;
        let limits = &proxy.head_limits;
        let budget = framing::budget();
        let mut pending = framing::Pending::new(budget);
        let mut settings = None;
        let mut counted = false;
        // A new connection must deliver its first head within head_timeout;
        // later ones may idle for the keep-alive time first.
        let mut idle = proxy.head_timeout;
        let mut deadline = deadline::HeadDeadline::default();
        loop {
            let timeouts = framing::HeadTimeouts {
                idle,
                head: proxy.head_timeout,
            };
            idle = KEEPALIVE;
            let info = match framing::read_head(
                &mut stream,
                &mut pending,
                limits,
                timeouts,
                &mut deadline,
                shutdown,
            )
            .await
            {
                framing::HeadRead::Head(info) => info,
                framing::HeadRead::Closed => return None,
                framing::HeadRead::Refuse(err) => {
                    // Give the head's memory back before the answer
                    // and the lingering close.
                    drop(pending);
                    self.refuse(&mut stream, &err).await;
                    return None;
                }
            };
            let mut bytes = pending.take_all();
            let rest = bytes.split_off(info.end);
            let mut head = bytes;
            bytes::Buf::advance(&mut head, info.start);
            if info.is_connect {
                if !outer {
                    let err = ProxyError::BadRequest(
                        "CONNECT inside an intercepted connection is not supported".into(),
                    );
                    self.refuse(&mut stream, &err).await;
                    return None;
                }
                let target = connect::parse_head(&head);
                let stream = framing::unread(stream, &rest)?;
                return Some(ConnectRequest { stream, target });
            }
            if outer && !counted {
                counted = true;
                self.shared
                    .metrics
                    .connections_total
                    .with_label_values(&["plain"])
                    .inc();
            }
            // pingora parses the head from our buffer (sized to the bytes
            // received) instead of reading it again into a 4 KiB one of its
            // own that it keeps for the whole request.
            let mut framed = framing::Framed::new(
                stream,
                bytes::BytesMut::new(),
                rest,
                &info,
                pending,
                limits.max_head,
            );
            if info.upgrade {
                framed.watch_idle(proxy.idle_timeout);
            }
            let mut session = ServerSession::new_http1(Box::new(framed));
            session.set_pipelined_prefix(head);
            // `read_head` ran pingora's authority check on these bytes
            // (framing::check_head): pingora need not run it again.
            session.set_authority_checked();
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
            settings = p;
            let framed = s.into_any().downcast::<framing::Framed>().ok()?;
            (stream, pending) = framed.into_parts();
        }
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
                let proxy = &self.shared.config.load().proxy;
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
        request: ConnectRequest,
        conn: ConnInfo,
        shutdown: &ShutdownWatch,
    ) {
        let metrics = &self.shared.metrics;
        let ConnectRequest { mut stream, target } = request;
        let target = match target {
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
        let denied = {
            let ports = &self.shared.config.load().proxy.connect_ports;
            (!ports.contains(&target.port)).then(|| ProxyError::ConnectPortDenied {
                port: target.port,
                allowed: ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        };
        if let Some(err) = denied {
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
        if let Err(refusal) = refused_before_connect(&self.shared, &target.host, target.port) {
            let err = match refusal {
                Refusal::Loop(_) => ProxyError::ProxyLoop,
                denied => ProxyError::EgressDenied(denied.to_string()),
            };
            metrics
                .proxy_errors_total
                .with_label_values(&[err.code()])
                .inc();
            tracing::warn!(domain = %target.host, port = target.port, error = %err, "CONNECT refused");
            connect::refuse(&mut stream, &err).await;
            return;
        }
        // Not in the match's scrutinee: that would hold the config guard
        // for the whole tunnel or intercepted connection.
        let mode = self.shared.config.load().tls_mode(&target.host);
        match mode {
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

/// A CONNECT the egress policy refuses by its name alone — our own listener
/// by address (`127.0.0.1:4001`, `localhost:4000`), a metadata address or
/// name — is refused before `200`, so the client sees `508` / `403` rather
/// than a handshake with ourselves. Names that resolve to a refused address
/// are caught at connect time (tunnel) or by the upstream phase (intercept).
fn refused_before_connect(shared: &Shared, host: &str, port: u16) -> Result<(), Refusal> {
    let egress = &shared.egress.load();
    if host == "localhost" && egress.is_self(SocketAddr::from(([127, 0, 0, 1], port))) {
        return Err(Refusal::Loop(format!("{host}:{port}")));
    }
    egress.check_name(Purpose::Proxy, host, port)
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        crate::allocator::collect_on_workers();
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
        // The connection continues in a task of our own, and pingora's task
        // ends now. pingora's accept task inlines its TLS handshake future
        // (~9 KiB a task, measured) and boxes this call (~9 KiB more), for
        // the whole life of the connection; ours holds only what a waiting
        // connection needs (docs/memory.md).
        let door = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Some(request) = door.serve_http1(stream, &conn, &shutdown, true).await {
                // Rare: boxed so a plain connection's task does not carry the
                // tunnel's and the TLS interception's state.
                Box::pin(door.handle_connect(request, conn, &shutdown)).await;
            }
        });
        None
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
