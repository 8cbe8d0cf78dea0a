//! Classify phase: what an attempt's outcome means, in one place — the
//! response's status (a gRPC refusal's too), the limits it teaches the
//! domain, and whether the client gets it, another attempt runs, or the
//! request parks. The pipeline's hooks only act on the [`Verdict`].
//!
//! - [`response`]: an upstream response head (`upstream_response_filter`);
//! - [`trailers`]: a gRPC status after the messages;
//! - [`transport`]: attempts that got no response at all.

pub mod grpc;
pub mod transport;

use std::time::{Duration, SystemTime};

use pingora::http::ResponseHeader;
use pingora::proxy::Session;

pub use transport::{connect_outcome, failure};

use super::ctx::RequestCtx;
use super::retry::{self, Next};
use crate::retry::Outcome;
use crate::state::Shared;

/// What to do with an upstream response (a final one: 1xx never gets here).
pub type Verdict = Next;

/// Classify a final response head: count it, let the domain learn from it,
/// and decide between delivering it, another attempt and parking.
pub async fn response(
    shared: &Shared,
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> Verdict {
    let code = resp.status.as_u16();
    ctx.upstream_status = Some(code);
    // gRPC answers "not now" with HTTP 200 and a grpc-status: classify by
    // its HTTP equivalent (a trailers-only response's status is in these
    // headers).
    let grpc = if code == 200 && grpc::is_grpc(&resp.headers) {
        grpc::equivalent(&resp.headers)
    } else {
        None
    };
    if let (Some(series), Some(throttle)) = (ctx.series(&shared.metrics), ctx.throttle()) {
        series.response(code);
        shared.metrics.console.response(series.label(), code);
        // The API's own limit headers govern the next admission (of this
        // credential's budget, when the domain is split); its count is as
        // of this attempt's start.
        let start = ctx.permit.as_ref().map(crate::admission::Permit::start_no);
        match grpc {
            Some(equivalent) => {
                let headers = grpc::as_limit_headers(&resp.headers);
                shared
                    .admission
                    .learn(throttle, equivalent, &headers, start)
                    .await;
            }
            None => {
                shared
                    .admission
                    .learn(throttle, code, &resp.headers, start)
                    .await
            }
        }
    }
    let (retry_after, outcome) = match grpc {
        Some(equivalent) => match grpc::pushback(&resp.headers) {
            // A negative pushback: the server asks for no retry.
            Some(None) => (None, Outcome::Status(code)),
            Some(pause) => (pause, Outcome::Status(equivalent)),
            None => (None, Outcome::Status(equivalent)),
        },
        None => (retry_after(resp), Outcome::Status(code)),
    };
    let truncated = session.as_ref().retry_buffer_truncated();
    retry::after(shared, ctx, outcome, retry_after, truncated)
}

/// The response's `Retry-After`, if it is one we can read.
fn retry_after(resp: &ResponseHeader) -> Option<Duration> {
    resp.headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::admission::learn::parse_retry_after(v, SystemTime::now()))
}

/// Trailers of a response already on its way to the client: a gRPC
/// status there is too late to retry on, not too late to teach the
/// domain its pause. The trailer hook is synchronous and learning may
/// touch Redis, so it runs on its own task.
pub fn trailers(shared: &std::sync::Arc<Shared>, trailers: &http::HeaderMap, ctx: &RequestCtx) {
    if let (Some(equivalent), Some(throttle)) = (grpc::equivalent(trailers), ctx.throttle()) {
        let shared = shared.clone();
        let throttle = throttle.to_string();
        let headers = grpc::as_limit_headers(trailers);
        let start = ctx.permit.as_ref().map(crate::admission::Permit::start_no);
        tokio::spawn(async move {
            shared
                .admission
                .learn(&throttle, equivalent, &headers, start)
                .await;
        });
    }
}
