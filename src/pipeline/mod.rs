//! The request pipeline: our `ProxyHttp` implementation. Each pingora hook is
//! a thin dispatcher into the module of its phase, in the order a request
//! travels:
//!
//! | pingora hook | phase | module |
//! |---|---|---|
//! | `request_filter` | identify → idempotency → (park) → admission | [`identify`], [`idempotent`], [`body`], [`park`], [`admit`] |
//! | `request_body_filter` | forward the body read ahead | [`body`] |
//! | `upstream_peer` | retry: pause and re-admit; upstream: resolve, choose peer or region | [`retry`], [`upstream`] |
//! | `upstream_request_filter` | upstream: rewrite for the origin (or the region's proxy) | [`upstream`] |
//! | `upstream_response_filter` | classify: status (gRPC's too), learned limits, retry / reroute / park | [`classify`], [`retry`] |
//! | `upstream_response_trailer_filter` | classify: a gRPC status in trailers teaches the domain | [`classify`] |
//! | `fail_to_connect`, `error_while_proxy` | classify: retry after transport failures | [`retry`] |
//! | `response_filter`, `response_body_filter` | idempotency: capture and store the response | [`idempotent`] |
//! | `fail_to_proxy` | park, or respond with the error | [`park`], [`classify`], [`respond`] |
//! | `logging` | record | [`record`] |

pub mod admit;
pub mod body;
pub mod classify;
pub mod ctx;
pub mod idempotent;
pub mod identify;
pub mod park;
pub mod record;
pub mod respond;
pub mod retry;
pub mod upstream;

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{box_future_in_place, FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::error::ProxyError;
use crate::state::Shared;
use ctx::{ConnInfo, Outcome, RequestCtx};

use crate::wire::names;

pub struct Pipeline {
    shared: Arc<Shared>,
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>) -> Self {
        Pipeline { shared }
    }

    /// Answer the request with `err` and stop the pipeline.
    ///
    /// Boxed, like every phase of `request_filter` but the admission wait:
    /// a future is as large as its largest state, and a request waiting for
    /// admission should not carry the state of the phases it is not in
    /// (docs/memory.md).
    fn reject<'a>(
        &'a self,
        session: &'a mut Session,
        ctx: &'a mut RequestCtx,
        err: ProxyError,
    ) -> futures::future::BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            respond::error(session, &err).await?;
            ctx.outcome = Outcome::Failed(err);
            Ok(true)
        })
    }

    /// Park the request as a job and answer `202` (boxed: see `reject`).
    fn park<'a>(
        &'a self,
        session: &'a mut Session,
        ctx: &'a mut RequestCtx,
    ) -> futures::future::BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match park::park(&self.shared, session, ctx).await {
                Ok(accepted) => {
                    park::respond(session, &accepted).await?;
                    ctx.outcome = Outcome::Parked(accepted.job_id);
                    Ok(true)
                }
                Err(err) => self.reject(session, ctx, err).await,
            }
        })
    }

    /// Read the body ahead when it must be held: to park the request, or to
    /// send it again on a retry when it is too big for pingora's own buffer.
    /// Called only for a request with a body not read yet (`filter_request`
    /// checks, so that the others skip boxing this future).
    async fn read_ahead(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), ProxyError> {
        let domain = ctx.domain().ok_or(ProxyError::Internal)?;
        let limit =
            crate::retry::route::retry_config(&ctx.config(&self.shared), domain).max_buffered_body;
        if ctx.park.is_some() {
            body::read_whole(
                session,
                ctx,
                limit,
                "a request that may be parked (X-EZThrottle-Webhook) is held whole, up to [retry] max_buffered_body",
            )
            .await?;
        } else if body::declared_len(session).is_some_and(|n| n > body::RETRY_BUFFER && n <= limit)
        {
            body::read_whole(
                session,
                ctx,
                limit,
                "the body is read ahead to be retryable",
            )
            .await?;
        }
        Ok(())
    }

    /// Identify phase; returns the error to answer with, if any.
    fn identify(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), ProxyError> {
        let req = session.req_header();
        if identify::looped(req, &self.shared.instance_id) {
            return Err(ProxyError::ProxyLoop);
        }
        let config = ctx.config(&self.shared);
        let target = identify::target(req, ctx.conn.as_ref(), config.control.listen)?;
        ctx.control_headers = crate::wire::any_control_header(&req.headers);
        if ctx.control_headers {
            ctx.caller = identify::caller(req, &self.shared.internal_token);
        }
        let trusted = ctx.caller.is_internal()
            || ctx.conn.as_ref().and_then(|c| c.client).is_some_and(|a| {
                let ip = crate::egress::canonical(a.ip());
                config.proxy.trusted_clients.iter().any(|n| n.contains(&ip))
            });
        let ws = identify::workspace(
            req,
            ctx.conn.as_ref(),
            &identify::Trust {
                api_keys: &config.control.api_keys,
                trusted,
            },
        )?;
        let ignored = &self.shared.metrics.untrusted_headers_ignored_total;
        if ws.ignored_header {
            ignored
                .with_label_values(&[crate::wire::WORKSPACE_HEADER])
                .inc();
        }
        if ctx.control_headers && !ctx.caller.is_internal() {
            for (h, name) in crate::wire::RUNNER_HEADERS
                .iter()
                .zip(crate::wire::names::RUNNER)
            {
                if req.headers.contains_key(name) {
                    ignored.with_label_values(&[h]).inc();
                }
            }
        }
        ctx.workspace = ws.name;
        ctx.target = Some(target);
        Ok(())
    }

    /// The `request_filter` hook (identify → idempotency → park →
    /// admission). The hooks with the largest futures are written as
    /// inherent `async fn`s that the trait methods box in place
    /// (`box_future_in_place`): async_trait built each on the stack and
    /// copied all of it into its box, 1-3 KiB per hook per request
    /// (docs/performance.md, "The sixth pass").
    async fn filter_request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.inflight = Some(self.shared.inflight.enter());
        if ctx.conn.is_none() {
            ctx.conn = ctx::stream_conn();
        }
        if let Err(err) = self.identify(session, ctx) {
            return self.reject(session, ctx, err).await;
        }
        let max_wait = match admit::max_wait(&self.shared, session, ctx) {
            Ok(w) => w,
            Err(err) => return self.reject(session, ctx, err).await,
        };
        // From the request's start, read when its context was made (a few
        // µs ago): one clock read fewer a request.
        let deadline = tokio::time::Instant::from_std(ctx.started) + max_wait;
        // Parking is asked for with X-EZThrottle-Webhook.
        if ctx.control_headers {
            match park::options(
                session.req_header(),
                max_wait,
                ctx.caller,
                &self.shared.egress.load(),
            ) {
                Ok(opts) => ctx.park = opts,
                Err(err) => return self.reject(session, ctx, err).await,
            }
        }
        // Idempotency before admission: a replay or a conflict takes no slot.
        // Boxed phases (see `reject`): only the admission wait is inline.
        // Each boxed only when it has work: most requests carry no key and
        // no body, and a box is an allocation (docs/performance.md).
        if idempotent::applies(session.req_header()) {
            match box_future_in_place(|| idempotent::begin(&self.shared, session, ctx, max_wait))
                .await
            {
                Ok(None) => {}
                Ok(Some(record)) => {
                    ctx.outcome = Outcome::Replayed;
                    Box::pin(idempotent::replay(session, &record)).await?;
                    return Ok(true);
                }
                Err(err) => return self.reject(session, ctx, err).await,
            }
        }
        if ctx.body.is_none() && !session.is_body_empty() {
            if let Err(err) = Box::pin(self.read_ahead(session, ctx)).await {
                return self.reject(session, ctx, err).await;
            }
        }
        if ctx.park.as_ref().is_some_and(|p| p.respond_async) {
            return self.park(session, ctx).await;
        }
        match admit::admit(&self.shared, session, ctx, max_wait).await {
            Ok(()) => {
                retry::init(&self.shared, session, ctx, deadline);
                Ok(false)
            }
            Err(ProxyError::ClientGone) => {
                ctx.outcome = Outcome::Failed(ProxyError::ClientGone);
                Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "client left while waiting for admission",
                ))
            }
            Err(ProxyError::ThrottleQueueFull { .. } | ProxyError::ThrottleWaitTimeout { .. })
                if ctx.park.is_some() =>
            {
                self.park(session, ctx).await
            }
            Err(err) => self.reject(session, ctx, err).await,
        }
    }

    /// The `upstream_peer` hook: retry pause and re-admission, then the
    /// origin's or the region's peer (boxed in place: see `filter_request`).
    async fn choose_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Err(err) = retry::before_next_attempt(&self.shared, session, ctx).await {
            let status = err.status();
            let parkable = matches!(
                err,
                ProxyError::ThrottleQueueFull { .. } | ProxyError::ThrottleWaitTimeout { .. }
            ) && ctx.park.is_some();
            ctx.outcome = if parkable {
                Outcome::ParkNow
            } else {
                Outcome::Failed(err)
            };
            return Err(Error::new(ErrorType::HTTPStatus(status)));
        }
        let Some(target) = ctx.target.as_ref() else {
            ctx.outcome = Outcome::Failed(ProxyError::Internal);
            return Err(Error::new(ErrorType::InternalError));
        };
        ctx.attempts += 1;
        ctx.upstream_status = None;
        let config = ctx.config(&self.shared);
        let peer = match retry::via_region(&self.shared, ctx) {
            Some((_, host, port)) => {
                upstream::region_peer(&self.shared, &config, &host, port).await
            }
            None => {
                let client_h2 = session.is_http2();
                upstream::peer(
                    &self.shared,
                    &config,
                    target,
                    ctx.caller.egress(),
                    client_h2,
                )
                .await
            }
        };
        match peer {
            Ok(peer) => {
                ctx.upstream_started = Some(Instant::now());
                Ok(peer)
            }
            Err(err) => {
                let status = err.status();
                ctx.outcome = Outcome::Failed(err);
                Err(Error::new(ErrorType::HTTPStatus(status)))
            }
        }
    }

    /// The `upstream_response_filter` hook: classify the answer, learn,
    /// and deliver, retry or park (boxed in place: see `filter_request`).
    async fn classify_upstream_response(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status;
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            admit::upgraded(&self.shared, ctx);
        }
        if status.is_informational() {
            return Ok(());
        }
        let code = status.as_u16();
        match classify::response(&self.shared, session, upstream_response, ctx).await {
            classify::Verdict::Deliver => {
                // Names parsed once: no parse or allocation per response.
                upstream_response
                    .insert_static_header(&names::WAIT_MS, crate::wire::number_value(ctx.wait_ms));
                upstream_response.insert_static_header(
                    &names::ATTEMPTS,
                    crate::wire::number_value(u64::from(ctx.attempts)),
                );
                Ok(())
            }
            classify::Verdict::Again => Err(Error::explain(
                ErrorType::HTTPStatus(code),
                "upstream answered with a retryable status",
            )),
            classify::Verdict::Park => {
                ctx.outcome = Outcome::ParkNow;
                Err(Error::explain(
                    ErrorType::HTTPStatus(code),
                    "a retry would outlast the max wait: parking",
                ))
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Pipeline {
    /// Hooks left at their defaults, which pingora then does not call: each
    /// call would box a future that does nothing, and `connected_to_upstream`
    /// would also gather a digest of the upstream connection nobody reads
    /// (docs/performance.md, "The sixteenth pass"). Implementing one of
    /// them means turning its switch back on here.
    const EARLY_REQUEST_FILTER: bool = false;
    const PROXY_UPSTREAM_FILTER: bool = false;
    const CONNECTED_TO_UPSTREAM_H1: bool = false;

    /// Boxed: the context is 840 bytes, and pingora moves it (alone, and
    /// with its session) into one future after another, five copies a
    /// request; boxed, those are pointers, for one allocation.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        pingora::utils::box_in_place(RequestCtx::new)
    }

    /// No downstream modules. pingora's default is its compression module,
    /// disabled (level 0): built for every request and run at every phase
    /// to do nothing, ~400 instructions and three allocations a request
    /// (docs/performance.md, "The twelfth pass"). A forward proxy passes
    /// bodies as the origin encoded them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Box<RequestCtx>,
        prev: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(conn) = prev.downcast::<ConnInfo>() {
            ctx.conn = Some(*conn);
        }
    }

    fn request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Box<RequestCtx>,
    ) -> BoxFuture<'async_trait, Result<bool>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        box_future_in_place(move || self.filter_request(session, ctx))
    }

    fn upstream_peer<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Box<RequestCtx>,
    ) -> BoxFuture<'async_trait, Result<Box<HttpPeer>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        box_future_in_place(move || self.choose_peer(session, ctx))
    }

    #[cfg(unix)]
    fn upstream_h1_dropping(
        &self,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        ctx: &mut Box<RequestCtx>,
    ) {
        // Follow the exchange so its slot outlives a client that hangs up.
        admit::follow_dropped_upstream(ctx, fd);
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        body::forward(ctx, body);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        let Some(target) = ctx.target.as_ref() else {
            return Err(Error::new(ErrorType::InternalError));
        };
        let via = retry::via_region(&self.shared, ctx).is_some();
        if let Err(err) = upstream::rewrite(upstream_request, target, &self.shared.instance_id, via)
        {
            let status = err.status();
            ctx.outcome = Outcome::Failed(err);
            return Err(Error::new(ErrorType::HTTPStatus(status)));
        }
        Ok(())
    }

    fn upstream_response_filter<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        upstream_response: &'life2 mut ResponseHeader,
        ctx: &'life3 mut Box<RequestCtx>,
    ) -> BoxFuture<'async_trait, Result<()>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        box_future_in_place(move || {
            self.classify_upstream_response(session, upstream_response, ctx)
        })
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        classify::trailers(&self.shared, trailers, ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<()> {
        idempotent::response_header(&self.shared, ctx, response);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<RequestCtx>,
    ) -> Result<Option<std::time::Duration>> {
        idempotent::response_body(&self.shared, ctx, body);
        Ok(None)
    }

    fn response_body_end<'a>(
        &'a self,
        _session: &'a mut Session,
        ctx: &'a mut Box<RequestCtx>,
    ) -> Option<BoxFuture<'a, Result<()>>> {
        idempotent::body_end(&self.shared, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<RequestCtx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let truncated = session.as_ref().retry_buffer_truncated();
        let outcome = classify::connect_outcome(&e);
        let next = retry::after(&self.shared, ctx, outcome, None, truncated);
        if next == retry::Next::Park {
            ctx.outcome = Outcome::ParkNow;
        }
        e.set_retry(next == retry::Next::Again);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<RequestCtx>,
        _client_reused: bool,
    ) -> Box<Error> {
        // The attempt ended early: its slot is held until the origin ends
        // the exchange (a retry is admitted again in `upstream_peer`).
        admit::release_after_upstream(&self.shared, ctx);
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Decided in upstream_response_filter: a retry, or parking.
        if retry::is_pending(ctx) {
            e.set_retry(true);
            return e;
        }
        let park_now = matches!(ctx.outcome, Outcome::ParkNow);
        if park_now || ctx.upstream_status.is_some() || session.response_written().is_some() {
            e.set_retry(false);
            return e;
        }
        let truncated = session.as_ref().retry_buffer_truncated();
        let outcome = crate::retry::Outcome::FailedAfterSend;
        let next = retry::after(&self.shared, ctx, outcome, None, truncated);
        if next == retry::Next::Park {
            ctx.outcome = Outcome::ParkNow;
        }
        e.set_retry(next == retry::Next::Again);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<RequestCtx>,
    ) -> FailToProxy {
        if matches!(ctx.outcome, Outcome::ParkNow) && session.response_written().is_none() {
            match park::park(&self.shared, session, ctx).await {
                Ok(accepted) => {
                    if let Err(write_err) = park::respond(session, &accepted).await {
                        tracing::debug!(error = %write_err, "could not send 202");
                    }
                    ctx.outcome = Outcome::Parked(accepted.job_id);
                    return FailToProxy {
                        error_code: 202,
                        can_reuse_downstream: false,
                    };
                }
                Err(err) => ctx.outcome = Outcome::Failed(err),
            }
        }
        let err = match ctx.outcome.error().cloned() {
            Some(err) => Some(err),
            None => classify::failure(e, ctx.target.as_ref()),
        };
        let Some(err) = err.filter(|e| !matches!(e, ProxyError::ClientGone)) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        // Nothing was sent yet only if no response header went out.
        let code = err.status();
        if session.response_written().is_none() {
            if let Err(write_err) = respond::error_after(session, &err, ctx.attempts).await {
                tracing::debug!(error = %write_err, "could not send error response");
            }
        }
        ctx.outcome = Outcome::Failed(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<RequestCtx>) {
        let failed = e.is_some() || ctx.outcome.error().is_some();
        idempotent::finish(&self.shared, ctx, failed).await;
        record::request_done(&self.shared, session, e, ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use pingora::proxy::box_future_in_place;

    /// Counts its drops, standing in for a hook's captured session.
    struct Captured(Arc<AtomicUsize>, u64);

    impl Drop for Captured {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A future as large as pingora's per-request one, holding state
    /// across an await as a hook does.
    async fn large(captured: Captured) -> u64 {
        let buf = [captured.1 as u8; 16 * 1024];
        tokio::task::yield_now().await;
        buf.iter().map(|&b| u64::from(b)).sum::<u64>() + captured.1
    }

    /// The in-place box (unsafe inside the vendored pingora-proxy) is only
    /// sound if the future it writes is the one that runs and what it
    /// captured is dropped exactly once: polled to the end, or dropped
    /// before its first poll.
    #[tokio::test]
    async fn a_future_boxed_in_place_runs_and_drops_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let c = Captured(drops.clone(), 3);
        let out = box_future_in_place(move || large(c)).await;
        assert_eq!(out, 3 * 16 * 1024 + 3);
        assert_eq!(drops.load(Ordering::SeqCst), 1);

        let c = Captured(drops.clone(), 7);
        let unpolled = box_future_in_place(move || large(c));
        assert_eq!(drops.load(Ordering::SeqCst), 1, "not dropped while boxed");
        drop(unpolled);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    /// A session's digest is gathered from its stream the first time it is
    /// asked for (vendored pingora-core, "The sixteenth pass"), so it must
    /// say what an eagerly built one said: both ends of the connection,
    /// the stream's timing; and a change made through `digest_mut` must
    /// stay. For the downstream (server) and the upstream (client) session.
    #[tokio::test]
    async fn a_sessions_digest_gathered_late_names_both_ends() {
        use pingora::protocols::http::v1::{client, server};
        use pingora::protocols::l4::stream::Stream as L4;
        use pingora::protocols::{GetSocketDigest, SocketDigest};
        use std::os::unix::io::AsRawFd;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let (dialled, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(at), listener.accept());
        let dialled = dialled.unwrap();
        let (accepted, peer) = accepted.unwrap();
        let dialled_from = dialled.local_addr().unwrap();
        assert_eq!(peer, dialled_from);

        let stream = |tcp: tokio::net::TcpStream| {
            let fd = tcp.as_raw_fd();
            let mut s = L4::from(tcp);
            s.set_socket_digest(SocketDigest::from_raw_fd(fd));
            Box::new(s)
        };
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet().copied())
        };

        let mut down = server::HttpSession::new(stream(accepted));
        assert_eq!(inet(down.client_addr()), Some(dialled_from));
        assert_eq!(inet(down.server_addr()), Some(at));
        assert_eq!(down.digest().timing_digest.len(), 1);
        assert!(down.digest().timing_digest[0].is_some());
        down.digest_mut().timing_digest.push(None);
        assert_eq!(down.digest().timing_digest.len(), 2, "a change stays");

        // Changed before it was ever read: gathered first, then changed.
        let mut up = client::HttpSession::new(stream(dialled));
        up.digest_mut().timing_digest.clear();
        assert!(up.digest().timing_digest.is_empty(), "a change stays");
        assert_eq!(inet(up.server_addr()), Some(at));
        assert_eq!(inet(up.client_addr()), Some(dialled_from));
    }

    /// A connected pair of pingora streams over real loopback TCP, and the
    /// far end of each as a plain socket: `dial` is pingora's side.
    async fn pingora_pair() -> (
        Box<pingora::protocols::l4::stream::Stream>,
        tokio::net::TcpStream,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let (dialled, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(at), listener.accept());
        let ours = pingora::protocols::l4::stream::Stream::from(dialled.unwrap());
        (Box::new(ours), accepted.unwrap().0)
    }

    /// What an upstream session makes of a response head: its body to the
    /// end, or the error that refused the head. The far end writes `raw`
    /// and closes.
    async fn upstream_reads(method: &str, raw: &[u8], tolerate: bool) -> Result<Vec<u8>, String> {
        use pingora::protocols::http::v1::client;
        use tokio::io::AsyncWriteExt;
        let (ours, mut far) = pingora_pair().await;
        let mut up = client::HttpSession::new(ours);
        up.set_allow_h1_response_invalid_content_length(tolerate);
        let mut req = pingora::http::RequestHeader::build(method, b"/", None).unwrap();
        req.insert_header("Host", "origin.test").unwrap();
        up.write_request_header(Box::new(req)).await.unwrap();
        far.write_all(raw).await.unwrap();
        far.shutdown().await.unwrap();
        up.read_response().await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        for _ in 0..64 {
            match up.read_body_bytes().await.map_err(|e| e.to_string())? {
                Some(b) => body.extend_from_slice(&b),
                None => return Ok(body),
            }
        }
        panic!("the body of {raw:?} did not end");
    }

    /// The framing a response head declares decides its body, each field
    /// looked up once by the upstream session (vendored pingora-core, "The
    /// seventeenth pass"): every rule the repeated look-ups applied, at and
    /// past its edges.
    #[tokio::test]
    async fn an_upstream_heads_framing_decides_its_body() {
        let ok = |h: &str, body: &str| format!("HTTP/1.1 200 OK\r\n{h}\r\n{body}");
        let chunked = "5\r\nhello\r\n0\r\n\r\n";
        let cases: Vec<(&str, String, bool, Result<&str, ()>)> = vec![
            (
                "GET",
                ok("Content-Length: 5\r\n", "hello"),
                false,
                Ok("hello"),
            ),
            (
                "GET",
                ok("Content-Length: 5\r\n", "helloEXTRA"),
                false,
                Ok("hello"),
            ),
            (
                "GET",
                ok("Content-Length: 5, 5\r\n", "hello"),
                false,
                Ok("hello"),
            ),
            (
                "GET",
                ok("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
                false,
                Ok("hello"),
            ),
            (
                "GET",
                ok("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
                false,
                Err(()),
            ),
            (
                "GET",
                ok("Content-Length: 5,6\r\n", "hello!"),
                true,
                Err(()),
            ),
            ("GET", ok("Content-Length: abc\r\n", "xyz"), false, Err(())),
            (
                "GET",
                ok("Content-Length: 18446744073709551616\r\n", "xyz"),
                false,
                Err(()),
            ),
            // Tolerated: one token that does not parse reads to the close.
            ("GET", ok("Content-Length: abc\r\n", "xyz"), true, Ok("xyz")),
            // Transfer-Encoding wins over Content-Length.
            (
                "GET",
                ok(
                    "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                    chunked,
                ),
                false,
                Ok("hello"),
            ),
            (
                "GET",
                ok(
                    "Transfer-Encoding: chunked\r\nContent-Length: abc\r\n",
                    chunked,
                ),
                false,
                Ok("hello"),
            ),
            (
                "GET",
                ok("Transfer-Encoding: gzip, chunked\r\n", chunked),
                false,
                Ok("hello"),
            ),
            // Not chunked last: read to the close, the length ignored.
            (
                "GET",
                ok("Transfer-Encoding: gzip\r\nContent-Length: 2\r\n", "abcdef"),
                false,
                Ok("abcdef"),
            ),
            ("GET", ok("", "xyz"), false, Ok("xyz")),
            (
                "GET",
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".into(),
                false,
                Ok(""),
            ),
            ("HEAD", ok("Content-Length: 5\r\n", ""), false, Ok("")),
            ("GET", ok("Content-Length: 0\r\n", ""), false, Ok("")),
        ];
        for (method, raw, tolerate, want) in cases {
            let got = upstream_reads(method, raw.as_bytes(), tolerate).await;
            match want {
                Ok(body) => assert_eq!(
                    got.as_deref().map(String::from_utf8_lossy),
                    Ok(body.into()),
                    "{method} {raw:?} tolerate={tolerate}"
                ),
                Err(()) => assert!(
                    got.is_err(),
                    "{method} {raw:?} tolerate={tolerate}: {got:?}"
                ),
            }
        }
    }

    /// What a downstream session makes of a request head: its body, and
    /// whether the connection may be kept; or the error that refused it.
    async fn downstream_reads(raw: &[u8]) -> Result<(Vec<u8>, bool), String> {
        use pingora::protocols::http::v1::server;
        use tokio::io::AsyncWriteExt;
        let (ours, mut far) = pingora_pair().await;
        let mut down = server::HttpSession::new(ours);
        far.write_all(raw).await.unwrap();
        match down.read_request().await {
            Ok(Some(_)) => {}
            Ok(None) => return Err("no request".into()),
            Err(e) => return Err(e.to_string()),
        }
        let mut body = Vec::new();
        for _ in 0..64 {
            match down.read_body_bytes().await.map_err(|e| e.to_string())? {
                Some(b) => body.extend_from_slice(&b),
                None => return Ok((body, down.will_keepalive())),
            }
        }
        panic!("the body of {raw:?} did not end");
    }

    /// The downstream session keeps the framing it validated for its body
    /// reader only while the head is unchanged: a head changed through
    /// `req_header_mut` is framed as changed, as pingora always did.
    #[tokio::test]
    async fn a_downstream_head_changed_before_its_body_is_framed_as_changed() {
        use pingora::protocols::http::v1::server;
        use tokio::io::AsyncWriteExt;
        for (from, to, want) in [
            ("Content-Length: 5", Some("10"), "helloworld"),
            ("Content-Length: 10", Some("5"), "hello"),
            ("Content-Length: 10", None, "helloworld"),
        ] {
            let (ours, mut far) = pingora_pair().await;
            let mut down = server::HttpSession::new(ours);
            let raw = format!("POST /p HTTP/1.1\r\nHost: a.test\r\n{from}\r\n\r\nhelloworld");
            far.write_all(raw.as_bytes()).await.unwrap();
            down.read_request().await.unwrap().unwrap();
            if let Some(to) = to {
                down.req_header_mut()
                    .insert_header("Content-Length", to)
                    .unwrap();
            }
            let mut body = Vec::new();
            for _ in 0..64 {
                match down.read_body_bytes().await.unwrap() {
                    Some(b) => body.extend_from_slice(&b),
                    None => break,
                }
            }
            assert_eq!(String::from_utf8_lossy(&body), want, "{from} -> {to:?}");
        }
    }

    /// The same for a request head and the downstream session, whose
    /// validation is told what reading the head found.
    #[tokio::test]
    async fn a_downstream_heads_framing_is_checked_and_decides_its_body() {
        let post = |v: &str, h: &str, body: &str| {
            format!("POST /p HTTP/{v}\r\nHost: a.test\r\n{h}\r\n{body}")
        };
        let chunked = "5\r\nhello\r\n0\r\n\r\n";
        // None: refused.
        let cases: Vec<(String, Option<(&str, bool)>)> = vec![
            (
                post("1.1", "Content-Length: 5\r\n", "hello"),
                Some(("hello", true)),
            ),
            (
                post("1.1", "Content-Length: 5, 5\r\n", "hello"),
                Some(("hello", true)),
            ),
            (
                post("1.1", "Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
                Some(("hello", true)),
            ),
            (
                post(
                    "1.1",
                    "Content-Length: 5\r\nContent-Length: 6\r\n",
                    "hello!",
                ),
                None,
            ),
            (post("1.1", "Content-Length: abc\r\n", ""), None),
            (post("1.1", "Content-Length: -5\r\n", ""), None),
            (
                post("1.1", "Content-Length: 18446744073709551616\r\n", ""),
                None,
            ),
            // Both: the length goes, chunked frames it, and the connection
            // is not kept (RFC 9112 section 6.1).
            (
                post(
                    "1.1",
                    "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                    chunked,
                ),
                Some(("hello", false)),
            ),
            (
                post(
                    "1.1",
                    "Transfer-Encoding: chunked\r\nContent-Length: abc\r\n",
                    chunked,
                ),
                Some(("hello", false)),
            ),
            (
                post("1.1", "Transfer-Encoding: chunked\r\n", chunked),
                Some(("hello", true)),
            ),
            (
                post("1.1", "Transfer-Encoding: chunked, gzip\r\n", chunked),
                None,
            ),
            (post("1.1", "Transfer-Encoding: gzip\r\n", ""), None),
            (post("1.0", "Transfer-Encoding: chunked\r\n", chunked), None),
            (post("1.1", "", ""), Some(("", true))),
            (
                post("1.0", "Content-Length: 5\r\n", "hello"),
                Some(("hello", false)),
            ),
        ];
        for (raw, want) in cases {
            let got = downstream_reads(raw.as_bytes()).await;
            match want {
                Some((body, keep)) => assert_eq!(
                    got.as_ref()
                        .map(|(b, k)| (String::from_utf8_lossy(b).into_owned(), *k)),
                    Ok((body.to_string(), keep)),
                    "{raw:?}"
                ),
                None => assert!(got.is_err(), "{raw:?}: {got:?}"),
            }
        }
    }
}
