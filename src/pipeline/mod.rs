//! The request pipeline: our `ProxyHttp` implementation. Each pingora hook is
//! a thin dispatcher into the module of its phase, in the order a request
//! travels:
//!
//! | pingora hook | phase | module |
//! |---|---|---|
//! | `request_filter` | identify → idempotency → admission | [`identify`], [`idempotent`], [`admit`] |
//! | `request_body_filter` | idempotency: forward the body read for the fingerprint | [`idempotent`] |
//! | `upstream_peer` | upstream: resolve, choose peer | [`upstream`] |
//! | `upstream_request_filter` | upstream: rewrite for the origin | [`upstream`] |
//! | `upstream_response_filter` | classify: status, learned limits, retry | [`classify`] |
//! | `response_filter`, `response_body_filter` | idempotency: capture and store the response | [`idempotent`] |
//! | `fail_to_proxy` | classify + respond: transport failures | [`classify`], [`respond`] |
//! | `logging` | record | [`record`] |

pub mod admit;
pub mod classify;
pub mod ctx;
pub mod idempotent;
pub mod identify;
pub mod record;
pub mod respond;
pub mod upstream;

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::error::ProxyError;
use crate::state::Shared;
use ctx::{ConnInfo, RequestCtx};

/// Response headers the proxy adds to every forwarded response (SPEC §5).
pub const WAIT_MS_HEADER: &str = "x-ezthrottle-wait-ms";
pub const ATTEMPTS_HEADER: &str = "x-ezthrottle-attempts";

pub struct Pipeline {
    shared: Arc<Shared>,
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>) -> Self {
        Pipeline { shared }
    }

    /// Answer the request with `err` and stop the pipeline.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: ProxyError,
    ) -> Result<bool> {
        respond::error(session, &err).await?;
        ctx.error = Some(err);
        Ok(true)
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
        let target = identify::target(req, ctx.conn.as_ref(), self.shared.config.control.listen)?;
        ctx.workspace = identify::workspace(req, ctx.conn.as_ref())?;
        ctx.target = Some(target);
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Pipeline {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(conn) = prev.downcast::<ConnInfo>() {
            ctx.conn = Some(*conn);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.inflight = Some(self.shared.inflight.enter());
        if let Err(err) = self.identify(session, ctx) {
            return self.reject(session, ctx, err).await;
        }
        let Some(domain) = ctx.domain().map(str::to_string) else {
            return self.reject(session, ctx, ProxyError::Internal).await;
        };
        let max_wait = match admit::max_wait(&self.shared, session, &domain) {
            Ok(w) => w,
            Err(err) => return self.reject(session, ctx, err).await,
        };
        // Idempotency before admission: a replay or a conflict takes no slot.
        match idempotent::begin(&self.shared, session, ctx, max_wait).await {
            Ok(None) => {}
            Ok(Some(record)) => {
                ctx.replayed = true;
                idempotent::replay(session, &record).await?;
                return Ok(true);
            }
            Err(err) => return self.reject(session, ctx, err).await,
        }
        match admit::admit(&self.shared, session, ctx, max_wait).await {
            Ok(()) => Ok(false),
            Err(ProxyError::ClientGone) => {
                ctx.error = Some(ProxyError::ClientGone);
                Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "client left while waiting for admission",
                ))
            }
            Err(err) => self.reject(session, ctx, err).await,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(target) = ctx.target.as_ref() else {
            ctx.error = Some(ProxyError::Internal);
            return Err(Error::new(ErrorType::InternalError));
        };
        ctx.attempts += 1;
        match upstream::peer(&self.shared, target).await {
            Ok(peer) => {
                ctx.upstream_started = Some(Instant::now());
                Ok(peer)
            }
            Err(err) => {
                let status = err.status();
                ctx.error = Some(err);
                Err(Error::new(ErrorType::HTTPStatus(status)))
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        idempotent::forward_body(ctx, body);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(target) = ctx.target.as_ref() else {
            return Err(Error::new(ErrorType::InternalError));
        };
        if let Err(err) = upstream::rewrite(upstream_request, target, &self.shared.instance_id) {
            let status = err.status();
            ctx.error = Some(err);
            return Err(Error::new(ErrorType::HTTPStatus(status)));
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        let code = upstream_response.status.as_u16();
        ctx.upstream_status = Some(code);
        if let Some(domain) = ctx.domain() {
            let metrics = &self.shared.metrics;
            let label = metrics.domain_label(domain);
            metrics
                .upstream_responses_total
                .with_label_values(&[label.as_str(), &code.to_string()])
                .inc();
            // Classify: the API's own limit headers govern the next admission.
            self.shared
                .admission
                .learn(domain, code, &upstream_response.headers)
                .await;
        }
        upstream_response.insert_header(WAIT_MS_HEADER, ctx.wait_ms.to_string())?;
        upstream_response.insert_header(ATTEMPTS_HEADER, ctx.attempts.to_string())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        idempotent::response_header(&self.shared, ctx, response);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        idempotent::response_body(&self.shared, ctx, body, end_of_stream);
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = match ctx.error.clone() {
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
            if let Err(write_err) = respond::error(session, &err).await {
                tracing::debug!(error = %write_err, "could not send error response");
            }
        }
        ctx.error = Some(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        idempotent::finish(&self.shared, ctx, e.is_some() || ctx.error.is_some()).await;
        record::request_done(&self.shared, session, e, ctx);
    }
}
