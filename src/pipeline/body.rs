//! Reading a request body ahead of the upstream: the idempotency phase needs
//! it to fingerprint, retries need it to send again, parking needs it to
//! store. Read once into [`RequestCtx::body`] and forwarded from there.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::error::ProxyError;

/// pingora's retry buffer (`BODY_BUF_LIMIT`, 64 KiB). Once the body has been
/// read here, pingora forwards only what is in that buffer; see [`read_whole`].
pub const RETRY_BUFFER: u64 = 64 * 1024;

/// The body length the client declared, if it used `Content-Length`.
pub fn declared_len(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A client that sent `Expect: 100-continue` waits (curl: a second; others
/// longer) for a `100 Continue` before its body. We are about to read the
/// body ourselves, so we answer it now, and the `Expect` is not forwarded:
/// the upstream gets the whole body at once, and must not send a second
/// `100` the client already had.
async fn expect_continue(session: &mut Session) -> Result<(), ProxyError> {
    let req = session.req_header();
    let expects = req
        .headers
        .get_all(http::header::EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects {
        return Ok(());
    }
    let http11 = req.version == http::Version::HTTP_11;
    session
        .req_header_mut()
        .remove_header(&http::header::EXPECT);
    if http11 && !session.is_body_empty() {
        session
            .write_continue_response()
            .await
            .map_err(|_| ProxyError::ClientGone)?;
    }
    Ok(())
}

/// Whether the request has no body at all.
pub fn is_empty(session: &mut Session) -> bool {
    session.is_body_empty()
}

/// Read the whole body into `ctx.body` (once), refusing more than `limit`
/// bytes with `413` that names `why`.
///
/// pingora forwards an already-read body only from its retry buffer, which
/// holds at most 64 KiB and is useless once overrun. So the buffer is armed
/// just before the last 64 KiB of a `Content-Length` body: it ends up
/// holding the tail, pingora hands that to `request_body_filter`, and
/// [`forward`] swaps in the whole body (on every attempt). A chunked body
/// has no known tail, so it must fit the buffer.
pub async fn read_whole(
    session: &mut Session,
    ctx: &mut RequestCtx,
    limit: u64,
    why: &'static str,
) -> Result<Bytes, ProxyError> {
    if let Some(body) = &ctx.body {
        if body.len() as u64 > limit {
            return Err(ProxyError::RequestBodyTooLarge { limit, why });
        }
        return Ok(body.clone());
    }
    let declared = declared_len(session);
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::RequestBodyTooLarge { limit, why });
    }
    expect_continue(session).await?;
    let mut buf = BytesMut::new();
    // Bodies held here count against the same process-wide budget as
    // unfinished heads, so slow uploads cannot grow memory without bound.
    let mut hold = crate::accept::framing::Hold::new(crate::accept::framing::budget());
    let mut armed = false;
    loop {
        if !armed && declared.is_none_or(|n| n.saturating_sub(buf.len() as u64) <= RETRY_BUFFER) {
            session.enable_retry_buffering();
            armed = true;
        }
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk);
                if buf.len() as u64 > limit {
                    return Err(ProxyError::RequestBodyTooLarge { limit, why });
                }
                if hold.set(buf.capacity()).is_err() {
                    return Err(ProxyError::Overloaded);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "reading a request body failed");
                return Err(ProxyError::ClientGone);
            }
        }
    }
    if !buf.is_empty() && session.get_retry_buffer().is_none() {
        return Err(ProxyError::RequestBodyTooLarge {
            limit: RETRY_BUFFER,
            why: "a chunked body that must be held (Idempotency-Key, retries, parking) must fit 64 KiB; send it with Content-Length",
        });
    }
    let body = buf.freeze();
    ctx.body = Some(body.clone());
    ctx.body_hold = Some(hold);
    Ok(body)
}

/// `request_body_filter`: pingora offers the retry-buffer tail of a body
/// read by [`read_whole`]; send the whole body instead.
pub fn forward(ctx: &RequestCtx, body: &mut Option<Bytes>) {
    if let Some(whole) = ctx.body.as_ref() {
        if body.is_some() && !whole.is_empty() {
            *body = Some(whole.clone());
        }
    }
}
