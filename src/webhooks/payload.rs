//! The webhook body (SPEC §8), built once when a job ends and stored with its
//! deliveries, so every attempt (and every receiver) gets the same bytes:
//!
//! ```json
//! {"job_id":"...","idempotent_key":"...","status":"success",
//!  "response":{"status_code":200,"headers":{"content-type":"application/json"},"body":"..."},
//!  "metadata":{}}
//! ```
//!
//! Keys come in that order; `extra` keys (e.g. `region_results`,
//! `parent_job_id`) follow `metadata`.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

/// The keys this module writes itself; an `extra` key with one of these
/// names is ignored rather than written twice.
pub const CORE_KEYS: [&str; 5] = ["job_id", "idempotent_key", "status", "response", "metadata"];

/// The final upstream response a webhook reports.
#[derive(Debug, Clone, Copy)]
pub struct ResponseParts<'a> {
    pub status_code: u16,
    /// In order; a repeated name is joined with `", "` under its first spelling.
    pub headers: &'a [(String, String)],
    /// Sent as a string: invalid UTF-8 is replaced with U+FFFD.
    pub body: &'a [u8],
}

/// The exact JSON bytes to POST for a finished job.
///
/// `success` picks `"status":"success"` or `"failed"`. `metadata` is the
/// job's metadata object (`null` becomes `{}`). `extra` adds top-level keys
/// after `metadata` (ignored if they collide with [`CORE_KEYS`]).
pub fn build(
    job_id: &str,
    idempotent_key: &str,
    success: bool,
    response: ResponseParts<'_>,
    metadata: Value,
    extra: Option<Map<String, Value>>,
) -> Vec<u8> {
    let metadata = match metadata {
        Value::Null => Value::Object(Map::new()),
        other => other,
    };
    let payload = Payload {
        job_id,
        idempotent_key,
        status: if success { "success" } else { "failed" },
        response: Response {
            status_code: response.status_code,
            headers: Ordered(merge_headers(response.headers)),
            body: String::from_utf8_lossy(response.body),
        },
        metadata,
        extra: Ordered(
            extra
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| !CORE_KEYS.contains(&k.as_str()))
                .collect(),
        ),
    };
    #[allow(
        clippy::expect_used,
        reason = "serialising strings, numbers and `Value`s into a Vec cannot fail"
    )]
    serde_json::to_vec(&payload).expect("webhook payload serialises")
}

/// [`build`] with positional response parts, for callers that have them apart.
#[allow(clippy::too_many_arguments)]
pub fn build_payload(
    job_id: &str,
    idempotent_key: &str,
    success: bool,
    status_code: u16,
    headers: &[(String, String)],
    body: &[u8],
    metadata: Value,
    extra: Option<Map<String, Value>>,
) -> Vec<u8> {
    build(
        job_id,
        idempotent_key,
        success,
        ResponseParts {
            status_code,
            headers,
            body,
        },
        metadata,
        extra,
    )
}

#[derive(Serialize)]
struct Payload<'a> {
    job_id: &'a str,
    idempotent_key: &'a str,
    status: &'static str,
    response: Response<'a>,
    metadata: Value,
    #[serde(flatten)]
    extra: Ordered<Value>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: u16,
    headers: Ordered<String>,
    body: std::borrow::Cow<'a, str>,
}

/// A JSON object that keeps insertion order.
struct Ordered<V>(Vec<(String, V)>);

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn merge_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exact_spec_shape_and_key_order() {
        let headers = h(&[("content-type", "application/json"), ("x-id", "7")]);
        let bytes = build_payload(
            "job_1",
            "key_1",
            true,
            200,
            &headers,
            br#"{"ok":true}"#,
            json!({"order": 42}),
            None,
        );
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"job_id":"job_1","idempotent_key":"key_1","status":"success","response":{"status_code":200,"headers":{"content-type":"application/json","x-id":"7"},"body":"{\"ok\":true}"},"metadata":{"order":42}}"#
        );
    }

    #[test]
    fn failed_status_null_metadata_lossy_body_and_merged_headers() {
        let headers = h(&[("Set-Cookie", "a=1"), ("set-cookie", "b=2")]);
        let bytes = build_payload(
            "j",
            "k",
            false,
            503,
            &headers,
            b"bad \xff byte",
            Value::Null,
            None,
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["response"]["status_code"], 503);
        assert_eq!(v["response"]["headers"], json!({"Set-Cookie": "a=1, b=2"}));
        assert_eq!(v["response"]["body"], "bad \u{fffd} byte");
        assert_eq!(v["metadata"], json!({}));
    }

    #[test]
    fn extra_keys_follow_metadata_and_cannot_override_core_keys() {
        let mut extra = Map::new();
        extra.insert("parent_job_id".into(), json!("job_0"));
        extra.insert("status".into(), json!("hijacked"));
        extra.insert(
            "region_results".into(),
            json!([{"region": "local", "status_code": 200}]),
        );
        let bytes = build_payload("j", "k", true, 200, &[], b"", json!({}), Some(extra));
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(text.matches("\"status\":").count(), 1, "{text}");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], "success");
        assert_eq!(v["parent_job_id"], "job_0");
        assert_eq!(v["region_results"][0]["region"], "local");
        assert!(text.find("\"metadata\"").unwrap() < text.find("\"parent_job_id\"").unwrap());
    }
}
