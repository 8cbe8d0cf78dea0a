//! The accept loop shared by the loopback test servers. Its own file so the
//! benches that borrow `limit_origin.rs` can include it too.

/// Serve plain HTTP/1.1 on `listener` with `handler`, one task per
/// connection, until the runtime shuts down: the accept loop every loopback
/// test server (origins, webhook sinks) shares.
pub async fn serve_plain<H, Fut, E>(listener: tokio::net::TcpListener, handler: H)
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, E>>
        + Send
        + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(handler);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// A loopback test server on a runtime of its own (two workers): bound to
/// `127.0.0.1:0`, serving `handler` until dropped.
pub struct Loopback {
    pub addr: std::net::SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Loopback {
    /// `what` names the server in panics.
    pub fn start<H, Fut, E>(what: &str, handler: H) -> Loopback
    where
        H: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<
                Output = Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, E>,
            > + Send
            + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{what} runtime: {e}"));
        let addr = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("bind {what}: {e}"));
            let addr = l
                .local_addr()
                .unwrap_or_else(|e| panic!("{what} addr: {e}"));
            tokio::spawn(serve_plain(l, handler));
            addr
        });
        Loopback { addr, rt: Some(rt) }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
