//! Reading and checking a `CONNECT host:port` request head.
//!
//! pingora answers CONNECT with 405 before any hook sees it, so the front door
//! reads this head itself (`framing::read_head`, with the same limits and
//! checks as every other head) and parses the target here (with httparse)
//! before deciding between a tunnel and interception.

use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

use crate::error::ProxyError;
use crate::pipeline::ctx::ConnectTarget;
use crate::pipeline::{identify, respond};

/// Parse a complete CONNECT head.
pub fn parse_head(buf: &[u8]) -> Result<ConnectTarget, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ProxyError::BadRequest("incomplete CONNECT head".into()))
        }
        Err(e) => {
            return Err(ProxyError::BadRequest(format!(
                "malformed CONNECT head: {e}"
            )))
        }
    }
    if req.method != Some("CONNECT") {
        return Err(ProxyError::BadRequest("expected CONNECT".into()));
    }
    let authority = req.path.unwrap_or_default();
    let (host, port) = identify::split_authority(authority)?;
    let proxy_auth = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(identify::ProxyCredentials::parse);
    Ok(ConnectTarget {
        host,
        port,
        proxy_auth,
        tls: true,
    })
}

/// `200 Connection Established`: from here on the connection carries the
/// client's bytes for the target.
pub async fn established(stream: &mut Stream) -> std::io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    stream.flush().await
}

/// Refuse the CONNECT with the JSON error body and close.
pub async fn refuse(stream: &mut Stream, err: &ProxyError) {
    let bytes = respond::error_bytes(err);
    if stream.write_all(&bytes).await.is_ok() {
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_with_user() {
        let t = parse_head(
            b"CONNECT API.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\nProxy-Authorization: Basic dGVhbTpwdw==\r\n\r\n",
        )
        .unwrap();
        assert_eq!(t.host, "api.example.com");
        assert_eq!(t.port, 443);
        assert_eq!(t.proxy_auth.as_ref().map(|c| c.user.as_str()), Some("team"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_head(b"CONNECT nonsense HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"CONNECT a:b HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"\x00\x01\x02\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
}
