//! Idempotency phase, between identify and admission: a keyed request's body
//! is read and fingerprinted before anything goes upstream, then it is
//! replayed, refused, or runs upstream holding its key while the response is
//! captured for storage. The rules live in [`crate::idempotency`].

use bytes::Bytes;
use futures::future::BoxFuture;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::body;
use super::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::idempotency::{self, fingerprint, key, Begin, Claim, StoredResponse};
use crate::mem_budget::{budget, Hold};
use crate::state::Shared;
use crate::store::IdempotencyRecord;

/// A keyed request on its way upstream.
pub struct Keyed {
    claim: Option<Claim>,
    /// The response so far, while it may still be stored.
    capture: Option<StoredResponse>,
    /// The capture's body bytes, held against the process-wide buffer
    /// budget (`[proxy] max_buffered`, shared with heads, pipelined bytes
    /// and bodies read ahead).
    hold: Option<Hold>,
}

/// Returns the record to replay, or `None` to go on (with the key claimed in
/// `ctx` if the request has one).
/// Whether `begin` has anything to do: a method keys apply to, with a key.
/// Checked before `begin`'s future is boxed, so a request without a key
/// pays for neither.
pub fn applies(req: &pingora::http::RequestHeader) -> bool {
    key::applies(&req.method) && req.headers.contains_key(&key::HEADER_NAME)
}

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
    let Some(value) = req.headers.get(&key::HEADER_NAME) else {
        return Ok(None);
    };
    let key = key::validate(value).map_err(ProxyError::IdempotencyKeyInvalid)?;
    let method = req.method.as_str().to_string();
    let Some(target) = ctx.target.as_ref() else {
        return Err(ProxyError::Internal);
    };
    let path = target.path_and_query.path().to_string();
    let scope = idempotency::scope(&ctx.workspace, &key, &method, &target.host, &path);
    let idem = &shared.idempotency;
    let body = body::read_whole(
        session,
        ctx,
        idem.config.max_request_body,
        "requests with Idempotency-Key are held in memory up to [idempotency] max_request_body",
    )
    .await?;
    let fp = fingerprint::fingerprint(&body);
    match idem.begin(&scope, &fp, max_wait).await? {
        Begin::Replay(record) => Ok(Some(record)),
        Begin::Proceed(claim) => {
            ctx.keyed = Some(Keyed {
                claim: Some(claim),
                capture: None,
                hold: None,
            });
            Ok(None)
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

/// `response_body_filter` (a synchronous hook): collect the body. Storing it
/// waits for `response_body_end`.
pub fn response_body(shared: &Shared, ctx: &mut RequestCtx, body: &Option<Bytes>) {
    let Some(keyed) = ctx.keyed.as_mut() else {
        return;
    };
    let Some(capture) = keyed.capture.as_mut() else {
        return;
    };
    if let Some(chunk) = body {
        let max = shared.idempotency.config.max_stored_body;
        let hold = keyed.hold.get_or_insert_with(|| Hold::new(budget()));
        let why = match grow_capture(&mut capture.body, hold, chunk, max) {
            Ok(()) => None,
            Err(Unstored::TooLarge) => Some("not_stored_too_large"),
            Err(Unstored::Budget) => Some("not_stored_budget"),
        };
        if let Some(why) = why {
            // The response still goes to the client whole; only its copy
            // for replay is given up (and its memory given back).
            keyed.capture = None;
            keyed.hold = None;
            if let Some(claim) = keyed.claim.take() {
                shared.idempotency.release(claim, why);
            }
        }
    }
}

/// `response_body_end` (our vendored pingora hook, called after the body
/// filter saw the end; what it returns is awaited before the last bytes go
/// to the client): store the record, so a response the client has seen is
/// a response that survives `kill -9`. `None`, and no boxed future, for a
/// request with nothing to store.
pub fn body_end<'a>(
    shared: &'a Shared,
    ctx: &'a mut RequestCtx,
) -> Option<BoxFuture<'a, pingora::Result<()>>> {
    let keyed = ctx.keyed.as_mut()?;
    if keyed.claim.is_none() || keyed.capture.is_none() {
        return None;
    }
    Some(Box::pin(async move {
        store(shared, keyed).await;
        Ok(())
    }))
}

/// `logging`: a response that ended without reaching `response_body_end`
/// (no body) is stored here; anything else still claimed got no complete
/// response and frees its key.
pub async fn finish(shared: &Shared, ctx: &mut RequestCtx, failed: bool) {
    let Some(keyed) = ctx.keyed.as_mut() else {
        return;
    };
    if !failed {
        store(shared, keyed).await;
    }
    if let Some(claim) = keyed.claim.take() {
        shared.idempotency.release(claim, "not_stored_no_response");
    }
}

/// Why a captured response is not stored after all.
#[derive(Debug, PartialEq, Eq)]
enum Unstored {
    /// Over `[idempotency] max_stored_body`.
    TooLarge,
    /// The process-wide buffer budget (`[proxy] max_buffered`) is spent.
    Budget,
}

/// Append `chunk` to a captured body, its capacity held against `hold`
/// first: the capture grows by doubling (bounded by `max`), and every byte
/// of its capacity comes from the budget, or the capture stops.
fn grow_capture(
    body: &mut Vec<u8>,
    hold: &mut Hold,
    chunk: &[u8],
    max: u64,
) -> Result<(), Unstored> {
    let want = body.len() + chunk.len();
    if want as u64 > max {
        return Err(Unstored::TooLarge);
    }
    if want > body.capacity() {
        let cap_max = usize::try_from(max).unwrap_or(usize::MAX);
        let new_cap = want.max(body.capacity().saturating_mul(2)).min(cap_max);
        hold.set(new_cap).map_err(|_| Unstored::Budget)?;
        body.reserve_exact(new_cap - body.len());
        // What the allocator really gave (at least `new_cap`), already here.
        hold.force(body.capacity());
    }
    body.extend_from_slice(chunk);
    Ok(())
}

/// Commit a whole captured response under its claimed key. Without both a
/// claim and a capture nothing is taken: a claim left alone is released by
/// `finish`, with its reason counted.
async fn store(shared: &Shared, keyed: &mut Keyed) {
    if keyed.claim.is_none() || keyed.capture.is_none() {
        return;
    }
    let (Some(claim), Some(capture)) = (keyed.claim.take(), keyed.capture.take()) else {
        return;
    };
    shared.idempotency.complete(claim, capture).await;
    keyed.hold = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_budget::MemBudget;

    /// Every byte of a captured body's capacity is held against the budget;
    /// past the budget the capture stops (and gives its bytes back), past
    /// `max_stored_body` likewise.
    #[test]
    fn captured_bodies_come_from_the_budget() {
        let b = MemBudget::new(64 * 1024);
        let chunk = vec![7u8; 10_000];
        let mut body = Vec::new();
        let mut hold = Hold::new(&b);
        let mut stopped = None;
        for _ in 0..20 {
            match grow_capture(&mut body, &mut hold, &chunk, 10 << 20) {
                Ok(()) => {
                    assert!(b.used() >= body.capacity(), "capacity unaccounted");
                    assert!(b.used() <= b.cap());
                }
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        assert_eq!(stopped, Some(Unstored::Budget));
        assert!(body.len() <= 64 * 1024);
        drop(hold);
        assert_eq!(b.used(), 0, "given back");

        let mut body = Vec::new();
        let mut hold = Hold::new(&b);
        assert_eq!(grow_capture(&mut body, &mut hold, &chunk, 15_000), Ok(()));
        assert_eq!(
            grow_capture(&mut body, &mut hold, &chunk, 15_000),
            Err(Unstored::TooLarge)
        );
        assert!(body.capacity() <= 15_000 + 64, "doubling is capped at max");
    }
}
