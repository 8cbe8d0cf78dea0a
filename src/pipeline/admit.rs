//! Admission phase on the proxy path: read the request's patience, wait for
//! the domain's pace and concurrency, and notice a client that gives up.

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::admission::{Denied, MAX_WAIT_HEADER};
use crate::error::ProxyError;
use crate::state::Shared;

pub async fn admit(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), ProxyError> {
    let Some(domain) = ctx.domain().map(str::to_string) else {
        return Err(ProxyError::Internal);
    };
    let header = session
        .req_header()
        .headers
        .get(MAX_WAIT_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    let max_wait = shared
        .admission
        .max_wait(&domain, header.as_deref())
        .map_err(ProxyError::BadRequest)?;
    let admission = shared.admission.admit(&domain, max_wait);
    // With no request body to read, a read on the client connection can only
    // end in a close: that is how we see a client leave the queue.
    let result = if session.is_body_empty() {
        tokio::select! {
            r = admission => r,
            gone = session.read_body_or_idle(true) => match gone {
                Err(_) => return Err(ProxyError::ClientGone),
                Ok(_) => return Err(ProxyError::BadRequest("unexpected bytes while waiting (pipelining is not supported)".into())),
            },
        }
    } else {
        admission.await
    };
    match result {
        Ok((permit, waited)) => {
            ctx.permit = Some(permit);
            ctx.wait_ms = waited.as_millis() as u64;
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
