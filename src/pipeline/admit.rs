//! Admission phase on the proxy path: read the request's patience, wait for
//! the domain's pace and concurrency, and notice a client that gives up.

use std::time::Duration;

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::admission::{Denied, MAX_WAIT_HEADER};
use crate::error::ProxyError;
use crate::state::Shared;

/// How long this request may wait (for admission, or for an identical
/// keyed request in flight): `X-EZThrottle-Max-Wait`, else the domain's
/// `max_wait`.
pub fn max_wait(shared: &Shared, session: &Session, domain: &str) -> Result<Duration, ProxyError> {
    let header = session
        .req_header()
        .headers
        .get(MAX_WAIT_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    shared
        .admission
        .max_wait(domain, header.as_deref())
        .map_err(ProxyError::BadRequest)
}

pub async fn admit(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    max_wait: Duration,
) -> Result<(), ProxyError> {
    let Some(domain) = ctx.domain().map(str::to_string) else {
        return Err(ProxyError::Internal);
    };
    let result = unless_client_leaves(session, shared.admission.admit(&domain, max_wait)).await?;
    match result {
        Ok((permit, waited)) => {
            ctx.permit = Some(permit);
            ctx.wait_ms += waited.as_millis() as u64;
            Ok(())
        }
        Err(Denied::QueueFull { retry_after }) => Err(ProxyError::ThrottleQueueFull {
            domain,
            retry_after,
        }),
        Err(Denied::WaitTimeout { retry_after }) => Err(ProxyError::ThrottleWaitTimeout {
            domain,
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
