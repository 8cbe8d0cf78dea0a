//! Upstream phase: where the request is sent and what it looks like on the
//! wire when it gets there.

use std::net::{IpAddr, SocketAddr};

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::ctx::Target;
use super::identify;
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
const CONTROL_HEADER_PREFIX: &str = "x-ezthrottle-";

/// Resolve the target and build the pingora peer for it.
pub async fn peer(shared: &Shared, target: &Target) -> Result<Box<HttpPeer>, ProxyError> {
    let addr = resolve_one(shared, &target.host, target.port).await?;
    let mut peer = HttpPeer::new(addr, target.tls, target.host.clone());
    let cfg = &shared.config.proxy;
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.total_connection_timeout = Some(cfg.connect_timeout * 2);
    peer.options.read_timeout = Some(cfg.read_timeout);
    peer.options.write_timeout = Some(cfg.read_timeout);
    peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
    Ok(Box::new(peer))
}

/// The peer for an attempt through another region: that region's proxy,
/// spoken to in plain HTTP/1.1 with an absolute-form target (see [`rewrite`]).
pub async fn region_peer(
    shared: &Shared,
    host: &str,
    port: u16,
) -> Result<Box<HttpPeer>, ProxyError> {
    let addr = resolve_one(shared, host, port).await?;
    let mut peer = HttpPeer::new(addr, false, String::new());
    let cfg = &shared.config.proxy;
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.total_connection_timeout = Some(cfg.connect_timeout * 2);
    // The peer may itself wait for its throttle and retry.
    peer.options.read_timeout = Some(cfg.read_timeout * 4);
    peer.options.write_timeout = Some(cfg.read_timeout);
    peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
    Ok(Box::new(peer))
}

/// Resolve `host` to one socket address, refusing addresses that are this
/// proxy's own listener (a request through us to us would loop forever).
pub async fn resolve_one(shared: &Shared, host: &str, port: u16) -> Result<SocketAddr, ProxyError> {
    let ips = shared.resolver.resolve(host).await.map_err(|e| match e {
        ResolveError::NotFound { .. } | ResolveError::Failed { .. } => {
            ProxyError::UpstreamUnresolvable {
                host: host.to_string(),
            }
        }
    })?;
    let listen = shared.config.proxy.listen;
    if ips
        .iter()
        .any(|ip| is_self(SocketAddr::new(*ip, port), listen))
    {
        return Err(ProxyError::ProxyLoop);
    }
    // Prefer IPv4 when both families resolve: loopback-only sandboxes and many
    // container networks have no IPv6 route.
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .map(|ip| SocketAddr::new(*ip, port))
        .ok_or_else(|| ProxyError::UpstreamUnresolvable {
            host: host.to_string(),
        })
}

/// Is `addr` the proxy listener itself?
pub fn is_self(addr: SocketAddr, listen: SocketAddr) -> bool {
    let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    addr.port() == listen.port()
        && (addr.ip() == listen.ip() || (local(addr.ip()) && local(listen.ip())))
}

/// Rewrite the request for the origin: origin-form target, no proxy or
/// control headers, and our `Via` hop for loop detection. Through another
/// region's proxy (`via_proxy`) the target is absolute-form instead — for
/// https origins too: that proxy makes the TLS connection itself — with a
/// `Host` that matches it.
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
        let uri: http::Uri = target.path_and_query.parse().map_err(|_| bad())?;
        req.set_uri(uri);
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
    let drop: Vec<String> = req
        .headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| {
            STRIPPED_REQUEST_HEADERS.contains(&k.as_str())
                || k.starts_with(CONTROL_HEADER_PREFIX)
                || connection_listed.iter().any(|c| c == k)
        })
        .collect();
    for name in drop {
        req.remove_header(&name);
    }
    let hop = format!("1.1 {}", identify::via_token(instance_id));
    let via = match req
        .headers
        .get(http::header::VIA)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) => format!("{existing}, {hop}"),
        None => hop,
    };
    req.insert_header(http::header::VIA, via)
        .map_err(|_| ProxyError::BadRequest("invalid Via header".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_detection() {
        let listen: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(is_self("127.0.0.1:4000".parse().unwrap(), listen));
        assert!(is_self("127.0.0.2:4000".parse().unwrap(), listen));
        assert!(!is_self("127.0.0.1:4001".parse().unwrap(), listen));
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert!(is_self("127.0.0.1:4000".parse().unwrap(), any));
        assert!(!is_self("10.1.2.3:4000".parse().unwrap(), listen));
    }

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
            path_and_query: "/v1/x?y=1".into(),
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
    fn through_a_region_the_target_stays_absolute() {
        let mut req = RequestHeader::build("GET", b"/v1/x?y=1", None).unwrap();
        req.insert_header("Host", "API.test").unwrap();
        let target = Target {
            host: "api.test".into(),
            port: 443,
            tls: true,
            path_and_query: "/v1/x?y=1".into(),
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
