//! Classify phase: what an upstream outcome means. Today it maps transport
//! failures to the proxy's error codes; learned limits and retry decisions
//! hang off the same place.

use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::Target;
use crate::error::ProxyError;

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
        | ErrorType::HandshakeError => ProxyError::UpstreamTlsFailed { host, port },
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            ProxyError::UpstreamTimeout { host, port }
        }
        _ if matches!(e.esource(), ErrorSource::Upstream) => {
            ProxyError::UpstreamFailed { host, port }
        }
        _ => ProxyError::Internal,
    })
}
