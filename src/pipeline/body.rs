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
    let mut hold = crate::mem_budget::Hold::new(crate::mem_budget::budget());
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A pingora session over an in-memory pipe, its head already read; the
    /// other end is the client.
    async fn session(head: &str) -> (Session, DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut client = client;
        client.write_all(head.as_bytes()).await.unwrap();
        let mut session = Session::new_h1(Box::new(server));
        assert!(session.downstream_session.read_request().await.unwrap());
        (session, client)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// A Content-Length body larger than pingora's 64 KiB retry buffer is
    /// read whole; the buffer holds only its tail, and `forward` sends the
    /// whole body in its place (on every attempt).
    #[tokio::test]
    async fn a_body_past_the_retry_buffer_is_held_whole_and_forwarded_whole() {
        let body = pattern(200_000);
        let head = format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (mut s, mut client) = session(&head).await;
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        let mut ctx = RequestCtx::new();
        let got = read_whole(&mut s, &mut ctx, 1 << 20, "test").await.unwrap();
        assert_eq!(got.as_ref(), body.as_slice());
        let tail = s.get_retry_buffer().expect("the tail is buffered");
        assert!(tail.len() as u64 <= RETRY_BUFFER);
        assert_eq!(tail.as_ref(), &body[body.len() - tail.len()..]);
        let mut offered = Some(tail);
        forward(&ctx, &mut offered);
        assert_eq!(offered.unwrap().as_ref(), body.as_slice());
        // Read once: a second call returns the held body without reading.
        assert_eq!(
            read_whole(&mut s, &mut ctx, 1 << 20, "test").await.unwrap(),
            got
        );
        drop(writer.await.unwrap());
    }

    /// A declared length over the limit is refused before a byte of it is
    /// read; a body that turns out longer than the limit is refused too.
    #[tokio::test]
    async fn too_large_is_413_naming_why() {
        let head =
            "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 18446744073709551615\r\n\r\n";
        let (mut s, _client) = session(head).await;
        let err = read_whole(&mut s, &mut RequestCtx::new(), 1024, "held for a test")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProxyError::RequestBodyTooLarge {
                    limit: 1024,
                    why: "held for a test"
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.status(), 413);
    }

    /// A chunked body has no known tail to buffer: one over 64 KiB cannot
    /// be held, and says to send it with Content-Length.
    #[tokio::test]
    async fn a_chunked_body_over_the_retry_buffer_is_refused() {
        let head = "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (mut s, mut client) = session(head).await;
        let chunk = pattern(70_000);
        tokio::spawn(async move {
            client
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .unwrap();
            client.write_all(&chunk).await.unwrap();
            client.write_all(b"\r\n0\r\n\r\n").await.unwrap();
            // Keep the pipe open until the test ends.
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        let err = read_whole(&mut s, &mut RequestCtx::new(), 1 << 20, "test")
            .await
            .unwrap_err();
        let ProxyError::RequestBodyTooLarge { limit, why } = err else {
            panic!("{err:?}")
        };
        assert_eq!(limit, RETRY_BUFFER);
        assert!(why.contains("Content-Length"), "{why}");
    }

    /// A client that hangs up in the middle of its body is gone, not a
    /// request with a short body.
    #[tokio::test]
    async fn a_client_that_hangs_up_mid_body_is_gone() {
        let head = "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n";
        let (mut s, mut client) = session(head).await;
        client.write_all(&[7u8; 300]).await.unwrap();
        drop(client);
        let err = read_whole(&mut s, &mut RequestCtx::new(), 1 << 20, "test")
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::ClientGone), "{err:?}");
    }

    /// `Expect: 100-continue`: the client is told to go on before its body
    /// is read, and the Expect is not passed upstream.
    #[tokio::test]
    async fn expect_100_continue_is_answered_before_the_body() {
        let head =
            "PUT /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        let (mut s, mut client) = session(head).await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = client.read(&mut buf).await.unwrap();
            let line = String::from_utf8_lossy(&buf[..n]).to_string();
            // Only now, as curl does, the body.
            client.write_all(b"hello").await.unwrap();
            (line, client)
        });
        let mut ctx = RequestCtx::new();
        let got = read_whole(&mut s, &mut ctx, 1024, "test").await.unwrap();
        assert_eq!(got.as_ref(), b"hello");
        let (line, _client) = reader.await.unwrap();
        assert!(line.starts_with("HTTP/1.1 100 Continue"), "{line:?}");
        assert!(s.req_header().headers.get(http::header::EXPECT).is_none());
    }
}
