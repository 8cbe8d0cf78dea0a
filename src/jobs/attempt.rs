//! One attempt of a job: the job's request sent through our own proxy
//! listener, so it passes exactly the pipeline proxied traffic does — the
//! domain's throttle, learned limits, retries and reroutes, regions, and the
//! idempotency store under the job's key (which also makes a repeat after a
//! crash a replay instead of a second call).
//!
//! hyper's HTTP/1 client writes the absolute-form target (`GET https://host/p`)
//! our plain listener accepts for either scheme, so no CONNECT and no CA
//! trust is needed on this loopback hop.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::spec::JobSpec;
use crate::idempotency::key::HEADER as IDEMPOTENCY_KEY;

use crate::wire::{
    internal_value, ERROR_HEADER, INTERNAL_HEADER, JOB_HEADER, REGION_HEADER, RETRY_POLICY_HEADER,
    WORKSPACE_HEADER,
};

#[derive(Debug, Clone)]
pub struct AttemptResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The proxy's own error code when the proxy (not the origin) answered.
    pub proxy_error: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Who the attempt is for.
pub struct Identity<'a> {
    pub job_id: &'a str,
    pub workspace: &'a str,
    pub idempotent_key: &'a str,
    /// The process's internal token (see `pipeline::identify::caller`).
    pub internal_token: &'a str,
}

/// Send the job's request once through the proxy; `region` pins the region
/// the attempt starts in.
pub async fn send(
    proxy: SocketAddr,
    who: &Identity<'_>,
    spec: &JobSpec,
    region: Option<&str>,
    timeout: Duration,
    max_body: usize,
) -> Result<AttemptResponse, String> {
    tokio::time::timeout(timeout, send_inner(proxy, who, spec, region, max_body))
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

async fn send_inner(
    proxy: SocketAddr,
    who: &Identity<'_>,
    spec: &JobSpec,
    region: Option<&str>,
    max_body: usize,
) -> Result<AttemptResponse, String> {
    let uri: http::Uri = spec
        .url
        .parse()
        .map_err(|e| format!("invalid job url: {e}"))?;
    let authority = uri
        .authority()
        .ok_or("job url has no host")?
        .as_str()
        .to_string();
    let method: http::Method = spec
        .method
        .parse()
        .map_err(|_| format!("invalid method {:?}", spec.method))?;
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, authority);
    for (name, value) in &spec.headers {
        let lower = name.to_ascii_lowercase();
        if !super::spec::stored_header(&lower) || lower == IDEMPOTENCY_KEY {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder = builder
        .header(IDEMPOTENCY_KEY, who.idempotent_key)
        .header(JOB_HEADER, who.job_id)
        .header(
            INTERNAL_HEADER,
            internal_value(spec.parked, who.internal_token),
        )
        .header(WORKSPACE_HEADER, who.workspace)
        .header(
            crate::wire::MAX_WAIT_HEADER,
            format!("{:.3}", spec.max_wait_ms as f64 / 1000.0),
        );
    if let Some(region) = region.or(spec.region.as_deref()) {
        builder = builder.header(REGION_HEADER, region);
    }
    if let Some(policy) = &spec.retry_policy {
        let text = serde_json::to_string(policy).map_err(|e| e.to_string())?;
        builder = builder.header(RETRY_POLICY_HEADER, text);
    }
    if !spec.body.is_empty()
        || !matches!(spec.method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS")
    {
        builder = builder.header(http::header::CONTENT_LENGTH, spec.body.len());
    }
    let req = builder
        .body(Full::new(Bytes::from(spec.body.clone())))
        .map_err(|e| format!("cannot build the request: {e}"))?;

    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("cannot reach the proxy listener {proxy}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with the proxy listener: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "job attempt connection ended");
        }
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request through the proxy listener failed: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the response body: {e}"))?
        .to_bytes();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let proxy_error = parts
        .headers
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = parts
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::admission::learn::parse_retry_after(v, std::time::SystemTime::now()));
    Ok(AttemptResponse {
        status: parts.status.as_u16(),
        headers,
        body: body.to_vec(),
        proxy_error,
        retry_after,
    })
}
