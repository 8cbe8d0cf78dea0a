//! The one bootstrap of the loopback test servers (origins, webhook sinks):
//! a runtime of their own, listeners bound to `127.0.0.1:0`, each speaking
//! plain HTTP/1.1, TLS (a given leaf, e.g. the test CA's in `ca.rs`), with
//! or without h2, or raw TCP; stopped when dropped. Each server brings only
//! its handler:
//!
//! ```ignore
//! let server = Loopback::new("my origin");
//! let http = server.serve(Listen::plain(), handler.clone());
//! let https = server.serve(pki.listen_tls().h2(), handler); // ca::TestPki
//! ```
//!
//! Its own file, on crates only (tokio, hyper, rustls), so the benches that
//! borrow an origin can include it with `#[path]`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How one listener speaks.
pub struct Listen {
    /// The leaf and its key: TLS first.
    tls: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    /// HTTP/2 as well as HTTP/1.1, told apart by the connection's first
    /// bytes; with TLS, `h2` is offered first in ALPN.
    h2: bool,
}

impl Listen {
    /// Plain HTTP/1.1.
    pub fn plain() -> Listen {
        Listen {
            tls: None,
            h2: false,
        }
    }

    /// TLS with `leaf` (and its `key`), then HTTP/1.1 (ALPN `http/1.1`).
    pub fn tls(leaf: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Listen {
        Listen {
            tls: Some((leaf, key)),
            h2: false,
        }
    }

    /// Speak HTTP/2 too: offered in ALPN (`h2`, then `http/1.1`) over TLS;
    /// each connection is served in the version its first bytes show.
    pub fn h2(mut self) -> Listen {
        self.h2 = true;
        self
    }

    fn acceptor(&mut self, what: &str) -> Option<TlsAcceptor> {
        let (leaf, key) = self.tls.take()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{what} tls versions: {e}"))
            .with_no_client_auth()
            .with_single_cert(vec![leaf], key)
            .unwrap_or_else(|e| panic!("{what} tls config: {e}"));
        config.alpn_protocols = if self.h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Some(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Reads from `tcp` until a whole request head has arrived (a raw origin's
/// first step); `None` when the peer closes or fails first. Returns every
/// byte read, the head and whatever followed it in the same reads.
pub async fn read_request_head(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Accept on `listener` for as long as the runtime runs, one task per
/// connection.
async fn accept_each<F, Fut>(listener: TcpListener, conn: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(conn(tcp));
    }
}

/// Serve one connection with `handler`: HTTP/1.1, or (`h2`) whichever
/// version the connection's first bytes show.
async fn serve_http<IO, H, Fut, E>(io: IO, h2: bool, handler: H)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = hyper::service::service_fn(handler);
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

/// A loopback test server on a runtime of its own (two workers, so the
/// blocking test thread never starves it): any number of listeners, all
/// stopped when it is dropped (the runtime is shut down, which drops every
/// listener, connection and handler).
pub struct Loopback {
    what: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl Loopback {
    /// `what` names the server in panics.
    pub fn new(what: &str) -> Loopback {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{what} runtime: {e}"));
        Loopback {
            what: what.to_string(),
            rt: Some(rt),
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime runs until drop")
    }

    /// Run `accept_loop` on `listener` (bound by the caller, e.g. to a port
    /// handed out earlier); the listener's address.
    pub fn spawn_on<F, Fut>(&self, listener: std::net::TcpListener, accept_loop: F) -> SocketAddr
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let what = &self.what;
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{what} addr: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{what} nonblocking: {e}"));
        let _entered = self.rt().enter();
        let listener =
            TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{what} listener: {e}"));
        self.rt().spawn(accept_loop(listener));
        addr
    }

    /// Run `accept_loop` on a new listener on `127.0.0.1:0`; its address.
    pub fn spawn<F, Fut>(&self, accept_loop: F) -> SocketAddr
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind {}: {e}", self.what));
        self.spawn_on(listener, accept_loop)
    }

    /// Serve `handler` on a new loopback listener, as `listen` says; its
    /// address.
    pub fn serve<H, Fut, E>(&self, mut listen: Listen, handler: H) -> SocketAddr
    where
        H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let tls = listen.acceptor(&self.what);
        let h2 = listen.h2;
        self.spawn(move |listener| {
            accept_each(listener, move |tcp| {
                let (tls, handler) = (tls.clone(), handler.clone());
                async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve_http(tls, h2, handler).await;
                            }
                        }
                        None => serve_http(tcp, h2, handler).await,
                    }
                }
            })
        })
    }

    /// Hand every connection on a new loopback listener to `conn` (servers
    /// that speak raw bytes); its address.
    pub fn serve_tcp<F, Fut>(&self, conn: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(move |listener| accept_each(listener, conn))
    }

    /// The same on `listener`, bound by the caller.
    pub fn serve_tcp_on<F, Fut>(&self, listener: std::net::TcpListener, conn: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_on(listener, move |listener| accept_each(listener, conn))
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
