//! Which requests an `Idempotency-Key` applies to, and what a valid key is
//! (SPEC §6).

use http::{HeaderValue, Method};

pub const HEADER: &str = "idempotency-key";
/// [`HEADER`] parsed once, for look-ups on the request path (see
/// `wire::names`).
pub static HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
/// Added to every replayed response.
pub const REPLAY_HEADER: &str = "Idempotency-Replay";

/// Safe methods are idempotent already: the header is ignored on them.
pub fn applies(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// 1–255 visible ASCII characters (0x21–0x7E).
pub fn validate(value: &HeaderValue) -> Result<String, String> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 {
        return Err(format!(
            "Idempotency-Key must be 1-255 characters, got {}",
            bytes.len()
        ));
    }
    if let Some(pos) = bytes.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        return Err(format!(
            "Idempotency-Key must be visible ASCII; character {} is not",
            pos + 1
        ));
    }
    // Only visible ASCII remains, so this cannot fail.
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parsed_name_is_the_header() {
        assert_eq!(HEADER_NAME.as_str(), HEADER);
    }

    #[test]
    fn keys() {
        let ok = |s: &str| validate(&HeaderValue::from_str(s).unwrap());
        assert_eq!(ok("9f6e-UUID_v4~!").unwrap(), "9f6e-UUID_v4~!");
        assert!(ok(&"k".repeat(255)).is_ok());
        assert!(ok(&"k".repeat(256)).is_err());
        assert!(ok("").is_err());
        assert!(ok("has space").is_err());
        assert!(ok("tab\there").is_err());
        assert!(validate(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_err());
    }

    #[test]
    fn safe_methods_are_exempt() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!applies(&m));
        }
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(applies(&m));
        }
        assert!(applies(&Method::from_bytes(b"PURGE").unwrap()));
    }
}
