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
