//! Admission phase on the proxy path: read the request's patience, wait for
//! the domain's pace and concurrency, and notice a client that gives up.

use std::time::Duration;

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::admission::{budget_key, Denied};
use crate::error::ProxyError;
use crate::state::Shared;

/// How long this request may wait (for admission, or for an identical
/// keyed request in flight): `X-EZThrottle-Max-Wait`, else the domain's
/// `max_wait`.
pub fn max_wait(
    shared: &Shared,
    session: &Session,
    ctx: &RequestCtx,
) -> Result<Duration, ProxyError> {
    let domain = ctx.domain().ok_or(ProxyError::Internal)?;
    let header = ctx
        .control_headers
        .then(|| {
            session
                .req_header()
                .headers
                .get(&crate::wire::names::MAX_WAIT)
        })
        .flatten()
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    crate::admission::max_wait(&ctx.config(shared), domain, header).map_err(ProxyError::BadRequest)
}

pub async fn admit(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    max_wait: Duration,
) -> Result<(), ProxyError> {
    // The domain and throttle are borrowed, not copied: a request that is
    // admitted allocates nothing here (docs/performance.md, "The seventh
    // pass"); only a refusal names its domain.
    let Some(domain) = ctx.target.as_ref().map(|t| t.domain()) else {
        return Err(ProxyError::Internal);
    };
    if ctx.throttle.is_none() {
        let split_by = ctx.config(shared).budget_key(domain);
        if !split_by.is_empty() {
            let name = budget_key::throttle_name(domain, &split_by, &session.req_header().headers);
            ctx.throttle = (name != domain).then_some(name);
        }
    }
    let result = {
        let throttle = ctx.throttle().unwrap_or_default();
        // The domain's series, kept in the context for classification, is
        // the throttle's unless the domain's budget is split by credential.
        let series = if ctx.throttle.is_none() {
            ctx.series(&shared.metrics)
        } else {
            None
        };
        // Pinned here and lent: passed by value, the ~1 KiB admission future
        // was copied into `unless_client_leaves`'s state and again into its
        // select.
        let admission = std::pin::pin!(shared
            .admission
            .admit_counted_in(throttle, max_wait, series));
        unless_client_leaves(session, admission).await?
    };
    let domain = || ctx.domain().unwrap_or_default().to_string();
    match result {
        Ok((permit, waited)) => {
            ctx.permit = Some(permit);
            ctx.wait_ms += waited.as_millis() as u64;
            Ok(())
        }
        Err(Denied::QueueFull { retry_after }) => Err(ProxyError::ThrottleQueueFull {
            domain: domain(),
            retry_after,
        }),
        Err(Denied::WaitTimeout { retry_after }) => Err(ProxyError::ThrottleWaitTimeout {
            domain: domain(),
            retry_after,
        }),
    }
}

/// Run `fut`, unless the client closes its connection first.
///
/// With no request body left to read (none, or read already), a read on the
/// client connection can only end in a close: that is how we see a client
/// leave while it waits. With body bytes still unread we cannot tell, and
/// just wait.
pub async fn unless_client_leaves<F: std::future::Future>(
    session: &mut Session,
    fut: F,
) -> Result<F::Output, ProxyError> {
    if session.is_body_empty() || session.is_body_done() {
        tokio::select! {
            r = fut => Ok(r),
            gone = session.read_body_or_idle(true) => match gone {
                Err(_) => Err(ProxyError::ClientGone),
                Ok(_) => Err(ProxyError::BadRequest("unexpected bytes while waiting (pipelining is not supported)".into())),
            },
        }
    } else {
        Ok(fut.await)
    }
}

/// The upstream connection of an attempt that ended in an error: a second
/// descriptor of the same socket, taken just before pingora drops the
/// connection (`upstream_h1_dropping`), so the exchange can be followed to
/// its end after pingora has let go of it.
///
/// Why: when the *client* hangs up while the origin is still answering,
/// pingora 0.9.1 ends the request at once — `proxy_handle_downstream`
/// (`proxy_h1.rs`) returns the downstream read error, `try_join!` drops the
/// upstream half, and `proxy_to_upstream` (`lib.rs`) drops the HTTP/1
/// client session unreused, closing its socket before any hook runs. The
/// origin, though, usually keeps working on the request (it notices the
/// close only when it writes the answer), so releasing the concurrency slot
/// with the request context let the origin see more than `max_concurrent`
/// exchanges open. pingora offers no way to keep reading that response
/// (only its cache-fill mode ignores a downstream error), so the slot is
/// held by [`release_after_upstream`] instead, on this descriptor, until the
/// origin has ended the exchange.
///
/// HTTP/1 only: an h2 connection outlives any one exchange and is never
/// touched, and a connection pingora puts back in its pool is not ours to
/// follow.
pub struct UpstreamConn(std::os::fd::OwnedFd);

/// An upgrade (WebSocket) is established (`101`): it counted against the
/// pace, and now gives its concurrency slot back so open sockets cannot
/// starve the domain's requests (`hold_slot_while_open` keeps it);
/// `[proxy] idle_timeout` bounds it instead (docs/connections.md).
pub fn upgraded(shared: &Shared, ctx: &mut RequestCtx) {
    let config = shared.config.load();
    let hold = ctx
        .domain()
        .and_then(|d| config.domain(d))
        .is_some_and(|d| d.hold_slot_while_open);
    if !hold {
        ctx.permit = None;
    }
}

/// Called from `upstream_h1_dropping` (a hook of our patched pingora-proxy),
/// i.e. when pingora is about to drop the attempt's HTTP/1 connection
/// unreused after an error, with its descriptor still open: keep a
/// duplicate for [`release_after_upstream`]. Only then: duplicating (and
/// later closing) the descriptor on every request cost two system calls
/// per request, of seven (issue 17).
pub fn follow_dropped_upstream(ctx: &mut RequestCtx, fd: std::os::fd::RawFd) {
    // SAFETY: pingora passes the raw descriptor of the client session it
    // still owns, before dropping it (`proxy_to_upstream`), so `fd` is open
    // for the duration of this call; it is only duplicated here.
    #[allow(
        unsafe_code,
        reason = "pingora hands the descriptor only as a RawFd; it is duplicated, never closed, here"
    )]
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    ctx.upstream_conn = match borrowed.try_clone_to_owned() {
        Ok(owned) => Some(UpstreamConn(owned)),
        Err(e) => {
            tracing::debug!(error = %e, "cannot follow the upstream connection; its slot is freed with the request");
            None
        }
    };
}

/// Called from `error_while_proxy`, i.e. when pingora ended the attempt
/// with an error and has already dropped the HTTP/1 connection unreused
/// (pingora reuses a connection only after a clean exchange, and then
/// reports no error). The exchange may still be running at the origin: the
/// attempt's concurrency slot moves to a task that holds it until the origin
/// closes the connection, or `bound` (`[proxy] read_timeout`) passes, so a
/// dead origin cannot keep a slot forever.
///
/// The task half-closes the connection (FIN: no more requests on it), then
/// reads and discards whatever the origin still sends until it closes. An
/// origin that watches its connections stops at the FIN and closes; one
/// that does not finishes its answer, reads the end of input and closes.
/// Either way the slot is freed once the origin has let go of the exchange.
pub fn release_after_upstream(shared: &Shared, ctx: &mut RequestCtx) {
    let Some(conn) = ctx.upstream_conn.take() else {
        return;
    };
    let Some(permit) = ctx.permit.take() else {
        return;
    };
    let bound = shared.config.load().proxy.read_timeout;
    tokio::spawn(hold_until_closed(conn, permit, bound));
}

async fn hold_until_closed(conn: UpstreamConn, permit: crate::admission::Permit, bound: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _permit = permit;
    let std_stream = std::net::TcpStream::from(conn.0);
    if std_stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut stream) = tokio::net::TcpStream::from_std(std_stream) else {
        return;
    };
    let ended = tokio::time::timeout(bound, async {
        let _ = stream.shutdown().await;
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    if ended.is_err() {
        tracing::debug!(
            bound_ms = bound.as_millis() as u64,
            "upstream still open after its client left: slot freed at the bound"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::admission::domain::{Gauges, Initial};
    use crate::admission::{DomainThrottle, Source};

    fn throttle() -> Arc<DomainThrottle> {
        DomainThrottle::new(
            "up.test".into(),
            Initial {
                rps: 1000.0,
                rps_source: Source::Default,
                max_concurrent: 1,
                concurrency_source: Source::Default,
                burst: 1,
                queue_capacity: 10,
                pinned: false,
                rps_ceiling: 10_000.0,
                concurrency_ceiling: 1024,
            },
            Gauges::detached(),
        )
    }

    /// A connected pair; the client side as pingora would hold it, plus our
    /// duplicate of it.
    async fn pair() -> (tokio::net::TcpStream, UpstreamConn, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let fd = std::os::fd::AsFd::as_fd(&client)
            .try_clone_to_owned()
            .unwrap();
        (client, UpstreamConn(fd), server)
    }

    /// The slot outlives pingora's copy of the connection until the origin
    /// has answered and closed.
    #[tokio::test]
    async fn the_slot_is_held_until_the_origin_closes() {
        let t = throttle();
        let permit = t.acquire(Duration::from_secs(1)).await.unwrap().into();
        let (pingoras, conn, mut origin) = pair().await;
        drop(pingoras);
        tokio::spawn(hold_until_closed(conn, permit, Duration::from_secs(30)));
        // The origin sees the end of input (no more requests), not a close.
        let mut buf = [0u8; 64];
        assert_eq!(origin.read(&mut buf).await.unwrap(), 0);
        assert_eq!(t.snapshot().in_flight, 1, "freed while the origin works");
        origin
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nlate")
            .await
            .unwrap();
        drop(origin);
        let next =
            tokio::time::timeout(Duration::from_secs(10), t.acquire(Duration::from_secs(10)));
        assert!(next.await.unwrap().is_ok());
    }

    /// An origin that never closes holds the slot only until the bound.
    #[tokio::test(start_paused = true)]
    async fn a_dead_origin_holds_the_slot_until_the_bound() {
        let t = throttle();
        let permit = t.acquire(Duration::from_secs(1)).await.unwrap().into();
        let (pingoras, conn, _origin) = pair().await;
        drop(pingoras);
        let began = tokio::time::Instant::now();
        tokio::spawn(hold_until_closed(conn, permit, Duration::from_secs(60)));
        let _next = t.acquire(Duration::from_secs(600)).await.unwrap();
        assert!(tokio::time::Instant::now() - began >= Duration::from_secs(60));
    }
}
