//! Record phase: metrics and the access log, once per request.

use pingora::proxy::Session;
use pingora::Error;

use super::ctx::{Outcome, RequestCtx};
use crate::error::ProxyError;
use crate::state::Shared;

/// How a request ended, for `requests_total{outcome}`.
pub fn outcome(ctx: &RequestCtx, e: Option<&Error>) -> &'static str {
    match &ctx.outcome {
        Outcome::Replayed => "replayed",
        Outcome::Parked(_) => "parked",
        Outcome::Failed(ProxyError::ClientGone) => "cancelled",
        Outcome::Failed(ProxyError::IdempotencyKeyReused) => "conflict",
        // Refused by the proxy itself, before anything went upstream.
        Outcome::Failed(err) if err.status() < 500 || err.status() == 508 => "rejected",
        Outcome::Failed(_) => "error",
        Outcome::Forwarded | Outcome::ParkNow if e.is_some() && ctx.upstream_status.is_none() => {
            "error"
        }
        Outcome::Forwarded | Outcome::ParkNow => "forwarded",
    }
}

pub fn request_done(shared: &Shared, session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
    let metrics = &shared.metrics;
    let series = ctx.series(metrics);
    let outcome = outcome(ctx, e);
    match &series {
        Some(s) => s.request(outcome),
        None => metrics
            .requests_total
            .with_label_values(&["none", outcome])
            .inc(),
    }
    if let Some(err) = ctx.outcome.error() {
        metrics
            .proxy_errors_total
            .with_label_values(&[err.code()])
            .inc();
    }
    // One clock read for both durations (a read is ~20 ns; a request makes
    // ~30 of them, most in pingora and tokio).
    let now = std::time::Instant::now();
    if let (Some(started), Some(s)) = (ctx.upstream_started, &series) {
        s.upstream_duration
            .observe(now.saturating_duration_since(started).as_secs_f64());
    }
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let req = session.req_header();
    crate::logging::access::request(&crate::logging::access::Access {
        method: req.method.as_str(),
        domain: ctx.domain().unwrap_or("-"),
        path: req.uri.path(),
        status,
        outcome,
        error: ctx.outcome.error().map(|e| e.code()).unwrap_or(""),
        attempts: ctx.attempts,
        wait_ms: ctx.wait_ms,
        duration_ms: now.saturating_duration_since(ctx.started).as_millis() as u64,
        workspace: &ctx.workspace,
    });
}
