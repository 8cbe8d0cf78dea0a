//! Writing the proxy's own answers (errors) to a pingora session: the one
//! place a `ProxyError` becomes an HTTP response on the proxy port.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::error::ProxyError;

use crate::wire::ERROR_HEADER;

/// Send `err` as the JSON error response of SPEC §8.
pub async fn error(session: &mut Session, err: &ProxyError) -> pingora::Result<()> {
    error_after(session, err, 0).await
}

/// [`error`] after `attempts` upstream attempts, which the answer reports in
/// `X-EZThrottle-Attempts` like a relayed one (the job runner counts them).
pub async fn error_after(
    session: &mut Session,
    err: &ProxyError,
    attempts: u32,
) -> pingora::Result<()> {
    let body = Bytes::from(err.body());
    let mut resp = ResponseHeader::build(err.status(), Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(ERROR_HEADER, err.code())?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(after) = err.retry_after() {
        resp.insert_header(http::header::RETRY_AFTER, after.as_secs().to_string())?;
    }
    if attempts > 0 {
        resp.insert_header(crate::wire::ATTEMPTS_HEADER, attempts.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The same error as raw HTTP/1.1 bytes, for answers written before pingora
/// owns the connection (CONNECT replies, refused clients).
pub fn error_bytes(err: &ProxyError) -> Vec<u8> {
    let body = err.body();
    let reason = http::StatusCode::from_u16(err.status())
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nX-EZThrottle-Error: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        err.status(),
        reason,
        err.code(),
        body.len()
    );
    if let Some(after) = err.retry_after() {
        out.push_str(&format!("Retry-After: {}\r\n", after.as_secs()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}
