//! `POST /api/v1/jobs` bodies (SPEC §8): parsed once into a [`JobSpec`],
//! every mistake reported with the path of the field (`webhooks[0].url: ...`).
//! snake_case and the SDKs' camelCase are both accepted, at every depth.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::spec::{ExecutionMode, Fallback, JobSpec, RetryPolicySpec, Trigger, WebhookSpec};
use crate::config::Config;
use crate::retry::route::LOCAL;

/// A job as the API receives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Option<Map<String, Value>>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub webhooks: Option<Vec<WebhookRequest>>,
    #[serde(default, alias = "webhookQuorum")]
    pub webhook_quorum: Option<i64>,
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    #[serde(default, alias = "regionPolicy")]
    pub region_policy: Option<String>,
    #[serde(default, alias = "executionMode")]
    pub execution_mode: Option<String>,
    #[serde(default, alias = "retryPolicy")]
    pub retry_policy: Option<RetryPolicyRequest>,
    #[serde(default, alias = "fallbackJob")]
    pub fallback_job: Option<Box<JobRequest>>,
    /// Only in a `fallback_job`.
    #[serde(default)]
    pub trigger: Option<TriggerRequest>,
    #[serde(default, alias = "onSuccess")]
    pub on_success: Option<Box<JobRequest>>,
    #[serde(default, alias = "onFailure")]
    pub on_failure: Option<Box<JobRequest>>,
    #[serde(default, alias = "onFailureTimeoutMs")]
    pub on_failure_timeout_ms: Option<i64>,
    #[serde(default, alias = "idempotentKey")]
    pub idempotent_key: Option<String>,
    #[serde(default, alias = "retryAt")]
    pub retry_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    #[serde(default)]
    pub url: Option<String>,
    /// Accepted for compatibility; every webhook is delivered from here.
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    #[serde(default, alias = "hasQuorumVote")]
    pub has_quorum_vote: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyRequest {
    #[serde(default, alias = "maxRetries")]
    pub max_retries: Option<i64>,
    #[serde(default, alias = "maxReroutes")]
    pub max_reroutes: Option<i64>,
    #[serde(default, alias = "retryCodes")]
    pub retry_codes: Option<Vec<i64>>,
    #[serde(default, alias = "rerouteCodes")]
    pub reroute_codes: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub codes: Option<Vec<i64>>,
    #[serde(default, alias = "timeoutMs")]
    pub timeout_ms: Option<i64>,
}

/// A job ready to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub spec: JobSpec,
    /// The client's key (UNIQUE strategy), or `None` to derive one (HASH).
    pub idempotent_key: Option<String>,
    /// Unix ms: not before.
    pub retry_at: u64,
}

/// A rejected job: `"<field path>: <reason>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

fn invalid(path: &str, reason: impl std::fmt::Display) -> Invalid {
    Invalid(format!("{path}: {reason}"))
}

/// Longest job or webhook URL accepted (what common servers accept in a
/// request line); longer ones are refused at submission rather than failing
/// at every attempt.
pub const MAX_URL: usize = 8 * 1024;

/// Fields that hold a nested object; serde would also accept a JSON array
/// for them (a struct from a sequence), which no client means.
const OBJECT_FIELDS: &[&str] = &[
    "retry_policy",
    "retryPolicy",
    "fallback_job",
    "fallbackJob",
    "trigger",
    "on_success",
    "onSuccess",
    "on_failure",
    "onFailure",
    "headers",
    "metadata",
];

/// Objects where objects are meant, at every depth; `path` as in errors.
fn objects_only(v: &Value, path: &str) -> Result<(), Invalid> {
    let Value::Object(map) = v else {
        let what = if path.is_empty() { "body" } else { path };
        return Err(invalid(what, "must be a JSON object"));
    };
    for (k, child) in map {
        let here = at(path, k);
        if OBJECT_FIELDS.contains(&k.as_str()) && !child.is_null() {
            if k == "headers" || k == "metadata" {
                if !child.is_object() {
                    return Err(invalid(&here, "must be a JSON object"));
                }
            } else {
                objects_only(child, &here)?;
            }
        }
        if k == "webhooks" {
            for (i, w) in child.as_array().into_iter().flatten().enumerate() {
                objects_only(w, &format!("{here}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// Parse and validate a request body: one JSON object and nothing after it.
pub fn parse(body: &[u8], config: &Config) -> Result<Submission, Invalid> {
    let value: Value = {
        let mut de = serde_json::Deserializer::from_slice(body);
        let v = Value::deserialize(&mut de)
            .map_err(|e| Invalid(format!("body: not valid JSON: {e}")))?;
        de.end()
            .map_err(|e| Invalid(format!("body: not valid JSON: {e}")))?;
        v
    };
    objects_only(&value, "")?;
    let req: JobRequest = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Invalid(format!("body: not valid JSON: {inner}"))
        } else if path == "." {
            Invalid(format!("body: {inner}"))
        } else {
            Invalid(format!("{path}: {inner}"))
        }
    })?;
    let idempotent_key = match &req.idempotent_key {
        Some(k) => Some(validate_key("idempotent_key", k)?),
        None => None,
    };
    let retry_at = match req.retry_at {
        None => 0,
        Some(t) if t >= 0 => t as u64,
        Some(t) => {
            return Err(invalid(
                "retry_at",
                format!("must be a Unix time in ms >= 0, got {t}"),
            ))
        }
    };
    let spec = job(&req, "", config, false)?;
    Ok(Submission {
        spec,
        idempotent_key,
        retry_at,
    })
}

/// The HASH strategy's key: SHA-256 of (workspace, method, url, canonical
/// body), so identical submits name one job.
pub fn derived_key(workspace: &str, spec: &JobSpec) -> String {
    let mut h = Sha256::new();
    for part in [
        workspace.as_bytes(),
        spec.method.as_bytes(),
        spec.url.as_bytes(),
        crate::idempotency::fingerprint::fingerprint(&spec.body).as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

fn at(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn validate_key(path: &str, key: &str) -> Result<String, Invalid> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(invalid(path, "must be 1-255 visible ASCII characters"));
    }
    Ok(key.to_string())
}

fn http_url(path: &str, raw: &str) -> Result<String, Invalid> {
    if raw.len() > MAX_URL {
        return Err(invalid(
            path,
            format!(
                "is {} bytes long; at most {MAX_URL} are accepted",
                raw.len()
            ),
        ));
    }
    let url =
        url::Url::parse(raw).map_err(|e| invalid(path, format!("not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            path,
            format!("scheme must be http or https, got {:?}", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(path, "has no host"));
    }
    Ok(url.to_string())
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// One job (recursively: fallbacks, on_success, on_failure).
fn job(
    req: &JobRequest,
    prefix: &str,
    config: &Config,
    in_fallback: bool,
) -> Result<JobSpec, Invalid> {
    let url = match &req.url {
        Some(u) => http_url(&at(prefix, "url"), u)?,
        None => return Err(invalid(&at(prefix, "url"), "is required")),
    };
    let method = match &req.method {
        None => "GET".to_string(),
        Some(m) => {
            let upper = m.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                return Err(invalid(
                    &at(prefix, "method"),
                    format!("must be one of {}, got {m:?}", METHODS.join(", ")),
                ));
            }
            upper
        }
    };
    let mut headers = Vec::new();
    for (name, value) in req.headers.iter().flatten() {
        let path = at(prefix, &format!("headers.{name}"));
        let Value::String(value) = value else {
            return Err(invalid(&path, "must be a string"));
        };
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(&path, "is not a valid header name"));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(invalid(&path, "is not a valid header value"));
        }
        headers.push((name.clone(), value.clone()));
    }
    let headers = super::spec::end_to_end(headers);
    let metadata = match &req.metadata {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(obj @ Value::Object(_)) => obj.clone(),
        Some(_) => return Err(invalid(&at(prefix, "metadata"), "must be a JSON object")),
    };
    let mut webhooks = Vec::new();
    for (i, w) in req.webhooks.iter().flatten().enumerate() {
        let path = at(prefix, &format!("webhooks[{i}].url"));
        let Some(u) = &w.url else {
            return Err(invalid(&path, "is required"));
        };
        webhooks.push(WebhookSpec {
            url: http_url(&path, u)?,
            has_quorum_vote: w.has_quorum_vote.unwrap_or(true),
        });
    }
    let voting = webhooks.iter().filter(|w| w.has_quorum_vote).count() as i64;
    let webhook_quorum = match req.webhook_quorum {
        None => 1,
        Some(q) if q >= 1 && (webhooks.is_empty() && q == 1 || q <= voting) => q as u32,
        Some(q) => {
            return Err(invalid(
                &at(prefix, "webhook_quorum"),
                format!("must be between 1 and the number of voting webhooks ({voting}), got {q}"),
            ))
        }
    };
    let strict = match req.region_policy.as_deref() {
        None | Some("fallback") => false,
        Some("strict") => true,
        Some(other) => {
            return Err(invalid(
                &at(prefix, "region_policy"),
                format!("must be \"fallback\" or \"strict\", got {other:?}"),
            ))
        }
    };
    let mut regions = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in req.regions.iter().flatten().enumerate() {
        let known = r == LOCAL || config.regions.contains_key(r);
        if !known {
            if strict {
                return Err(invalid(
                    &at(prefix, &format!("regions[{i}]")),
                    format!("unknown region {r:?} (region_policy strict): define [regions.{r}] or use \"local\""),
                ));
            }
            continue;
        }
        if seen.insert(r.clone()) {
            regions.push(r.clone());
        }
    }
    if req.regions.as_ref().is_some_and(|r| !r.is_empty()) && regions.is_empty() {
        // region_policy fallback: none of the named regions exists here.
        regions.push(LOCAL.to_string());
    }
    let execution_mode = match req.execution_mode.as_deref() {
        None | Some("race") => ExecutionMode::Race,
        Some("fanout") => ExecutionMode::Fanout,
        Some(other) => {
            return Err(invalid(
                &at(prefix, "execution_mode"),
                format!("must be \"race\" or \"fanout\", got {other:?}"),
            ))
        }
    };
    let retry_policy = match &req.retry_policy {
        None => None,
        Some(p) => Some(retry_policy(p, &at(prefix, "retry_policy"))?),
    };
    if req.trigger.is_some() && !in_fallback {
        return Err(invalid(
            &at(prefix, "trigger"),
            "is only valid inside a fallback_job",
        ));
    }
    let fallback = match &req.fallback_job {
        None => None,
        Some(fb) => {
            let path = at(prefix, "fallback_job");
            let trigger = trigger(fb.trigger.as_ref(), &at(&path, "trigger"))?;
            let job = job(fb, &path, config, true)?;
            Some(Box::new(Fallback { trigger, job }))
        }
    };
    let on_success = match &req.on_success {
        None => None,
        Some(j) => Some(Box::new(job(j, &at(prefix, "on_success"), config, false)?)),
    };
    let on_failure = match &req.on_failure {
        None => None,
        Some(j) => Some(Box::new(job(j, &at(prefix, "on_failure"), config, false)?)),
    };
    let on_failure_timeout_ms = match req.on_failure_timeout_ms {
        None => None,
        Some(t) if t >= 0 => Some(t as u64),
        Some(t) => {
            return Err(invalid(
                &at(prefix, "on_failure_timeout_ms"),
                format!("must be >= 0, got {t}"),
            ))
        }
    };
    if !prefix.is_empty() {
        if let Some(k) = &req.idempotent_key {
            validate_key(&at(prefix, "idempotent_key"), k)?;
        }
    }
    let domain = url::Url::parse(&url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        })
        .unwrap_or_default();
    let max_wait_ms = config.limits_for(&domain).max_wait.as_millis() as u64;
    Ok(JobSpec {
        headers,
        body: req.body.clone().unwrap_or_default().into_bytes(),
        webhooks,
        webhook_quorum,
        metadata,
        regions,
        execution_mode,
        retry_policy,
        fallback,
        on_success,
        on_failure,
        on_failure_timeout_ms,
        ..JobSpec::request(&method, &url, max_wait_ms)
    })
}

fn status_codes(path: &str, codes: &[i64]) -> Result<Vec<u16>, Invalid> {
    codes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    invalid(
                        &format!("{path}[{i}]"),
                        format!("must be an HTTP status 100-599, got {c}"),
                    )
                })
        })
        .collect()
}

fn retry_policy(p: &RetryPolicyRequest, path: &str) -> Result<RetryPolicySpec, Invalid> {
    let count = |v: Option<i64>, name: &str| -> Result<Option<u32>, Invalid> {
        match v {
            None => Ok(None),
            Some(n) if (0..=100).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(invalid(
                &at(path, name),
                format!("must be between 0 and 100, got {n}"),
            )),
        }
    };
    Ok(RetryPolicySpec {
        max_retries: count(p.max_retries, "max_retries")?,
        max_reroutes: count(p.max_reroutes, "max_reroutes")?,
        retry_codes: match &p.retry_codes {
            None => None,
            Some(c) => Some(status_codes(&at(path, "retry_codes"), c)?),
        },
        reroute_codes: match &p.reroute_codes {
            None => None,
            Some(c) => Some(status_codes(&at(path, "reroute_codes"), c)?),
        },
    })
}

fn trigger(t: Option<&TriggerRequest>, path: &str) -> Result<Trigger, Invalid> {
    // The SDK sends `"trigger": null` for a fallback without one: any failure.
    let Some(t) = t else {
        return Ok(Trigger::OnError { codes: Vec::new() });
    };
    match t.kind.as_deref() {
        Some("on_error") => Ok(Trigger::OnError {
            codes: status_codes(&at(path, "codes"), t.codes.as_deref().unwrap_or_default())?,
        }),
        Some("on_timeout") => match t.timeout_ms {
            Some(ms) if ms > 0 => Ok(Trigger::OnTimeout {
                timeout_ms: ms as u64,
            }),
            other => Err(invalid(
                &at(path, "timeout_ms"),
                format!("must be a number of milliseconds > 0, got {other:?}"),
            )),
        },
        other => Err(invalid(
            &at(path, "type"),
            format!("must be \"on_error\" or \"on_timeout\", got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml_str(
            "[regions.east]\nproxy = \"http://127.0.0.1:5000\"\n",
            "t.toml",
        )
        .unwrap()
    }

    fn err(body: &str) -> String {
        parse(body.as_bytes(), &config()).unwrap_err().0
    }

    #[test]
    fn a_full_job_in_camel_case() {
        let body = r#"{
            "url": "https://api.test/v1/x", "method": "post",
            "headers": {"Content-Type": "application/json"},
            "body": "{\"a\":1}", "metadata": {"k": "v"},
            "webhooks": [{"url": "http://127.0.0.1:9/h", "hasQuorumVote": false},
                         {"url": "http://127.0.0.1:9/g", "regions": ["iad"]}],
            "webhookQuorum": 1, "regions": ["local", "east", "nowhere"],
            "executionMode": "fanout", "retryPolicy": {"maxRetries": 5, "retryCodes": [429]},
            "fallbackJob": {"url": "http://b.test/", "trigger": {"type": "on_timeout", "timeoutMs": 50},
                            "fallbackJob": {"url": "http://c.test/", "trigger": null}},
            "onSuccess": {"url": "http://d.test/"}, "onFailureTimeoutMs": 100,
            "idempotentKey": "k-1", "retryAt": 1700000000000
        }"#;
        let s = parse(body.as_bytes(), &config()).unwrap();
        assert_eq!(s.idempotent_key.as_deref(), Some("k-1"));
        assert_eq!(s.retry_at, 1_700_000_000_000);
        let j = s.spec;
        assert_eq!(j.method, "POST");
        assert_eq!(j.body, br#"{"a":1}"#);
        assert_eq!(
            j.regions,
            ["local", "east"],
            "unknown regions dropped (policy fallback)"
        );
        assert_eq!(j.execution_mode, ExecutionMode::Fanout);
        assert!(!j.webhooks[0].has_quorum_vote && j.webhooks[1].has_quorum_vote);
        assert_eq!(j.retry_policy.as_ref().unwrap().max_retries, Some(5));
        let fb = j.fallback.as_ref().unwrap();
        assert_eq!(fb.trigger, Trigger::OnTimeout { timeout_ms: 50 });
        assert_eq!(
            fb.job.fallback.as_ref().unwrap().trigger,
            Trigger::OnError { codes: vec![] }
        );
        assert!(j.on_success.is_some());
        assert_eq!(j.on_failure_timeout_ms, Some(100));
    }

    #[test]
    fn strict_json_objects_only() {
        for (body, want) in [
            (r#"{"url":"http://a/"} xyz"#, "body: not valid JSON"),
            (r#"{"url":"http://a/"}{}"#, "body: not valid JSON"),
            (r#"["http://a/"]"#, "body: must be a JSON object"),
            ("\"http://a/\"", "body: must be a JSON object"),
            ("", "body: not valid JSON"),
            (
                r#"{"url":"http://a/","retry_policy":[3]}"#,
                "retry_policy: must be a JSON object",
            ),
            (
                r#"{"url":"http://a/","fallbackJob":["http://b/",{"type":"on_error"}]}"#,
                "fallbackJob: must be a JSON object",
            ),
            (
                r#"{"url":"http://a/","on_success":{"url":"http://b/","retryPolicy":[1]}}"#,
                "on_success.retryPolicy: must be a JSON object",
            ),
            (
                r#"{"url":"http://a/","webhooks":[["http://h/"]]}"#,
                "webhooks[0]: must be a JSON object",
            ),
            (
                r#"{"url":"http://a/","headers":[["a","b"]]}"#,
                "headers: must be a JSON object",
            ),
        ] {
            let e = err(body);
            assert!(e.starts_with(want), "{body}: {e}");
        }
        // Whitespace after the object is fine.
        assert!(parse(b"{\"url\":\"http://a/\"} \n", &config()).is_ok());
    }

    #[test]
    fn long_urls_are_refused_at_submission() {
        let long = format!("http://a.test/{}", "x".repeat(100_000));
        let e = err(&format!(r#"{{"url":"{long}"}}"#));
        assert!(
            e.starts_with("url: is 100014 bytes long; at most 8192"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{"url":"http://a/","webhooks":[{{"url":"{long}"}}]}}"#
        ));
        assert!(e.starts_with("webhooks[0].url: is"), "{e}");
        let ok = format!("http://a.test/{}", "x".repeat(MAX_URL - 14));
        assert!(parse(format!(r#"{{"url":"{ok}"}}"#).as_bytes(), &config()).is_ok());
    }

    #[test]
    fn headers_named_in_connection_are_not_kept() {
        let body = r#"{"url":"http://a/","headers":{"Connection":"X-Secret-Hop","X-Secret-Hop":"1","X-Keep":"2"}}"#;
        let s = parse(body.as_bytes(), &config()).unwrap();
        assert_eq!(
            s.spec.headers,
            vec![("X-Keep".to_string(), "2".to_string())]
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err("{}"), "url: is required");
        assert!(err(r#"{"url":"ftp://x/"}"#).starts_with("url: scheme must be http"));
        assert!(err(r#"{"url":"nope"}"#).starts_with("url: not an absolute URL"));
        assert!(err(r#"{"url":"http://a/","method":"BREW"}"#).starts_with("method:"));
        assert!(err(r#"{"url":"http://a/","body":{"a":1}}"#).starts_with("body: invalid type"));
        assert!(err(r#"{"url":"http://a/","metadata":[1]}"#)
            .starts_with("metadata: must be a JSON object"));
        assert!(
            err(r#"{"url":"http://a/","webhooks":[{"url":"x"}]}"#).starts_with("webhooks[0].url:")
        );
        assert!(err(r#"{"url":"http://a/","webhook_quorum":0}"#).starts_with("webhook_quorum:"));
        assert!(
            err(r#"{"url":"http://a/","webhooks":[{"url":"http://h/"}],"webhook_quorum":2}"#)
                .starts_with("webhook_quorum:")
        );
        assert!(
            err(r#"{"url":"http://a/","regions":["mars"],"region_policy":"strict"}"#)
                .starts_with("regions[0]: unknown region")
        );
        assert!(err(r#"{"url":"http://a/","region_policy":"maybe"}"#).starts_with("region_policy:"));
        assert!(
            err(r#"{"url":"http://a/","execution_mode":"relay"}"#).starts_with("execution_mode:")
        );
        assert!(err(
            r#"{"url":"http://a/","fallback_job":{"url":"http://b/","trigger":{"type":"soon"}}}"#
        )
        .starts_with("fallback_job.trigger.type:"));
        assert!(
            err(r#"{"url":"http://a/","fallback_job":{"trigger":{"type":"on_error"}}}"#)
                .starts_with("fallback_job.url: is required")
        );
        assert!(err(r#"{"url":"http://a/","on_failure_timeout_ms":-1}"#)
            .starts_with("on_failure_timeout_ms:"));
        assert!(
            err(r#"{"url":"http://a/","retry_at":"soon"}"#).starts_with("retry_at: invalid type")
        );
        assert!(err(r#"{"url":"http://a/","trigger":{"type":"on_error"}}"#).starts_with("trigger:"));
        assert!(err(r#"{"url":"http://a/","colour":"red"}"#).contains("unknown field"));
        assert!(err("{").starts_with("body: not valid JSON"));
        assert!(
            err(r#"{"url":"http://a/","retry_policy":{"retry_codes":[42]}}"#)
                .starts_with("retry_policy.retry_codes[0]:")
        );
        assert!(err(r#"{"url":"http://a/","idempotent_key":""}"#).starts_with("idempotent_key:"));
    }

    #[test]
    fn derived_keys_ignore_json_formatting_but_not_content() {
        let c = config();
        let a = parse(
            br#"{"url":"http://a/x","method":"POST","body":"{\"a\":1,\"b\":2}"}"#,
            &c,
        )
        .unwrap();
        let b = parse(
            br#"{"url":"http://a/x","method":"POST","body":"{ \"b\":2, \"a\":1 }"}"#,
            &c,
        )
        .unwrap();
        let d = parse(
            br#"{"url":"http://a/x","method":"POST","body":"{\"a\":1,\"b\":3}"}"#,
            &c,
        )
        .unwrap();
        assert_eq!(derived_key("w", &a.spec), derived_key("w", &b.spec));
        assert_ne!(derived_key("w", &a.spec), derived_key("w", &d.spec));
        assert_ne!(derived_key("w", &a.spec), derived_key("v", &a.spec));
    }
}
