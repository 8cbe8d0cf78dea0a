//! A client that aborts our interception handshake with a certificate alert
//! (`unknown_ca`, `bad_certificate`, `certificate_unknown`, ...) does not
//! trust our CA. Its own error is generic (`SSL certificate problem`,
//! `self-signed certificate in chain`), so we log, once per client address
//! and domain, at `warn`, how to trust the CA.
//!
//! Memory is bounded: the set of (address, domain) pairs already warned
//! about holds at most [`MAX_REMEMBERED`] and starts over when full (a pair
//! may then be warned about again).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};

/// At most this many (client address, domain) pairs are remembered.
pub const MAX_REMEMBERED: usize = 1_000;

/// The TLS alerts by which a client says it rejects our certificate, as
/// rustls names them in its error text (`received fatal alert: UnknownCA`)
/// and as the TLS RFCs name them. `decrypt_error` and `handshake_failure`
/// are not about trust and are left out.
const CERTIFICATE_ALERTS: [(&str, &str); 6] = [
    ("UnknownCA", "unknown_ca"),
    ("BadCertificate", "bad_certificate"),
    ("CertificateUnknown", "certificate_unknown"),
    ("UnsupportedCertificate", "unsupported_certificate"),
    ("CertificateExpired", "certificate_expired"),
    ("CertificateRevoked", "certificate_revoked"),
];

/// The certificate alert a failed handshake's error text reports, if any.
pub fn certificate_alert(error_text: &str) -> Option<&'static str> {
    const ALERT: &str = "received fatal alert: ";
    let at = error_text.find(ALERT)?;
    let rest = &error_text[at + ALERT.len()..];
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    CERTIFICATE_ALERTS
        .iter()
        .find(|(rustls, _)| *rustls == name)
        .map(|(_, tls)| *tls)
}

/// (client address, domain) pairs already warned about.
#[derive(Debug)]
pub struct Warned {
    seen: Mutex<HashSet<(Option<IpAddr>, String)>>,
    cap: usize,
}

impl Warned {
    pub fn new(cap: usize) -> Self {
        Warned {
            seen: Mutex::new(HashSet::new()),
            cap: cap.max(1),
        }
    }

    /// True the first time a pair is seen (since the set last started over).
    pub fn first(&self, client: Option<IpAddr>, domain: &str) -> bool {
        // A poisoned lock only means a panic elsewhere mid-insert: the set
        // is still a valid set.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (client, domain.to_string());
        if seen.contains(&key) {
            return false;
        }
        if seen.len() >= self.cap {
            seen.clear();
        }
        seen.insert(key);
        true
    }
}

fn warned() -> &'static Warned {
    static WARNED: OnceLock<Warned> = OnceLock::new();
    WARNED.get_or_init(|| Warned::new(MAX_REMEMBERED))
}

/// Where a client on this machine fetches the CA: the control listener,
/// with a wildcard address replaced by loopback.
pub fn ca_url(control: SocketAddr) -> String {
    let ip = match control.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/ca.pem", SocketAddr::new(ip, control.port()))
}

/// After a failed interception handshake: when the client rejected our
/// certificate, warn (once per client address and domain) how to trust the
/// CA, and return true; else return false (the caller logs as before).
/// Logs only the alert's name, the client address and the domain.
pub fn warn_if_untrusted(
    error_text: &str,
    client: Option<IpAddr>,
    domain: &str,
    control: SocketAddr,
) -> bool {
    let Some(alert) = certificate_alert(error_text) else {
        return false;
    };
    if warned().first(client, domain) {
        let client = client.map(|ip| ip.to_string()).unwrap_or_default();
        tracing::warn!(
            client = %client,
            domain = %domain,
            alert,
            "a client rejected ezthrottle's certificate (it does not trust ezthrottle's CA): \
             get the CA with `curl {}` or `ezthrottle ca export --out ezthrottle-ca.pem` \
             and make the client trust it (README: \"Point your app at it\"), \
             or put the domain in tunnel mode if the client pins certificates",
            ca_url(control)
        );
    } else {
        tracing::debug!(domain = %domain, alert, "client rejected our certificate again");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_alerts_are_recognised_and_others_are_not() {
        let text = |a: &str| {
            format!(" TLSHandshakeFailure context: TLS accept() failed: received fatal alert: {a}")
        };
        assert_eq!(certificate_alert(&text("UnknownCA")), Some("unknown_ca"));
        assert_eq!(
            certificate_alert(&text("BadCertificate")),
            Some("bad_certificate")
        );
        assert_eq!(
            certificate_alert(&text("CertificateUnknown")),
            Some("certificate_unknown")
        );
        assert_eq!(certificate_alert(&text("DecryptError")), None);
        assert_eq!(certificate_alert(&text("HandshakeFailure")), None);
        assert_eq!(certificate_alert("Connection reset by peer"), None);
    }

    #[test]
    fn once_per_client_and_domain_with_a_bounded_set() {
        let w = Warned::new(3);
        let a = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let b = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(w.first(a, "x.test"));
        assert!(!w.first(a, "x.test"));
        assert!(w.first(b, "x.test"));
        assert!(w.first(a, "y.test"));
        // Full (3): the next new pair starts the set over.
        assert!(w.first(None, "z.test"));
        assert!(w.seen.lock().map(|s| s.len()).unwrap_or(0) <= 3);
        assert!(w.first(a, "x.test"), "forgotten after the set started over");
    }

    #[test]
    fn ca_url_uses_loopback_for_a_wildcard_control_address() {
        let any: SocketAddr = "0.0.0.0:4001".parse().expect("addr");
        assert_eq!(ca_url(any), "http://127.0.0.1:4001/ca.pem");
        let v6: SocketAddr = "[::]:4001".parse().expect("addr");
        assert_eq!(ca_url(v6), "http://[::1]:4001/ca.pem");
        let set: SocketAddr = "10.1.2.3:9".parse().expect("addr");
        assert_eq!(ca_url(set), "http://10.1.2.3:9/ca.pem");
    }
}
