//! Idempotency phase, between identify and admission: a keyed request's body
//! is read and fingerprinted before anything goes upstream, then it is
//! replayed, refused, or runs upstream holding its key while the response is
//! captured for storage. The rules live in [`crate::idempotency`].

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::idempotency::inflight::Claim;
use crate::idempotency::{self, fingerprint, key, Begin, StoredResponse};
use crate::state::Shared;
use crate::store::IdempotencyRecord;

/// pingora's retry buffer (`BODY_BUF_LIMIT`, 64 KiB). Once the body has been
/// read here, pingora forwards only what is in that buffer; see [`read_body`].
const RETRY_BUFFER: u64 = 64 * 1024;

/// A keyed request on its way upstream.
pub struct Keyed {
    claim: Option<Claim>,
    /// The whole request body, forwarded in place of pingora's buffer.
    body: Bytes,
    /// The response so far, while it may still be stored.
    capture: Option<StoredResponse>,
}

/// Returns the record to replay, or `None` to go on (with the key claimed in
/// `ctx` if the request has one).
pub async fn begin(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    max_wait: std::time::Duration,
) -> Result<Option<IdempotencyRecord>, ProxyError> {
    let req = session.req_header();
    if !key::applies(&req.method) {
        return Ok(None);
    }
    let Some(value) = req.headers.get(key::HEADER) else {
        return Ok(None);
    };
    let key = key::validate(value).map_err(ProxyError::IdempotencyKeyInvalid)?;
    let method = req.method.as_str().to_string();
    let Some(target) = ctx.target.as_ref() else {
        return Err(ProxyError::Internal);
    };
    let path = target
        .path_and_query
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let scope = idempotency::scope(&ctx.workspace, &key, &method, &target.host, &path);
    let idem = &shared.idempotency;
    let body = read_body(session, idem.config.max_request_body).await?;
    let fp = fingerprint::fingerprint(&body);
    match idem.begin(&scope, &fp, max_wait).await? {
        Begin::Replay(record) => Ok(Some(record)),
        Begin::Proceed(claim) => {
            ctx.keyed = Some(Keyed {
                claim: Some(claim),
                body,
                capture: None,
            });
            Ok(None)
        }
    }
}

/// Read the whole request body so it can be fingerprinted before anything
/// goes upstream, leaving pingora able to forward it.
///
/// pingora forwards an already-read body only from its retry buffer, which
/// holds at most 64 KiB and is useless once overrun. So the buffer is armed
/// just before the last 64 KiB of a `Content-Length` body: it ends up
/// holding the tail, pingora hands that to `request_body_filter`, and
/// [`forward_body`] swaps in the whole body. A chunked body has no known
/// tail, so it must fit the buffer.
async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, ProxyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared {
        if n > limit {
            return Err(ProxyError::RequestBodyTooLarge {
                limit,
                why: "requests with Idempotency-Key are held in memory up to [idempotency] max_request_body",
            });
        }
    }
    let mut buf = BytesMut::new();
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
                    return Err(ProxyError::RequestBodyTooLarge {
                        limit,
                        why: "requests with Idempotency-Key are held in memory up to [idempotency] max_request_body",
                    });
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "reading a keyed request body failed");
                return Err(ProxyError::ClientGone);
            }
        }
    }
    if !buf.is_empty() && session.get_retry_buffer().is_none() {
        return Err(ProxyError::RequestBodyTooLarge {
            limit: RETRY_BUFFER,
            why: "a chunked body with Idempotency-Key must fit 64 KiB; send it with Content-Length",
        });
    }
    Ok(buf.freeze())
}

/// `request_body_filter`: pingora offers the retry-buffer tail of a body
/// read by [`read_body`]; send the whole body instead.
pub fn forward_body(ctx: &RequestCtx, body: &mut Option<Bytes>) {
    if let Some(keyed) = ctx.keyed.as_ref() {
        if body.is_some() && !keyed.body.is_empty() {
            *body = Some(keyed.body.clone());
        }
    }
}

/// Write a stored response: status, headers in their order and case, the
/// body byte for byte, plus `Idempotency-Replay: true`.
pub async fn replay(session: &mut Session, record: &IdempotencyRecord) -> pingora::Result<()> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    // The block ends with the blank line httparse expects.
    let mut block = record.headers.clone();
    block.extend_from_slice(b"\r\n");
    let parsed = match httparse::parse_headers(&block, &mut headers) {
        Ok(httparse::Status::Complete((_, h))) => h,
        _ => &[][..],
    };
    let mut resp = ResponseHeader::build(record.status, Some(parsed.len() + 1))?;
    if let Some(reason) = record.reason.as_deref() {
        resp.set_reason_phrase(Some(reason))?;
    }
    for h in parsed {
        resp.append_header(h.name.to_string(), h.value)?;
    }
    resp.append_header(key::REPLAY_HEADER, "true")?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(record.body.clone())), true)
        .await
}

/// `response_filter`: start capturing a storable response, or free the key.
pub fn response_header(shared: &Shared, ctx: &mut RequestCtx, resp: &ResponseHeader) {
    let Some(keyed) = ctx.keyed.as_mut() else {
        return;
    };
    if resp.status.is_informational() {
        return;
    }
    let status = resp.status.as_u16();
    if idempotency::storable(status) {
        let mut headers = Vec::with_capacity(512);
        resp.header_to_h1_wire(&mut headers);
        keyed.capture = Some(StoredResponse {
            status,
            reason: resp.get_reason_phrase().map(str::to_string),
            headers,
            body: Vec::new(),
        });
    } else if let Some(claim) = keyed.claim.take() {
        shared.idempotency.release(claim, "not_stored_status");
    }
}

/// `response_body_filter` (a synchronous hook): collect the body; at its end
/// store the record before the last bytes go to the client, so a response
/// the client has seen is a response that survives `kill -9`.
pub fn response_body(
    shared: &Shared,
    ctx: &mut RequestCtx,
    body: &Option<Bytes>,
    end_of_stream: bool,
) {
    let Some(keyed) = ctx.keyed.as_mut() else {
        return;
    };
    let Some(capture) = keyed.capture.as_mut() else {
        return;
    };
    if let Some(chunk) = body {
        if (capture.body.len() + chunk.len()) as u64 > shared.idempotency.config.max_stored_body {
            keyed.capture = None;
            if let Some(claim) = keyed.claim.take() {
                shared.idempotency.release(claim, "not_stored_too_large");
            }
            return;
        }
        capture.body.extend_from_slice(chunk);
    }
    if end_of_stream {
        store(shared, keyed);
    }
}

/// `logging`: a response that ended without passing through the body filter
/// (no body) is stored here; anything else still claimed got no complete
/// response and frees its key.
pub async fn finish(shared: &Shared, ctx: &mut RequestCtx, failed: bool) {
    let Some(keyed) = ctx.keyed.as_mut() else {
        return;
    };
    if !failed {
        if let (Some(claim), Some(capture)) = (keyed.claim.take(), keyed.capture.take()) {
            shared.idempotency.complete(claim, capture).await;
            return;
        }
    }
    if let Some(claim) = keyed.claim.take() {
        shared.idempotency.release(claim, "not_stored_no_response");
    }
}

fn store(shared: &Shared, keyed: &mut Keyed) {
    let (Some(claim), Some(capture)) = (keyed.claim.take(), keyed.capture.take()) else {
        return;
    };
    let idem = shared.idempotency.clone();
    // The hook is synchronous; `block_in_place` lets this worker wait for
    // the commit while pingora's other tasks move to other workers (the
    // proxy runs on a multi-threaded runtime).
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(idem.complete(claim, capture))
    });
}
