//! HTTP/2 on intercepted connections. A client that picks `h2` in ALPN
//! gets an h2 server here; every stream is one request that runs through
//! the same pipeline (identify, idempotency, admission, retries, parking)
//! as an HTTP/1.1 request, each in its own task, so one slow stream never
//! holds up its siblings.
//!
//! pingora's own h2 accept loop is crate-private, so this is ours: it also
//! carries the CONNECT target to each stream (pingora's connection user
//! context is HTTP/1-only) and closes a connection that has carried no
//! stream for the keep-alive time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::FrontDoor;
use crate::pipeline::ctx::{self, ConnInfo};

/// Streams one connection may run at once (the h2 default pingora uses;
/// a client that wants more opens another connection).
const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Counts a connection's running streams; the last one to end wakes the
/// accept loop so it can start the idle clock.
struct StreamGuard {
    active: Arc<AtomicUsize>,
    ended: Arc<Notify>,
}

impl StreamGuard {
    fn new(active: &Arc<AtomicUsize>, ended: &Arc<Notify>) -> Self {
        active.fetch_add(1, Ordering::AcqRel);
        StreamGuard {
            active: active.clone(),
            ended: ended.clone(),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ended.notify_one();
        }
    }
}

/// Serve an intercepted TLS connection whose client chose `h2`, until the
/// client closes it, it idles for `idle`, or the proxy shuts down (then
/// GOAWAY, and the running streams finish).
pub async fn serve(
    door: &FrontDoor,
    tls: Stream,
    conn: &ConnInfo,
    shutdown: &ShutdownWatch,
    idle: Duration,
) {
    let digest = Arc::new(Digest {
        ssl_digest: tls.get_ssl_digest(),
        timing_digest: tls.get_timing_digest(),
        proxy_digest: tls.get_proxy_digest(),
        socket_digest: tls.get_socket_digest(),
    });
    let config = door.shared.config.load();
    let mut options = h2_server::default_h2_options();
    // The decoded header block is held to the same bound as an HTTP/1.1
    // head (`[proxy] max_head`); pingora answers a larger one with a reset.
    options
        .max_header_list_size(u32::try_from(config.proxy.head_limits.max_head).unwrap_or(u32::MAX));
    options.max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let handshake = h2_server::handshake(tls, Some(options));
    let mut h2 = match tokio::time::timeout(config.proxy.head_timeout, handshake).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "h2 handshake with the client failed");
            return;
        }
        Err(_) => {
            tracing::debug!("h2 client sent no preface in time");
            return;
        }
    };
    drop(config);
    let active = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(Notify::new());
    let mut shutdown_rx = shutdown.clone();
    let mut closing = *shutdown.borrow();
    // While the proxy drains, the connection counts as in flight until it
    // is closed: a stream's last frames are written by this loop after the
    // stream's own task (and its in-flight count) has ended, so exiting at
    // "no request in flight" would cut them off.
    let mut draining = None;
    if closing {
        h2.graceful_shutdown();
        draining = Some(door.shared.inflight.enter());
    }
    loop {
        let idle_clock = async {
            if active.load(Ordering::Acquire) == 0 {
                tokio::time::sleep(idle).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            changed = shutdown_rx.changed(), if !closing => {
                // A dropped sender also means the server is going away.
                if changed.is_err() || *shutdown_rx.borrow() {
                    h2.graceful_shutdown();
                    closing = true;
                    draining = Some(door.shared.inflight.enter());
                }
            }
            // A stream ended: go round to re-arm the idle clock.
            _ = ended.notified() => {}
            _ = idle_clock, if !closing => {
                tracing::debug!(idle_s = idle.as_secs(), "h2 connection idle: closing");
                h2.graceful_shutdown();
                closing = true;
            }
            // Accepting also drives the whole connection (every stream's
            // frames), so it is polled on every turn.
            accepted = HttpSession::from_h2_conn(&mut h2, digest.clone()) => match accepted {
                Ok(Some(H2Accept::Session(stream))) => {
                    let guard = StreamGuard::new(&active, &ended);
                    let proxy = door.proxy.clone();
                    let shutdown = shutdown.clone();
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let session = ServerSession::new_http2(stream);
                        ctx::with_stream_conn(conn, proxy.process_new_http(session, &shutdown))
                            .await;
                    });
                }
                // Answered or reset during acceptance (a malformed stream);
                // its siblings carry on.
                Ok(Some(H2Accept::Rejected)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "h2 connection ended with an error");
                    break;
                }
            },
        }
    }
    drop(draining);
}
