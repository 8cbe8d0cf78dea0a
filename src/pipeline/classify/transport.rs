//! Classify, for attempts that got no response: transport failures mapped
//! to the proxy's error codes, and whether a failed connection may be
//! tried again.

use pingora::{Error, ErrorSource, ErrorType};

use crate::error::{ProxyError, TlsFailure};
use crate::pipeline::ctx::Target;

/// The error to answer the client with for a failed proxy attempt, or `None`
/// when the client itself went away (nobody to answer).
pub fn failure(e: &Error, target: Option<&Target>) -> Option<ProxyError> {
    let (host, port) = target.map(|t| (t.host.clone(), t.port)).unwrap_or_default();
    if matches!(e.esource(), ErrorSource::Downstream) {
        return match e.etype() {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => None,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => None,
            _ => Some(ProxyError::BadRequest("malformed request".into())),
        };
    }
    Some(match e.etype() {
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::ConnectTimedout
        | ErrorType::BindError
        | ErrorType::SocketError => ProxyError::UpstreamConnectFailed { host, port },
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::TLSWantX509Lookup
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => ProxyError::UpstreamTlsFailed {
            host,
            port,
            reason: tls_failure(e),
        },
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            ProxyError::UpstreamTimeout { host, port }
        }
        _ if matches!(e.esource(), ErrorSource::Upstream) => {
            ProxyError::UpstreamFailed { host, port }
        }
        _ => ProxyError::Internal,
    })
}

/// The retry outcome of a failed connection attempt (`fail_to_connect`):
/// a rejected certificate is final, anything else may be tried again.
pub fn connect_outcome(e: &Error) -> crate::retry::Outcome {
    if is_tls_verification_failure(e) {
        crate::retry::Outcome::TlsRejected
    } else {
        crate::retry::Outcome::ConnectFailed
    }
}

/// Whether a failed connection attempt is a TLS verification failure: the
/// upstream's certificate is rejected, and another attempt would be
/// rejected the same way (so it is not retried).
pub fn is_tls_verification_failure(e: &Error) -> bool {
    is_tls_error(e) && tls_failure(e).is_verification()
}

fn is_tls_error(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::TLSWantX509Lookup
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    )
}

/// Why a TLS handshake with the upstream failed.
///
/// pingora's rustls connector keeps only the text of the rustls error (it
/// rebuilds the error with `e_explain`, dropping the typed cause), so the
/// reason is read from the whole error chain's text, which carries rustls'
/// `Display` forms (`invalid peer certificate: UnknownIssuer`, `received
/// fatal alert: HandshakeFailure`, ...); typed causes, where a pingora
/// version keeps them, say the same things in the same words.
pub fn tls_failure(e: &Error) -> TlsFailure {
    if matches!(e.etype(), ErrorType::TLSHandshakeTimedout) {
        return TlsFailure::Timeout;
    }
    tls_failure_from_text(&e.to_string())
}

/// [`tls_failure`] on the text of an error chain.
pub fn tls_failure_from_text(text: &str) -> TlsFailure {
    const CERT: &str = "invalid peer certificate: ";
    const ALERT: &str = "received fatal alert: ";
    if let Some(at) = text.find(CERT) {
        let rest = &text[at + CERT.len()..];
        // Context forms (`certificate expired: ...`) and bare variant names
        // (`Expired`) both occur, depending on what webpki could say.
        return if rest.starts_with("UnknownIssuer") {
            TlsFailure::UnknownIssuer
        } else if rest.starts_with("certificate expired") || starts_with_word(rest, "Expired") {
            TlsFailure::Expired
        } else if rest.starts_with("certificate not valid yet")
            || starts_with_word(rest, "NotValidYet")
        {
            TlsFailure::NotValidYet
        } else if rest.starts_with("certificate not valid for name")
            || rest.starts_with("NotValidForName")
        {
            TlsFailure::NameMismatch
        } else {
            TlsFailure::BadCertificate(snake_identifier(rest).unwrap_or_else(|| "other".into()))
        };
    }
    if let Some(at) = text.find(ALERT) {
        let alert = snake_identifier(&text[at + ALERT.len()..]);
        return TlsFailure::Alert(alert.unwrap_or_else(|| "unknown".into()));
    }
    if text.contains("peer sent no certificates") {
        return TlsFailure::BadCertificate("no_certificate".into());
    }
    TlsFailure::Other
}

/// `word` at the start of `text`, not followed by more of an identifier
/// (`Expired`, not `ExpiredRevocationList`).
fn starts_with_word(text: &str, word: &str) -> bool {
    text.strip_prefix(word)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
}

/// The leading CamelCase identifier of `text` in snake case
/// (`HandshakeFailure` -> `handshake_failure`, `UnknownCA` -> `unknown_ca`),
/// capped so nothing but a short name ever reaches a message.
fn snake_identifier(text: &str) -> Option<String> {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(40)
        .collect();
    if ident.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(ident.len() + 4);
    let mut prev_lower = false;
    for c in ident.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c.to_ascii_lowercase());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What pingora 0.9's rustls connector produces (its `e_explain` text
    /// around rustls' `Display`).
    fn chain(rustls: &str) -> String {
        format!(
            " TLSHandshakeFailure context: TLS connect() failed:  TLSHandshakeFailure context: tls connect error cause: {rustls}, SNI: api.example.com"
        )
    }

    #[test]
    fn certificate_reasons_are_named() {
        let cases = [
            ("invalid peer certificate: UnknownIssuer", TlsFailure::UnknownIssuer),
            ("invalid peer certificate: Expired", TlsFailure::Expired),
            (
                "invalid peer certificate: certificate expired: verification time 1 (UNIX), but certificate is not valid after 0 (1 seconds ago)",
                TlsFailure::Expired,
            ),
            ("invalid peer certificate: NotValidYet", TlsFailure::NotValidYet),
            (
                "invalid peer certificate: certificate not valid yet: verification time 0 (UNIX), but certificate is not valid before 1 (1 seconds in future)",
                TlsFailure::NotValidYet,
            ),
            (
                "invalid peer certificate: certificate not valid for name \"a.example\"; certificate is only valid for DnsName(\"b.example\")",
                TlsFailure::NameMismatch,
            ),
            ("invalid peer certificate: NotValidForName", TlsFailure::NameMismatch),
            (
                "invalid peer certificate: BadSignature",
                TlsFailure::BadCertificate("bad_signature".into()),
            ),
            (
                "invalid peer certificate: ExpiredRevocationList",
                TlsFailure::BadCertificate("expired_revocation_list".into()),
            ),
        ];
        for (text, want) in cases {
            let got = tls_failure_from_text(&chain(text));
            assert_eq!(got, want, "{text}");
            assert!(got.is_verification(), "{text}");
        }
    }

    #[test]
    fn alerts_are_named_and_not_verification_failures() {
        let got = tls_failure_from_text(&chain("received fatal alert: HandshakeFailure"));
        assert_eq!(got, TlsFailure::Alert("handshake_failure".into()));
        assert!(!got.is_verification());
        let got = tls_failure_from_text(&chain("received fatal alert: UnknownCA"));
        assert_eq!(got, TlsFailure::Alert("unknown_ca".into()));
        let got = tls_failure_from_text(&chain("received fatal alert: Unknown(199)"));
        assert_eq!(got, TlsFailure::Alert("unknown".into()));
        assert_eq!(
            tls_failure_from_text(&chain("Connection reset by peer (os error 104)")),
            TlsFailure::Other
        );
    }

    #[test]
    fn unknown_issuer_message_names_the_config_key() {
        let e = ProxyError::UpstreamTlsFailed {
            host: "api.example.com".into(),
            port: 443,
            reason: TlsFailure::UnknownIssuer,
        };
        let msg = e.to_string();
        assert!(msg.contains("api.example.com:443"), "{msg}");
        assert!(msg.contains("unknown issuer"), "{msg}");
        assert!(msg.contains("[tls] upstream_ca_file"), "{msg}");
        let alert = ProxyError::UpstreamTlsFailed {
            host: "h".into(),
            port: 443,
            reason: TlsFailure::Alert("protocol_version".into()),
        };
        assert!(alert.to_string().contains("TLS alert protocol_version"));
    }

    #[test]
    fn typed_pingora_errors_classify() {
        let e = Error::explain(
            ErrorType::TLSHandshakeFailure,
            "TLS connect() failed: invalid peer certificate: UnknownIssuer, SNI: x",
        );
        assert!(is_tls_verification_failure(&e));
        assert!(matches!(
            failure(&e, None),
            Some(ProxyError::UpstreamTlsFailed {
                reason: TlsFailure::UnknownIssuer,
                ..
            })
        ));
        let refused = Error::explain(
            ErrorType::ConnectRefused,
            "invalid peer certificate: UnknownIssuer",
        );
        assert!(!is_tls_verification_failure(&refused));
        assert_eq!(connect_outcome(&e), crate::retry::Outcome::TlsRejected);
        assert_eq!(
            connect_outcome(&refused),
            crate::retry::Outcome::ConnectFailed
        );
        let timeout = Error::new(ErrorType::TLSHandshakeTimedout);
        assert_eq!(tls_failure(&timeout), TlsFailure::Timeout);
        assert!(!is_tls_verification_failure(&timeout));
    }
}
