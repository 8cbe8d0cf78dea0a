//! Classify for gRPC: a gRPC server says "not now" in `grpc-status`, not
//! in the HTTP status (always 200), so the two codes that mean it are read
//! as their HTTP equivalents (docs/http2.md):
//!
//! | gRPC status | HTTP equivalent | what we do |
//! |---|---|---|
//! | 8 `RESOURCE_EXHAUSTED` | 429 | as a 429: retried per `retry_codes`, `grpc-retry-pushback-ms` read as `Retry-After` (pause the domain) |
//! | 14 `UNAVAILABLE` | 503 | as a 503 |
//!
//! Only a *trailers-only* response (the status in the response headers,
//! no message sent: the server refused the call before producing any
//! output) can be retried; a status in the trailers of a response whose
//! messages already reached the client is passed on, and still teaches
//! the domain its pause.

use std::time::Duration;

use http::HeaderMap;

/// `grpc-status` of a call the server refused for lack of resources.
pub const RESOURCE_EXHAUSTED: u32 = 8;
/// `grpc-status` of a call the service could not take right now.
pub const UNAVAILABLE: u32 = 14;

const STATUS: &str = "grpc-status";
/// The server's own retry pushback (gRPC A6), in milliseconds; a negative
/// value asks the client not to retry at all.
const PUSHBACK: &str = "grpc-retry-pushback-ms";
/// How the dialect reader takes a millisecond pause (`admission/dialects.rs`).
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Whether the response is a gRPC one (`application/grpc`, `+proto`, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
        })
}

/// The `grpc-status` in `headers`, if it is a valid status number.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get(STATUS)?.to_str().ok()?.trim();
    // Codes are 0..=16; anything longer is not a status.
    if v.is_empty() || v.len() > 2 {
        return None;
    }
    v.parse().ok()
}

/// The HTTP status a gRPC status stands for, where it changes what we do.
pub fn http_equivalent(grpc_status: u32) -> Option<u16> {
    match grpc_status {
        RESOURCE_EXHAUSTED => Some(429),
        UNAVAILABLE => Some(503),
        _ => None,
    }
}

/// The equivalent status of a gRPC response carried in `headers` (a
/// trailers-only response's headers, or trailers), or `None`.
pub fn equivalent(headers: &HeaderMap) -> Option<u16> {
    status(headers).and_then(http_equivalent)
}

/// The server's retry pushback. `Some(None)`: present and negative, the
/// server asks for no retry; `None`: absent or unreadable.
pub fn pushback(headers: &HeaderMap) -> Option<Option<Duration>> {
    let v = headers.get(PUSHBACK)?.to_str().ok()?.trim();
    if v.starts_with('-') {
        return v.parse::<i64>().ok().map(|_| None);
    }
    // A pause longer than a day is a broken value, not advice (the dialect
    // reader would refuse it anyway).
    let ms: u64 = v.parse().ok().filter(|ms| *ms <= 86_400_000)?;
    Some(Some(Duration::from_millis(ms)))
}

/// `headers` as the limit reader should see them: the pushback becomes a
/// `retry-after-ms`, which the dialect reader takes on a 429/503.
pub fn as_limit_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    if let Some(Some(pause)) = pushback(headers) {
        if let Ok(v) = http::HeaderValue::from_str(&pause.as_millis().to_string()) {
            out.insert(RETRY_AFTER_MS, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::headers as h;

    #[test]
    fn content_types() {
        assert!(is_grpc(&h(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&h(&[("content-type", "application/grpc+proto")])));
        assert!(is_grpc(&h(&[("content-type", "Application/GRPC")])));
        assert!(!is_grpc(&h(&[("content-type", "application/json")])));
        assert!(!is_grpc(&h(&[("content-type", "application/gr")])));
        assert!(!is_grpc(&h(&[])));
    }

    #[test]
    fn statuses_and_their_equivalents() {
        assert_eq!(equivalent(&h(&[("grpc-status", "8")])), Some(429));
        assert_eq!(equivalent(&h(&[("grpc-status", "14")])), Some(503));
        assert_eq!(equivalent(&h(&[("grpc-status", " 14 ")])), Some(503));
        for other in ["0", "2", "4", "13", "16"] {
            assert_eq!(equivalent(&h(&[("grpc-status", other)])), None, "{other}");
        }
        // Garbage, huge or missing: no status.
        for bad in ["", "x", "-8", "18446744073709551615", "8.0", "140"] {
            assert_eq!(status(&h(&[("grpc-status", bad)])), None, "{bad:?}");
        }
        assert_eq!(status(&h(&[])), None);
    }

    #[test]
    fn pushback_is_bounded_and_negative_means_do_not_retry() {
        let p = |v: &str| pushback(&h(&[("grpc-retry-pushback-ms", v)]));
        assert_eq!(p("1500"), Some(Some(Duration::from_millis(1500))));
        assert_eq!(p("0"), Some(Some(Duration::ZERO)));
        assert_eq!(p("-1"), Some(None));
        assert_eq!(p("86400001"), None);
        assert_eq!(p("18446744073709551615"), None);
        assert_eq!(p("soon"), None);
        assert_eq!(pushback(&h(&[])), None);
        let limits = as_limit_headers(&h(&[
            ("grpc-status", "8"),
            ("grpc-retry-pushback-ms", "250"),
        ]));
        assert_eq!(limits.get("retry-after-ms").unwrap(), "250");
    }
}
