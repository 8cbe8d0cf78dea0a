//! Upstream phase: where the request is sent and what it looks like on the
//! wire when it gets there.

use std::net::SocketAddr;

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::ctx::Target;
use super::identify;
use crate::config::{Config, UpstreamProtocol};
use crate::egress::{Purpose, Refusal};
use crate::error::ProxyError;
use crate::resolve::ResolveError;
use crate::state::Shared;

/// Request headers that only concern the hop between the app and us, or that
/// instruct ezthrottle itself; none of them may reach the origin.
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "proxy-authorization",
    "proxy-connection",
    "proxy-authenticate",
    "keep-alive",
];

/// Prefix of the per-request control headers apps send us (SPEC §5, §7).
use crate::wire::PREFIX as CONTROL_HEADER_PREFIX;

/// Streams one h2 connection to an origin may carry at once (the origin's
/// own `SETTINGS_MAX_CONCURRENT_STREAMS` still applies). pingora's default
/// is 1, which would open a connection per concurrent stream.
const MAX_H2_STREAMS: usize = 100;

/// The HTTP versions to offer an origin, as pingora's `(max, min)`.
///
/// TLS origins choose in ALPN, so offering `h2` is safe: an origin that
/// does not speak it answers HTTP/1.1. A plain-HTTP origin has no such
/// negotiation: it gets h2 (prior knowledge) only when the client itself
/// spoke h2 to it through a CONNECT, i.e. already knew the origin speaks it.
pub fn http_versions(protocol: UpstreamProtocol, tls: bool, client_h2: bool) -> (u8, u8) {
    match (protocol, tls) {
        (UpstreamProtocol::Http1, _) => (1, 1),
        (UpstreamProtocol::H2, true) => (2, 1),
        (UpstreamProtocol::Auto, true) if client_h2 => (2, 1),
        (UpstreamProtocol::Auto | UpstreamProtocol::H2, false) if client_h2 => (2, 2),
        _ => (1, 1),
    }
}

/// Resolve the target and build the pingora peer for it; `purpose` picks the
/// egress policy the resolved address is held to; `client_h2`: the request
/// arrived over HTTP/2 (see [`http_versions`]).
pub async fn peer(
    shared: &Shared,
    config: &Config,
    target: &Target,
    purpose: Purpose,
    client_h2: bool,
) -> Result<Box<HttpPeer>, ProxyError> {
    let addr = resolve_one(shared, purpose, &target.host, target.port).await?;
    // Built in its box: 672 bytes, copied twice a request on the way there
    // when built on the stack (`COPIES=1 benches/instructions.sh`).
    let mut peer =
        pingora::utils::box_in_place(|| HttpPeer::new(addr, target.tls, target.host.clone()));
    let (max, min) = http_versions(
        config.upstream_protocol(&target.host),
        target.tls,
        client_h2,
    );
    peer.options.set_http_version(max, min);
    peer.options.max_h2_streams = MAX_H2_STREAMS;
    let cfg = &config.proxy;
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.total_connection_timeout = Some(cfg.connect_timeout * 2);
    peer.options.read_timeout = Some(cfg.read_timeout);
    peer.options.write_timeout = Some(cfg.read_timeout);
    peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
    Ok(peer)
}

/// The peer for an attempt through another region: that region's proxy,
/// spoken to in plain HTTP/1.1 with an absolute-form target (see [`rewrite`]).
pub async fn region_peer(
    shared: &Shared,
    config: &Config,
    host: &str,
    port: u16,
) -> Result<Box<HttpPeer>, ProxyError> {
    let addr = resolve_one(shared, Purpose::Region, host, port).await?;
    let mut peer = pingora::utils::box_in_place(|| HttpPeer::new(addr, false, String::new()));
    let cfg = &config.proxy;
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.total_connection_timeout = Some(cfg.connect_timeout * 2);
    // The peer may itself wait for its throttle and retry.
    peer.options.read_timeout = Some(cfg.read_timeout * 4);
    peer.options.write_timeout = Some(cfg.read_timeout);
    peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
    Ok(peer)
}

/// Resolve `host` to the one address we will connect to, held to the egress
/// policy (SPEC §13): our own listeners are a loop (`508`), refused
/// destinations `403 egress_denied`. The address returned is the one that
/// was checked, so a DNS answer that changes afterwards cannot slip past.
pub async fn resolve_one(
    shared: &Shared,
    purpose: Purpose,
    host: &str,
    port: u16,
) -> Result<SocketAddr, ProxyError> {
    let unresolvable = || ProxyError::UpstreamUnresolvable {
        host: host.to_string(),
    };
    let addrs = match shared
        .egress
        .load()
        .resolve(&shared.resolver, purpose, host, port)
        .await
    {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(refusal)) => {
            let reason = match refusal {
                Refusal::Loop(_) => "loop",
                Refusal::Denied { .. } => "denied",
            };
            let label = match purpose {
                Purpose::Job => "job",
                Purpose::Webhook => "webhook",
                Purpose::Proxy | Purpose::Region => "proxy",
            };
            shared
                .metrics
                .egress_denied_total
                .with_label_values(&[label, reason])
                .inc();
            tracing::warn!(host = %host, port, purpose = label, %refusal, "egress refused");
            return Err(match refusal {
                Refusal::Loop(_) => ProxyError::ProxyLoop,
                denied => ProxyError::EgressDenied(denied.to_string()),
            });
        }
        Err(ResolveError::NotFound { .. } | ResolveError::Failed { .. }) => {
            return Err(unresolvable())
        }
    };
    // Prefer IPv4 when both families resolve: loopback-only sandboxes and many
    // container networks have no IPv6 route.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(unresolvable)
}

/// Rewrite the request for the origin: origin-form target, no proxy or
/// control headers, and our `Via` hop for loop detection. Through another
/// region's proxy (`via_proxy`) the target is absolute-form instead — for
/// https origins too: that proxy makes the TLS connection itself — with a
/// `Host` that matches it.
/// Our `Via` hop (`1.1 ezthrottle-<instance>`), made once per instance id
/// instead of formatted for every request.
fn via_hop(instance_id: &str) -> http::HeaderValue {
    static HOP: std::sync::Mutex<Option<(String, http::HeaderValue)>> = std::sync::Mutex::new(None);
    let mut hop = HOP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((id, value)) = hop.as_ref() {
        if id == instance_id {
            return value.clone();
        }
    }
    let value = http::HeaderValue::try_from(format!("1.1 {}", identify::via_token(instance_id)))
        .unwrap_or_else(|_| http::HeaderValue::from_static("1.1 ezthrottle"));
    *hop = Some((instance_id.to_string(), value.clone()));
    value
}

pub fn rewrite(
    req: &mut RequestHeader,
    target: &Target,
    instance_id: &str,
    via_proxy: bool,
) -> Result<(), ProxyError> {
    let bad = || ProxyError::BadRequest("request path is not a valid URI".into());
    if via_proxy {
        let authority = target.authority();
        // `set_uri` would serialise only the path; the raw target keeps the
        // absolute form on the wire.
        req.set_raw_path(target.url().as_bytes())
            .map_err(|_| bad())?;
        req.insert_header(http::header::HOST, authority)
            .map_err(|_| bad())?;
    } else {
        req.set_uri(http::Uri::from(target.path_and_query.clone()));
        // An h2 request names its authority in `:authority`, which the
        // origin-form URI drops; `Host` carries it to an HTTP/1.1 origin and
        // back into `:authority` for an h2 one.
        if !req.headers.contains_key(http::header::HOST) {
            req.insert_header(http::header::HOST, target.authority())
                .map_err(|_| bad())?;
        }
    }
    let connection_listed: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive" && t != "upgrade")
        .collect();
    // Names copied only for the headers that go (usually none).
    let drop: Vec<String> = req
        .headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|k| {
            STRIPPED_REQUEST_HEADERS.contains(k)
                || k.starts_with(CONTROL_HEADER_PREFIX)
                || connection_listed.iter().any(|c| c == k)
        })
        .map(str::to_string)
        .collect();
    for name in drop {
        req.remove_header(&name);
    }
    let hop = via_hop(instance_id);
    let via = match req
        .headers
        .get(http::header::VIA)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) => {
            let hop = hop.to_str().unwrap_or_default();
            http::HeaderValue::try_from(format!("{existing}, {hop}"))
                .map_err(|_| ProxyError::BadRequest("invalid Via header".into()))?
        }
        None => hop,
    };
    req.insert_static_header(&crate::wire::names::VIA, via);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_strips_proxy_and_control_headers() {
        let mut req = RequestHeader::build("POST", b"http://api.test:8080/v1/x?y=1", None).unwrap();
        req.insert_header("Host", "api.test:8080").unwrap();
        req.insert_header("Proxy-Authorization", "Basic dTpw")
            .unwrap();
        req.insert_header("X-EZThrottle-Max-Wait", "5").unwrap();
        req.insert_header("Connection", "keep-alive, X-Drop-Me")
            .unwrap();
        req.insert_header("X-Drop-Me", "1").unwrap();
        req.insert_header("Authorization", "Bearer app-token")
            .unwrap();
        let target = Target {
            host: "api.test".into(),
            port: 8080,
            tls: false,
            path_and_query: http::uri::PathAndQuery::from_static("/v1/x?y=1"),
        };
        rewrite(&mut req, &target, "abc", false).unwrap();
        assert_eq!(req.raw_path(), b"/v1/x?y=1");
        assert!(req.headers.get("proxy-authorization").is_none());
        assert!(req.headers.get("x-ezthrottle-max-wait").is_none());
        assert!(req.headers.get("x-drop-me").is_none());
        assert_eq!(
            req.headers.get("authorization").unwrap(),
            "Bearer app-token"
        );
        assert_eq!(req.headers.get("via").unwrap(), "1.1 ezthrottle-abc");
    }

    #[test]
    fn h2_is_offered_where_the_origin_can_refuse_it() {
        use UpstreamProtocol::*;
        // TLS: ALPN lets the origin pick.
        assert_eq!(http_versions(Auto, true, true), (2, 1));
        assert_eq!(http_versions(Auto, true, false), (1, 1));
        assert_eq!(http_versions(H2, true, false), (2, 1));
        assert_eq!(http_versions(Http1, true, true), (1, 1));
        // Plain HTTP: h2 only with the client's own prior knowledge.
        assert_eq!(http_versions(Auto, false, true), (2, 2));
        assert_eq!(http_versions(H2, false, false), (1, 1));
        assert_eq!(http_versions(Auto, false, false), (1, 1));
        assert_eq!(http_versions(Http1, false, true), (1, 1));
    }

    #[test]
    fn through_a_region_the_target_stays_absolute() {
        let mut req = RequestHeader::build("GET", b"/v1/x?y=1", None).unwrap();
        req.insert_header("Host", "API.test").unwrap();
        let target = Target {
            host: "api.test".into(),
            port: 443,
            tls: true,
            path_and_query: http::uri::PathAndQuery::from_static("/v1/x?y=1"),
        };
        rewrite(&mut req, &target, "abc", true).unwrap();
        assert_eq!(req.raw_path(), b"https://api.test/v1/x?y=1");
        assert_eq!(req.headers.get("host").unwrap(), "api.test");
        let target = Target {
            port: 8443,
            ..target
        };
        rewrite(&mut req, &target, "abc", true).unwrap();
        assert_eq!(req.raw_path(), b"https://api.test:8443/v1/x?y=1");
        assert_eq!(req.headers.get("host").unwrap(), "api.test:8443");
    }
}
