//! The webhook signature (SPEC §8):
//! `X-EZThrottle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! Compatible with the PyPI SDK's `ezthrottle.verify_webhook_signature(payload,
//! signature_header, secret, tolerance=300)`: it splits the header on `,` and
//! `=`, rejects a `t` more than `tolerance` seconds from its clock, and
//! compares `v1` with the lowercase hex digest of `"<t>.<body as UTF-8>"`.
//! So the timestamp is taken when an attempt is sent (every retry is signed
//! afresh) and the body must be UTF-8 (our payloads are JSON).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-EZThrottle-Signature";

/// How far a receiver (and [`verify`]) lets `t` stray from its clock by
/// default, in seconds (the SDK's default).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    #[allow(
        clippy::expect_used,
        reason = "HMAC accepts keys of any length; `new_from_slice` cannot fail for it"
    )]
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Lowercase hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

/// The full header value `t=<timestamp>,v1=<signature>`.
pub fn header_value(secret: &str, timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, body))
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why [`verify`] refused a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Malformed,
    Expired,
    Mismatch,
}

/// Check a header against `body` with any of `secrets` (primary, then the
/// secondary during a rotation), like a receiver would. `now` and `tolerance`
/// in seconds. Comparison is constant-time.
pub fn verify(
    header: &str,
    body: &[u8],
    secrets: &[&str],
    now: u64,
    tolerance: u64,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if v1.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(t) > tolerance {
        return Err(VerifyError::Expired);
    }
    let ok = secrets.iter().any(|secret| {
        v1.iter()
            .any(|sig| mac(secret, t, body).verify_slice(sig).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac_sha256() {
        // Computed with Python: hmac.new(b"whsec_0123456789abcdef",
        // b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature("whsec_0123456789abcdef", 1_700_000_000, br#"{"a":1}"#),
            "9f5e37cdc7ea587c7c02062d93283cad000d66a831b2a1676418696db47ed6c2"
        );
        // RFC 4231 test case 2 for the primitive itself.
        let mut m = HmacSha256::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn header_has_the_spec_shape() {
        let h = header_value("0123456789abcdef", 42, b"{}");
        let (t, v1) = h.split_once(',').unwrap();
        assert_eq!(t, "t=42");
        assert_eq!(
            v1,
            format!("v1={}", signature("0123456789abcdef", 42, b"{}"))
        );
    }

    #[test]
    fn verify_accepts_either_secret_and_refuses_tampering_and_age() {
        let body = br#"{"job_id":"j1","status":"success"}"#;
        let now = 1_700_000_000;
        let h = header_value("new-secret-0123456789", now, body);
        assert_eq!(
            verify(&h, body, &["new-secret-0123456789"], now, 300),
            Ok(())
        );
        assert_eq!(
            verify(
                &h,
                body,
                &["old-secret-0123456789", "new-secret-0123456789"],
                now + 10,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(&h, b"{}", &["new-secret-0123456789"], now, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&h, body, &["other-secret-0123456"], now, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&h, body, &["new-secret-0123456789"], now + 301, 300),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            verify("v1=abcd", body, &["x"], now, 300),
            Err(VerifyError::Malformed)
        );
    }
}
