//! Every error the proxy answers a client with, and the one place where each
//! becomes an HTTP status, a stable machine-readable code and the JSON body of
//! SPEC §8: `{"error":{"code":"...","message":"..."}}`.
//!
//! Messages are built only from what the client already sent or from our own
//! configuration; they never carry upstream bodies, credentials or secrets.

use std::net::SocketAddr;
use std::time::Duration;

/// An error answered to a proxy client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("this is a forward proxy: send absolute-form requests (GET http://host/path) or CONNECT; the control API listens on {control}")]
    NotAProxyRequest { control: SocketAddr },
    #[error("the request is not a valid proxy request: {0}")]
    BadRequest(String),
    /// Ambiguous or unsupported body framing (`accept::framing`).
    #[error("{0}")]
    InvalidFraming(String),
    #[error("the request line is longer than {limit} bytes")]
    RequestLineTooLong { limit: usize },
    #[error("{0}")]
    RequestHeaderTooLarge(String),
    #[error("the request head was not complete within {secs}s")]
    RequestHeadTimeout { secs: u64 },
    /// The process-wide budget for client bytes held in memory is spent.
    #[error("the proxy is holding too much unfinished client data; retry shortly")]
    Overloaded,
    #[error("the request targets this proxy itself")]
    ProxyLoop,
    /// The egress policy refuses the destination (SPEC §13).
    #[error("egress to {0}")]
    EgressDenied(String),
    /// A webhook URL named with a request that the egress policy refuses:
    /// refused at submission, naming the header.
    #[error("{0}")]
    WebhookRefused(String),
    #[error("CONNECT to port {port} is not allowed (allowed: {allowed})")]
    ConnectPortDenied { port: u16, allowed: String },
    #[error("client address {0} is not allowed to use this proxy")]
    ClientNotAllowed(std::net::IpAddr),
    #[error("could not resolve host {host}")]
    UpstreamUnresolvable { host: String },
    #[error("could not connect to {host}:{port}")]
    UpstreamConnectFailed { host: String, port: u16 },
    /// The message names the reason, and for an unknown issuer the config
    /// key that fixes it: "TLS failed" alone sends people to packet traces.
    #[error("TLS handshake with {host}:{port} failed: {}", reason.describe(host))]
    UpstreamTlsFailed {
        host: String,
        port: u16,
        reason: TlsFailure,
    },
    #[error("timed out talking to {host}:{port}")]
    UpstreamTimeout { host: String, port: u16 },
    #[error("the upstream connection to {host}:{port} failed")]
    UpstreamFailed { host: String, port: u16 },
    #[error("too many requests are already waiting for {domain}; retry after {}s", secs(*retry_after))]
    ThrottleQueueFull {
        domain: String,
        retry_after: Duration,
    },
    #[error("{domain} cannot take this request within its max wait; retry after {}s", secs(*retry_after))]
    ThrottleWaitTimeout {
        domain: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    IdempotencyKeyInvalid(String),
    #[error("Idempotency-Key was already used with a different request body. Generate a new key for new operations.")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in flight; retry after 1s")]
    IdempotencyKeyInFlight,
    #[error("request body is larger than {limit} bytes; {why}")]
    RequestBodyTooLarge { limit: u64, why: &'static str },
    #[error("the proxy's storage is unavailable")]
    StoreUnavailable,
    #[error("the client went away while waiting")]
    ClientGone,
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("internal error")]
    Internal,
}

/// Why a TLS handshake with an upstream failed, as far as rustls says.
///
/// Only names and fixed words go into messages: nothing of the certificate
/// or the upstream's bytes beyond an alert's or error kind's identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The chain does not lead to a trusted root (a private CA, or a
    /// self-signed certificate).
    UnknownIssuer,
    Expired,
    NotValidYet,
    /// The certificate does not cover the host name we connected for.
    NameMismatch,
    /// Another certificate verification error, by its rustls kind in
    /// snake case (`bad_signature`, `revoked`, `invalid_purpose`, ...).
    BadCertificate(String),
    /// The upstream aborted the handshake with this alert (TLS name, e.g.
    /// `handshake_failure`, `protocol_version`).
    Alert(String),
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else (the details are in the proxy's log).
    Other,
}

impl TlsFailure {
    /// A verification failure: the certificate itself is rejected, so
    /// trying again gives the same answer (not retried).
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            TlsFailure::UnknownIssuer
                | TlsFailure::Expired
                | TlsFailure::NotValidYet
                | TlsFailure::NameMismatch
                | TlsFailure::BadCertificate(_)
        )
    }

    /// The human half of the message, saying what to do where we can.
    pub fn describe(&self, host: &str) -> String {
        match self {
            TlsFailure::UnknownIssuer => "the upstream's certificate is signed by an unknown issuer (not in the trust roots); if it uses a private or corporate CA, add that CA with `[tls] upstream_ca_file` in the config".into(),
            TlsFailure::Expired => "the upstream's certificate has expired".into(),
            TlsFailure::NotValidYet => {
                "the upstream's certificate is not valid yet (check this machine's clock)".into()
            }
            TlsFailure::NameMismatch => {
                format!("the upstream's certificate is not valid for the name {host}")
            }
            TlsFailure::BadCertificate(kind) => {
                format!("the upstream's certificate was rejected ({kind})")
            }
            TlsFailure::Alert(alert) => {
                format!("the upstream aborted the handshake with TLS alert {alert}")
            }
            TlsFailure::Timeout => "the handshake timed out".into(),
            TlsFailure::Other => "see the proxy's log for details".into(),
        }
    }
}

impl ProxyError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::NotAProxyRequest { .. } | ProxyError::BadRequest(_) => 400,
            ProxyError::InvalidFraming(_) => 400,
            ProxyError::RequestLineTooLong { .. } => 414,
            ProxyError::RequestHeaderTooLarge(_) => 431,
            ProxyError::RequestHeadTimeout { .. } => 408,
            ProxyError::Overloaded => 503,
            ProxyError::ProxyLoop => 508,
            ProxyError::EgressDenied(_) => 403,
            ProxyError::WebhookRefused(_) => 400,
            ProxyError::ConnectPortDenied { .. } | ProxyError::ClientNotAllowed(_) => 403,
            ProxyError::UpstreamUnresolvable { .. }
            | ProxyError::UpstreamConnectFailed { .. }
            | ProxyError::UpstreamTlsFailed { .. }
            | ProxyError::UpstreamFailed { .. } => 502,
            ProxyError::UpstreamTimeout { .. } => 504,
            ProxyError::ThrottleQueueFull { .. } | ProxyError::ThrottleWaitTimeout { .. } => 429,
            ProxyError::IdempotencyKeyInvalid(_) => 400,
            ProxyError::IdempotencyKeyReused | ProxyError::IdempotencyKeyInFlight => 409,
            ProxyError::RequestBodyTooLarge { .. } => 413,
            ProxyError::StoreUnavailable => 503,
            ProxyError::ClientGone => 499,
            ProxyError::ShuttingDown => 503,
            ProxyError::Internal => 500,
        }
    }

    /// Stable error code clients can match on.
    /// Every code [`code`](Self::code) can return (metrics start each at 0).
    pub const ALL_CODES: &'static [&'static str] = &[
        "not_a_proxy_request",
        "bad_request",
        "invalid_framing",
        "request_line_too_long",
        "request_header_too_large",
        "request_timeout",
        "proxy_overloaded",
        "proxy_loop",
        "egress_denied",
        "connect_port_denied",
        "client_not_allowed",
        "upstream_unresolvable",
        "upstream_connect_failed",
        "upstream_tls_failed",
        "upstream_timeout",
        "upstream_failed",
        "throttle_queue_full",
        "throttle_wait_timeout",
        "idempotency_key_invalid",
        "idempotency_key_reused",
        "idempotency_key_in_flight",
        "request_body_too_large",
        "store_unavailable",
        "client_gone",
        "shutting_down",
        "internal_error",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NotAProxyRequest { .. } => "not_a_proxy_request",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::InvalidFraming(_) => "invalid_framing",
            ProxyError::RequestLineTooLong { .. } => "request_line_too_long",
            ProxyError::RequestHeaderTooLarge(_) => "request_header_too_large",
            ProxyError::RequestHeadTimeout { .. } => "request_timeout",
            ProxyError::Overloaded => "proxy_overloaded",
            ProxyError::ProxyLoop => "proxy_loop",
            ProxyError::EgressDenied(_) | ProxyError::WebhookRefused(_) => "egress_denied",
            ProxyError::ConnectPortDenied { .. } => "connect_port_denied",
            ProxyError::ClientNotAllowed(_) => "client_not_allowed",
            ProxyError::UpstreamUnresolvable { .. } => "upstream_unresolvable",
            ProxyError::UpstreamConnectFailed { .. } => "upstream_connect_failed",
            ProxyError::UpstreamTlsFailed { .. } => "upstream_tls_failed",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
            ProxyError::ThrottleQueueFull { .. } => "throttle_queue_full",
            ProxyError::ThrottleWaitTimeout { .. } => "throttle_wait_timeout",
            ProxyError::IdempotencyKeyInvalid(_) => "idempotency_key_invalid",
            ProxyError::IdempotencyKeyReused => "idempotency_key_reused",
            ProxyError::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ProxyError::RequestBodyTooLarge { .. } => "request_body_too_large",
            ProxyError::StoreUnavailable => "store_unavailable",
            ProxyError::ClientGone => "client_gone",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::Internal => "internal_error",
        }
    }

    /// `Retry-After` to send with this error, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::ShuttingDown
            | ProxyError::IdempotencyKeyInFlight
            | ProxyError::StoreUnavailable
            | ProxyError::Overloaded => Some(Duration::from_secs(1)),
            ProxyError::ThrottleQueueFull { retry_after, .. }
            | ProxyError::ThrottleWaitTimeout { retry_after, .. } => {
                Some(Duration::from_secs(secs(*retry_after)))
            }
            _ => None,
        }
    }

    /// The JSON body of SPEC §8.
    pub fn body(&self) -> Vec<u8> {
        error_body(self.code(), &self.to_string())
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
fn secs(d: Duration) -> u64 {
    let whole = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    whole.max(1)
}

/// `{"error":{"code":..,"message":..}}`, the one error body shape of the
/// whole product (proxy port and control port alike).
pub fn error_body(code: &str, message: &str) -> Vec<u8> {
    let value = serde_json::json!({ "error": { "code": code, "message": message } });
    // Serialising a `Value` built from two strings cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_key_body_is_exactly_the_spec_text() {
        let e = ProxyError::IdempotencyKeyReused;
        assert_eq!(e.status(), 409);
        assert_eq!(
            String::from_utf8(e.body()).unwrap(),
            r#"{"error":{"code":"idempotency_key_reused","message":"Idempotency-Key was already used with a different request body. Generate a new key for new operations."}}"#
        );
        assert_eq!(
            ProxyError::IdempotencyKeyInFlight.retry_after(),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn body_is_spec_shape() {
        let e = ProxyError::ConnectPortDenied {
            port: 22,
            allowed: "443".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "connect_port_denied");
        assert!(v["error"]["message"].as_str().unwrap().contains("22"));
        assert_eq!(e.status(), 403);
    }

    #[test]
    fn statuses_follow_the_spec() {
        assert_eq!(ProxyError::ProxyLoop.status(), 508);
        assert_eq!(
            ProxyError::NotAProxyRequest {
                control: "127.0.0.1:4001".parse().unwrap()
            }
            .status(),
            400
        );
        assert_eq!(
            ProxyError::UpstreamUnresolvable { host: "x".into() }.status(),
            502
        );
    }
}
