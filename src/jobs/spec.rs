//! What a job sends and where its result goes, stored as JSON in the job
//! record (the store stays ignorant of request shapes).

use base64::Engine;
use serde::{Deserialize, Serialize};

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
