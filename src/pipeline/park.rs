//! Parking (SPEC §7): a request that names a webhook and cannot be answered
//! within its max wait — or is refused for capacity, or asks for
//! `Prefer: respond-async` — is stored as a job and answered `202` at once;
//! its result goes to the webhook(s) later.

use std::time::Duration;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde_json::{json, Value};

use super::body;
use super::ctx::RequestCtx;
use super::identify::Caller;
use crate::egress::{Egress, Purpose};
use crate::error::ProxyError;
use crate::jobs::spec::{end_to_end, JobSpec, WebhookSpec};
use crate::jobs::Accepted;
use crate::state::Shared;

/// What a request asked for about parking.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkOptions {
    pub webhooks: Vec<String>,
    pub metadata: Value,
    /// `Prefer: respond-async`: park at once.
    pub respond_async: bool,
    /// The request's max wait, which its job's attempts keep.
    pub max_wait: Duration,
}

/// Read the parking headers. `None` when the request names no webhook, or
/// is itself a job's attempt (a job never parks again). Webhook URLs the
/// egress policy refuses are a `400` now rather than a failed delivery later.
pub fn options(
    req: &RequestHeader,
    max_wait: Duration,
    caller: Caller,
    egress: &Egress,
) -> Result<Option<ParkOptions>, ProxyError> {
    if caller.is_internal() {
        return Ok(None);
    }
    let mut webhooks = Vec::new();
    for value in req.headers.get_all(&crate::wire::names::WEBHOOK) {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::BadRequest("X-EZThrottle-Webhook is not valid text".into()))?;
        for raw in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let url = webhook_url(raw)?;
            egress
                .check_url(Purpose::Webhook, &url)
                .map_err(|r| ProxyError::WebhookRefused(format!("X-EZThrottle-Webhook: {r}")))?;
            webhooks.push(url);
        }
    }
    if webhooks.is_empty() {
        return Ok(None);
    }
    let metadata = match req.headers.get(&crate::wire::names::METADATA) {
        None => Value::Object(Default::default()),
        Some(v) => {
            let parsed: Option<Value> = v.to_str().ok().and_then(|t| serde_json::from_str(t).ok());
            match parsed {
                Some(obj @ Value::Object(_)) => obj,
                _ => {
                    return Err(ProxyError::BadRequest(
                        "X-EZThrottle-Metadata must be a JSON object".into(),
                    ))
                }
            }
        }
    };
    let respond_async = req
        .headers
        .get_all(&crate::wire::names::PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    Ok(Some(ParkOptions {
        webhooks,
        metadata,
        respond_async,
        max_wait,
    }))
}

fn webhook_url(raw: &str) -> Result<String, ProxyError> {
    let bad = || {
        ProxyError::BadRequest(format!(
            "X-EZThrottle-Webhook: {raw:?} is not an absolute http(s) URL"
        ))
    };
    let url = url::Url::parse(raw).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(url.to_string())
}

/// Store the request as a job (durably, before anything is answered).
pub async fn park(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Accepted, ProxyError> {
    let Some(opts) = ctx.park.clone() else {
        return Err(ProxyError::Internal);
    };
    let body = body::read_whole(
        session,
        ctx,
        shared.config.load().retry.max_buffered_body,
        "a parked request is stored whole, up to [retry] max_buffered_body",
    )
    .await?;
    let Some(target) = ctx.target.as_ref() else {
        return Err(ProxyError::Internal);
    };
    let req = session.req_header();
    let url = target.url();
    let headers: Vec<(String, String)> = end_to_end(
        req.headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .filter(|(k, _)| k != "prefer")
            .collect(),
    );
    let key = req
        .headers
        .get(crate::idempotency::key::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("park_{}", uuid::Uuid::new_v4().simple()));
    let spec = JobSpec {
        headers,
        body: body.to_vec(),
        webhooks: opts
            .webhooks
            .iter()
            .map(|url| WebhookSpec {
                url: url.clone(),
                has_quorum_vote: true,
            })
            .collect(),
        webhook_quorum: 1,
        metadata: opts.metadata.clone(),
        parked: true,
        ..JobSpec::request(req.method.as_str(), &url, opts.max_wait.as_millis() as u64)
    };
    let accepted = shared
        .jobs
        .submit(&ctx.workspace, &key, &spec, 0, ctx.attempts)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot park a request");
            ProxyError::StoreUnavailable
        })?;
    Ok(accepted)
}

/// `202 {"job_id","status":"queued","idempotent_key"}`.
pub async fn respond(session: &mut Session, accepted: &Accepted) -> pingora::Result<()> {
    let body = json!({
        "job_id": accepted.job_id,
        "status": accepted.status.as_str(),
        "idempotent_key": accepted.idempotent_key,
    })
    .to_string();
    let mut resp = ResponseHeader::build(202, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(bytes::Bytes::from(body)), true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"http://api.test/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const W: Duration = Duration::from_secs(5);

    fn egress(extra: &str) -> Egress {
        Egress::new(&crate::config::Config::from_toml_str(extra, "t.toml").unwrap())
    }

    /// Loopback port 9 opened, as the integration tests do.
    fn opts(r: &RequestHeader) -> Result<Option<ParkOptions>, ProxyError> {
        let e = egress("[egress]\nallow = [\"127.0.0.0/8\"]\nallow_ports = [9]\n");
        options(r, W, Caller::Client, &e)
    }

    #[test]
    fn no_webhook_no_parking() {
        assert_eq!(opts(&req(&[])).unwrap(), None);
        assert_eq!(opts(&req(&[("Prefer", "respond-async")])).unwrap(), None);
    }

    #[test]
    fn webhooks_metadata_and_prefer() {
        let o = opts(&req(&[
            (
                "X-EZThrottle-Webhook",
                "http://127.0.0.1:9/a, https://h.test/b",
            ),
            ("X-EZThrottle-Metadata", r#"{"order":7}"#),
            ("Prefer", "return=minimal, Respond-Async"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.webhooks, ["http://127.0.0.1:9/a", "https://h.test/b"]);
        assert_eq!(o.metadata, json!({"order": 7}));
        assert!(o.respond_async);
    }

    #[test]
    fn bad_headers_are_400() {
        for bad in ["ftp://h/x", "/relative", "http://", "not a url"] {
            let e = opts(&req(&[("X-EZThrottle-Webhook", bad)])).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        for bad in ["[1,2]", "{", "\"s\""] {
            let e = opts(&req(&[
                ("X-EZThrottle-Webhook", "http://h.test/"),
                ("X-EZThrottle-Metadata", bad),
            ]))
            .unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
    }

    #[test]
    fn a_jobs_own_attempt_never_parks() {
        let r = req(&[("X-EZThrottle-Webhook", "http://h.test/")]);
        let e = egress("");
        assert_eq!(
            options(&r, W, Caller::JobRunner { parked: true }, &e).unwrap(),
            None
        );
        // A client's X-EZThrottle-Job is not the job runner's word.
        let r = req(&[
            ("X-EZThrottle-Webhook", "http://h.test/"),
            ("X-EZThrottle-Job", "job_1"),
        ]);
        assert!(options(&r, W, Caller::Client, &e).unwrap().is_some());
    }

    #[test]
    fn webhooks_the_egress_policy_refuses_are_400() {
        let e = egress("");
        for bad in [
            "http://169.254.169.254/hook",
            "http://2852039166/hook",
            "http://[::ffff:169.254.169.254]/hook",
            "http://metadata.google.internal/x",
            "http://127.0.0.1:9/a",
            "http://127.0.0.1:4001/api/v1/webhook-secrets",
            "http://10.0.0.1/h",
            "https://h.test:22/",
        ] {
            let r = req(&[("X-EZThrottle-Webhook", bad)]);
            let err = options(&r, W, Caller::Client, &e).unwrap_err();
            assert_eq!((err.status(), err.code()), (400, "egress_denied"), "{bad}");
            assert!(err.to_string().contains("X-EZThrottle-Webhook"), "{err}");
        }
    }
}
