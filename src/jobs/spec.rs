//! What a job sends and where its result goes, stored as JSON in the job
//! record (the store stays ignorant of request shapes).

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Headers that describe one hop (or instruct ezthrottle) rather than the
/// request: never stored with a job, never replayed by its attempts.
const HOP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "upgrade",
    "expect",
];

/// Whether a (lower-case) request header belongs to a job's request.
pub fn stored_header(name: &str) -> bool {
    !HOP_HEADERS.contains(&name) && !name.starts_with(crate::wire::PREFIX)
}

/// The end-to-end headers of a request to store with a job (RFC 9110 §7.6.1):
/// without the fixed hop-by-hop set, our own control headers, and every
/// header the request's `Connection` header names — which would otherwise be
/// replayed upstream without the `Connection` header that scoped them.
pub fn end_to_end(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let listed: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    headers
        .into_iter()
        .filter(|(k, _)| {
            let lower = k.to_ascii_lowercase();
            stored_header(&lower) && !listed.contains(&lower)
        })
        .collect()
}

/// One webhook of a job (SPEC §8 `webhooks[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default = "yes")]
    pub has_quorum_vote: bool,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// The request a job makes, with its policy and result routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub method: String,
    /// Absolute http(s) URL.
    pub url: String,
    /// In order, as the client sent them (hop-by-hop headers removed).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Base64 of the body bytes (bodies need not be UTF-8).
    #[serde(default, with = "b64")]
    pub body: Vec<u8>,
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
    #[serde(default = "one")]
    pub webhook_quorum: u32,
    /// Echoed in the webhook (`X-EZThrottle-Metadata`).
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// How long one attempt may wait for admission and retries.
    pub max_wait_ms: u64,
    /// Region the attempt starts in (`None`: the domain's order).
    #[serde(default)]
    pub region: Option<String>,
    /// Regions to run in (SPEC §8 `regions`); empty: the domain's order.
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub execution_mode: ExecutionMode,
    /// Per-job `[retry]` override, handed to the pipeline.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicySpec>,
    /// Runs when this job fails as its trigger says; first success wins.
    #[serde(default)]
    pub fallback: Option<Box<Fallback>>,
    #[serde(default)]
    pub on_success: Option<Box<JobSpec>>,
    #[serde(default)]
    pub on_failure: Option<Box<JobSpec>>,
    /// `on_failure` also runs when no success came within this long.
    #[serde(default)]
    pub on_failure_timeout_ms: Option<u64>,
    /// A request parked from the proxy path (its client could reach the
    /// target through the proxy anyway), rather than a job named through
    /// the job API: it keeps the proxy path's egress policy (SPEC §13).
    /// Absent in older records: those get the stricter job policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
}

/// `race`: all regions at once, first 2xx wins; `fanout`: all run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    #[default]
    Race,
    Fanout,
}

/// A fallback job and what triggers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    pub trigger: Trigger,
    pub job: JobSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// The job ended with one of these status codes (empty: any failure).
    OnError { codes: Vec<u16> },
    /// The job had no final response after this long.
    OnTimeout { timeout_ms: u64 },
}

/// The `retry_policy` of a job (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reroutes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_codes: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reroute_codes: Option<Vec<u16>>,
}

impl RetryPolicySpec {
    /// Apply to a `[retry]` config.
    pub fn apply(&self, base: &mut crate::config::RetryConfig) {
        if let Some(v) = self.max_retries {
            base.max_retries = v;
        }
        if let Some(v) = self.max_reroutes {
            base.max_reroutes = v;
        }
        if let Some(v) = &self.retry_codes {
            base.retry_codes = v.as_slice().into();
        }
        if let Some(v) = &self.reroute_codes {
            base.reroute_codes = v.as_slice().into();
        }
    }
}

/// A URL a job will connect to, and the request field that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedUrl<'a> {
    /// As in the request body: `url`, `webhooks[1].url`, `fallback_job.on_success.url`.
    pub field: String,
    pub url: &'a str,
    pub webhook: bool,
}

impl JobSpec {
    /// Every URL this job and its fallback / follow-up jobs will call, with
    /// the field that named it (for a `400` that says which one is refused).
    pub fn urls(&self) -> Vec<NamedUrl<'_>> {
        let mut out = Vec::new();
        self.collect_urls("", &mut out);
        out
    }

    fn collect_urls<'a>(&'a self, prefix: &str, out: &mut Vec<NamedUrl<'a>>) {
        out.push(NamedUrl {
            field: format!("{prefix}url"),
            url: &self.url,
            webhook: false,
        });
        for (i, w) in self.webhooks.iter().enumerate() {
            out.push(NamedUrl {
                field: format!("{prefix}webhooks[{i}].url"),
                url: &w.url,
                webhook: true,
            });
        }
        if let Some(f) = &self.fallback {
            f.job.collect_urls(&format!("{prefix}fallback_job."), out);
        }
        if let Some(j) = &self.on_success {
            j.collect_urls(&format!("{prefix}on_success."), out);
        }
        if let Some(j) = &self.on_failure {
            j.collect_urls(&format!("{prefix}on_failure."), out);
        }
    }

    /// A bare request: no body, webhooks or policy.
    pub fn request(method: &str, url: &str, max_wait_ms: u64) -> JobSpec {
        JobSpec {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            webhooks: Vec::new(),
            webhook_quorum: 1,
            metadata: serde_json::Value::Null,
            max_wait_ms,
            region: None,
            regions: Vec::new(),
            execution_mode: ExecutionMode::Race,
            retry_policy: None,
            fallback: None,
            on_success: None,
            on_failure: None,
            on_failure_timeout_ms: None,
            parked: false,
        }
    }
}

mod b64 {
    use super::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_not_stored() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let kept = end_to_end(h(&[
            ("Connection", "X-Hop, close"),
            ("connection", " x-other "),
            ("X-Hop", "1"),
            ("X-Other", "2"),
            ("Keep-Alive", "timeout=5"),
            ("X-EZThrottle-Max-Wait", "3"),
            ("Authorization", "Bearer t"),
            ("X-End", "3"),
        ]));
        assert_eq!(kept, h(&[("Authorization", "Bearer t"), ("X-End", "3")]));
    }

    #[test]
    fn round_trips_binary_bodies_and_defaults() {
        let spec = JobSpec {
            method: "POST".into(),
            url: "https://api.test/v1/x?y=1".into(),
            headers: vec![("X-A".into(), "1".into()), ("x-a".into(), "2".into())],
            body: vec![0, 159, 146, 150, 255],
            webhooks: vec![WebhookSpec {
                url: "http://127.0.0.1:9/h".into(),
                has_quorum_vote: true,
            }],
            webhook_quorum: 1,
            metadata: serde_json::json!({"order": 7}),
            max_wait_ms: 60_000,
            region: None,
            regions: vec!["local".into()],
            execution_mode: ExecutionMode::Fanout,
            retry_policy: Some(RetryPolicySpec {
                max_retries: Some(1),
                ..Default::default()
            }),
            fallback: Some(Box::new(Fallback {
                trigger: Trigger::OnError { codes: vec![500] },
                job: JobSpec::request("GET", "http://b.test/", 1000),
            })),
            on_success: Some(Box::new(JobSpec::request("GET", "http://c.test/", 1000))),
            on_failure: None,
            on_failure_timeout_ms: Some(5),
            parked: true,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&text).unwrap(), spec);
        let minimal: JobSpec = serde_json::from_str(
            r#"{"method":"GET","url":"http://a.test/","max_wait_ms":1,"webhooks":[{"url":"http://h/"}]}"#,
        )
        .unwrap();
        assert!(minimal.webhooks[0].has_quorum_vote);
        assert_eq!(minimal.webhook_quorum, 1);
        assert!(minimal.body.is_empty());
    }
}
