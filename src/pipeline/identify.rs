//! Identify phase: which origin a request is for, which domain it counts
//! against, which workspace it belongs to, and whether it looped back to us.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine;
use pingora::http::RequestHeader;
use pingora::protocols::http::authority::{raw_target_authority, RawTargetAuthority};

use super::ctx::{ConnInfo, Target};
use crate::error::ProxyError;

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Caller {
    /// A proxy client: its `X-EZThrottle-Job`, `-Retry-Policy` and `-Region`
    /// headers are ignored (they are the job runner's).
    #[default]
    Client,
    /// This process's job runner; `parked`: the job is a parked proxy
    /// request rather than one named through the job API.
    JobRunner { parked: bool },
}

impl Caller {
    pub fn is_internal(self) -> bool {
        matches!(self, Caller::JobRunner { .. })
    }

    /// The egress policy the request's upstream connection is held to: a
    /// job named through the control API must not reach what the proxy's
    /// own clients could (SPEC §13).
    pub fn egress(self) -> crate::egress::Purpose {
        match self {
            Caller::JobRunner { parked: false } => crate::egress::Purpose::Job,
            _ => crate::egress::Purpose::Proxy,
        }
    }
}

/// Tell the job runner (which knows this process's random token) from a
/// client. Compared in constant time: the header arrives on the proxy port.
pub fn caller(req: &RequestHeader, token: &str) -> Caller {
    let Some((kind, given)) = req
        .headers
        .get(&crate::wire::names::INTERNAL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return Caller::Client;
    };
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        token.as_bytes(),
    )) {
        return Caller::Client;
    }
    match kind {
        "job" => Caller::JobRunner { parked: false },
        "parked" => Caller::JobRunner { parked: true },
        _ => Caller::Client,
    }
}

/// Work out the target of a request.
///
/// On an intercepted connection the CONNECT target is authoritative (SPEC §4):
/// the inner request's `Host` or absolute URI cannot redirect it elsewhere.
/// Otherwise the request must be absolute-form (`GET http://host/p`).
///
/// The target is read where pingora left it, not parsed again: its request
/// head keeps the path and query as a `Uri` (an absolute-form target's
/// path anchored to `/`), and its classifier finds the scheme and authority
/// in the raw target without copying it; pingora's ingress check has
/// already refused an authority `http` cannot parse, userinfo, and a `Host`
/// that disagrees. A second `Uri` parse here copied the target and cost
/// ~0.6k instructions a request (docs/performance.md, "The eighteenth
/// pass"); [`authority_bytes_ok`] keeps this function safe on its own.
pub fn target(
    req: &RequestHeader,
    conn: Option<&ConnInfo>,
    control: SocketAddr,
) -> Result<Target, ProxyError> {
    if !req.raw_path_is_utf8() {
        return Err(ProxyError::BadRequest(
            "request target is not valid UTF-8".into(),
        ));
    }
    let path_and_query = req
        .uri
        .path_and_query()
        .filter(|p| p.as_str().starts_with('/'))
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

    if let Some(connect) = conn.and_then(|c| c.connect.as_ref()) {
        return Ok(Target {
            host: connect.host.clone(),
            port: connect.port,
            tls: connect.tls,
            path_and_query,
        });
    }

    let raw = req.raw_path();
    let not_a_uri = || {
        ProxyError::BadRequest(format!(
            "request target {:?} is not a valid URI",
            String::from_utf8_lossy(raw)
        ))
    };
    let (scheme, authority) = match raw_target_authority(raw) {
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } => (scheme, authority),
        RawTargetAuthority::None => return Err(ProxyError::NotAProxyRequest { control }),
        RawTargetAuthority::AmbiguousAuthority => return Err(not_a_uri()),
    };
    let tls = if scheme.eq_ignore_ascii_case(b"http") {
        false
    } else if scheme.eq_ignore_ascii_case(b"https") {
        true
    } else {
        return Err(ProxyError::BadRequest(format!(
            "unsupported scheme {:?}: only http and https can be proxied",
            String::from_utf8_lossy(scheme)
        )));
    };
    // ASCII once `authority_bytes_ok` passes it, so `from_utf8` cannot fail.
    let authority = Some(authority)
        .filter(|a| authority_bytes_ok(a))
        .and_then(|a| std::str::from_utf8(a).ok())
        .ok_or_else(not_a_uri)?;
    let host = normalize_host(host_of(authority))?;
    let port = explicit_port(authority)?.unwrap_or(if tls { 443 } else { 80 });
    Ok(Target {
        host,
        port,
        tls,
        path_and_query,
    })
}

/// RFC 3986's unreserved characters and sub-delims: what every part of a
/// URI may hold as it is. The head check's plain-target table
/// (`accept::framing`) and [`authority_bytes_ok`] add their own delimiters
/// to it.
pub(crate) const fn uri_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// Bytes an authority may hold: [`uri_unreserved_or_sub_delim`], `%`, `:`,
/// `@`, `[` and `]`; a table, read once a byte.
const AUTHORITY_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = uri_unreserved_or_sub_delim(b) || matches!(b, b'%' | b':' | b'@' | b'[' | b']');
        i += 1;
    }
    t
};

/// Every byte of `authority` is one RFC 3986 allows there
/// ([`AUTHORITY_CHAR`]): what `http`'s authority parser admits byte by
/// byte. pingora's ingress runs that parser on an absolute-form http(s)
/// authority before any hook; this keeps a request head built some other
/// way from carrying spaces, controls or `/` into a host name.
fn authority_bytes_ok(authority: &[u8]) -> bool {
    authority.iter().all(|&b| AUTHORITY_CHAR[usize::from(b)])
}

/// The host of an authority that `http` has parsed, as
/// `http::uri::Authority::host` gives it (userinfo dropped, brackets kept
/// around an IPv6 literal, port dropped), found with byte searches: its
/// `rsplit('@')` is a char searcher, ~180 instructions a request
/// (docs/performance.md, "The sixteenth pass"). The delimiters are ASCII,
/// so every index is a char boundary; the test below holds it to `http`'s
/// answer.
pub fn host_of(authority: &str) -> &str {
    let host_port = authority
        .bytes()
        .rposition(|b| b == b'@')
        .map_or(authority, |i| &authority[i + 1..]);
    if host_port.starts_with('[') {
        host_port
            .bytes()
            .position(|b| b == b']')
            .map_or(host_port, |i| &host_port[..=i])
    } else {
        host_port
            .bytes()
            .position(|b| b == b':')
            .map_or(host_port, |i| &host_port[..i])
    }
}

/// The port written in an authority, if any. `http::uri::Authority::port`
/// silently answers `None` for `host:99999`, which would send the request to
/// the default port instead of refusing it.
fn explicit_port(authority: &str) -> Result<Option<u16>, ProxyError> {
    // Byte searches: `@`, `]` and `:` are ASCII, so every index is a char
    // boundary (str's char searchers cost ~700 instructions per request).
    let last = |s: &str, b: u8| s.bytes().rposition(|x| x == b);
    let host_port = last(authority, b'@').map_or(authority, |i| &authority[i + 1..]);
    let after_host = last(host_port, b']').map_or(host_port, |i| &host_port[i + 1..]);
    let Some(port) = last(after_host, b':').map(|i| &after_host[i + 1..]) else {
        return Ok(None);
    };
    if port.is_empty() {
        return Ok(None);
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(Some(p)),
        _ => Err(ProxyError::BadRequest(format!(
            "port {port:?} in request target is not 1-65535"
        ))),
    }
}

/// Split `host:port` (CONNECT's authority-form; IPv6 in brackets).
pub fn split_authority(authority: &str) -> Result<(String, u16), ProxyError> {
    let bad = || ProxyError::BadRequest(format!("CONNECT target {authority:?} is not host:port"));
    let parsed: http::uri::Authority = authority.parse().map_err(|_| bad())?;
    if authority.contains('@') {
        return Err(bad());
    }
    let port = parsed.port_u16().ok_or_else(bad)?;
    if port == 0 {
        return Err(bad());
    }
    Ok((normalize_host(parsed.host())?, port))
}

/// Lower-case, strip IPv6 brackets and a trailing dot; reject empty hosts.
pub fn normalize_host(host: &str) -> Result<String, ProxyError> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(ProxyError::BadRequest(
            "empty host in request target".into(),
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// How far a request's own word on its workspace is believed.
pub struct Trust<'a> {
    /// `[control] api_keys`: token → workspace. Empty: single-tenant, every
    /// client is believed (SPEC §6 as written).
    pub api_keys: &'a BTreeMap<String, String>,
    /// The client is in `[proxy] trusted_clients`, or is our job runner.
    pub trusted: bool,
}

/// A request's workspace, and whether it named another one we did not believe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Borrowed for the common `default`: no allocation per request.
    pub name: std::borrow::Cow<'static, str>,
    pub ignored_header: bool,
}

/// The workspace of a request (SPEC §6, docs/security.md).
///
/// Without API keys, or for a trusted client: `X-EZThrottle-Workspace`, else
/// the Proxy-Authorization user (of this request, or of the CONNECT that
/// opened the intercepted connection), else `default`. With API keys, an
/// untrusted client is never believed on its word: the workspace is the one
/// its Proxy-Authorization password (an API key) maps to, else `default`,
/// and an `X-EZThrottle-Workspace` it sent is ignored — otherwise any client
/// could read another workspace's idempotency records.
pub fn workspace(
    req: &RequestHeader,
    conn: Option<&ConnInfo>,
    trust: &Trust<'_>,
) -> Result<Workspace, ProxyError> {
    let believed = trust.trusted || trust.api_keys.is_empty();
    let mut ignored_header = false;
    if let Some(value) = req.headers.get(&crate::wire::names::WORKSPACE) {
        let ws = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|s| valid_workspace(s))
            .ok_or_else(|| {
                ProxyError::BadRequest(
                    "X-EZThrottle-Workspace must be 1-128 characters of [A-Za-z0-9._-]".into(),
                )
            })?;
        if believed {
            return Ok(Workspace {
                name: ws.to_string().into(),
                ignored_header,
            });
        }
        ignored_header = true;
    }
    let creds = req
        .headers
        .get(http::header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(ProxyCredentials::parse)
        .or_else(|| {
            conn.and_then(|c| c.connect.as_ref())
                .and_then(|c| c.proxy_auth.clone())
        });
    let from_key = creds
        .as_ref()
        .and_then(|c| c.workspace_of_key(trust.api_keys));
    let name = match (from_key, creds) {
        (Some(ws), _) => ws.into(),
        (None, Some(c)) if believed && valid_workspace(&c.user) => c.user.into(),
        _ => "default".into(),
    };
    Ok(Workspace {
        name,
        ignored_header,
    })
}

/// Basic Proxy-Authorization credentials. The password stays in memory only
/// for the key check and is never printed (`Debug` masks it).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("user", &self.user)
            .field("password", &"****")
            .finish()
    }
}

impl ProxyCredentials {
    /// A `Basic` Proxy-Authorization value.
    pub fn parse(value: &str) -> Option<ProxyCredentials> {
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':').unwrap_or((&text, ""));
        Some(ProxyCredentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The workspace whose API key is this password (every key compared in
    /// constant time).
    pub fn workspace_of_key(&self, api_keys: &BTreeMap<String, String>) -> Option<String> {
        if self.password.is_empty() {
            return None;
        }
        let mut found = None;
        for (key, ws) in api_keys {
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                key.as_bytes(),
                self.password.as_bytes(),
            )) {
                found = Some(ws.clone());
            }
        }
        found
    }
}

fn valid_workspace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Token we put in `Via`; seeing our own token on an incoming request means
/// the request went round a loop of proxies back to us.
pub fn via_token(instance_id: &str) -> String {
    format!("ezthrottle-{instance_id}")
}

/// True when the request already passed through this very instance.
pub fn looped(req: &RequestHeader, instance_id: &str) -> bool {
    let mut vias = req
        .headers
        .get_all(http::header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    // Most requests carry no Via: spare them making the token.
    if vias.peek().is_none() {
        return false;
    }
    let token = via_token(instance_id);
    vias.any(|v| {
        v.split(',')
            .any(|hop| hop.split_whitespace().nth(1) == Some(&token))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ctx::ConnectTarget;
    use crate::wire::{internal_value, INTERNAL_HEADER};

    fn control() -> SocketAddr {
        "127.0.0.1:4001".parse().unwrap()
    }

    fn req(target: &str) -> RequestHeader {
        RequestHeader::build("GET", target.as_bytes(), None).unwrap()
    }

    /// `host_of` answers what `http::uri::Authority::host` does, for every
    /// shape of authority `http` accepts: userinfo (with `:` and `@` in it),
    /// ports, empty ports, IPv6 literals with zones, trailing dots.
    #[test]
    fn host_of_agrees_with_http_on_every_authority_shape() {
        let hosts = [
            "a.test",
            "API.Example.COM.",
            "127.0.0.1",
            "[::1]",
            "[fe80::1%25eth0]",
            "xn--bcher-kva.example",
            "localhost",
        ];
        let users = ["", "u@", "u:p@", "u%40x:p@", "a@b@"];
        let ports = ["", ":", ":80", ":65535", ":0"];
        let mut checked = 0;
        for h in hosts {
            for u in users {
                for p in ports {
                    let raw = format!("{u}{h}{p}");
                    let Ok(parsed) = raw.parse::<http::uri::Authority>() else {
                        continue;
                    };
                    assert_eq!(host_of(parsed.as_str()), parsed.host(), "{raw}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 150, "only {checked} authorities parsed");
        assert_eq!(host_of(""), "");
        assert_eq!(host_of("[::1"), "[::1", "no closing bracket: all of it");
    }

    #[test]
    fn absolute_form_http_and_https() {
        let t = target(&req("http://API.Example.com:8080/a/b?x=1"), None, control()).unwrap();
        assert_eq!(
            t,
            Target {
                host: "api.example.com".into(),
                port: 8080,
                tls: false,
                path_and_query: http::uri::PathAndQuery::from_static("/a/b?x=1")
            }
        );
        let t = target(&req("https://example.com"), None, control()).unwrap();
        assert_eq!((t.port, t.tls, t.path_and_query.as_str()), (443, true, "/"));
        let t = target(&req("http://[::1]:9/x"), None, control()).unwrap();
        assert_eq!(t.host, "::1");
    }

    /// What `target` answered when it parsed the raw target into a `Uri` of
    /// its own (before "The eighteenth pass"): the reference the reading of
    /// pingora's classification is held to.
    fn target_by_uri_parse(raw: &str) -> Result<(String, u16, bool, String), String> {
        let uri: http::Uri = raw.parse().map_err(|_| "not a valid URI".to_string())?;
        let pq = uri
            .path_and_query()
            .filter(|p| p.as_str().starts_with('/'))
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let authority = uri.authority().ok_or("not a proxy request")?;
        let tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            _ => return Err("scheme".into()),
        };
        let host = normalize_host(host_of(authority.as_str())).map_err(|e| e.to_string())?;
        let port = explicit_port(authority.as_str())
            .map_err(|e| e.to_string())?
            .unwrap_or(if tls { 443 } else { 80 });
        Ok((host, port, tls, pq))
    }

    /// Every absolute-form target the old `Uri` parse accepted gets the same
    /// host, port, scheme and path from pingora's classification; the one
    /// difference is a query with no path, which keeps its query now (the
    /// old parse dropped it: `http://a.test?q=1` went out as `/`).
    #[test]
    fn pingoras_classification_gives_what_a_uri_parse_gave() {
        let schemes = ["http", "HTTPS", "Http"];
        let authorities = [
            "a.test",
            "API.Example.COM.",
            "a.test:8080",
            "a.test:",
            "u@a.test:81",
            "127.0.0.1:9",
            "[::1]",
            "[::1]:9",
            "a.test:99999",
            "a.test:0",
            "xn--bcher-kva.example",
        ];
        let paths = ["", "/", "/a/b", "/a/b?x=1&y=%20", "/%7Euser/"];
        let mut checked = 0;
        for scheme in schemes {
            for authority in authorities {
                for path in paths {
                    let raw = format!("{scheme}://{authority}{path}");
                    let old = target_by_uri_parse(&raw);
                    let new = target(&req(&raw), None, control())
                        .map(|t| (t.host, t.port, t.tls, t.path_and_query.to_string()))
                        .map_err(|e| e.to_string());
                    match (&old, &new) {
                        (Ok(o), Ok(n)) => assert_eq!(o, n, "{raw}"),
                        (Err(_), Err(_)) => {}
                        _ => panic!("{raw}: old {old:?}, new {new:?}"),
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 11 * 5);
        let t = target(&req("http://a.test?q=1"), None, control()).unwrap();
        assert_eq!(t.path_and_query, "/?q=1");
    }

    #[test]
    fn authorities_with_bytes_a_uri_cannot_hold_are_refused() {
        for bad in ["a b", "a\"b", "a<b", "a/b", "a\u{7f}b", "\u{e9}.test"] {
            assert!(!authority_bytes_ok(bad.as_bytes()), "{bad:?}");
        }
        assert!(authority_bytes_ok(b"u:p@[::1%25eth0]:80"));
        assert!(authority_bytes_ok(b"a-b_c~d.test:1"));
        // A head built without pingora's ingress check: refused here.
        let r = req("http://a%20b|c/x");
        let err = target(&r, None, control()).unwrap_err();
        assert_eq!(err.code(), "bad_request");
    }

    #[test]
    fn targets_that_are_not_absolute_form() {
        for (raw, code) in [
            ("*", "not_a_proxy_request"),
            ("/x", "not_a_proxy_request"),
            ("http:/\\a.test/", "bad_request"),
            ("http:a.test", "bad_request"),
        ] {
            let err = target(&req(raw), None, control()).unwrap_err();
            assert_eq!(err.code(), code, "{raw}");
        }
    }

    #[test]
    fn out_of_range_ports_are_refused_not_defaulted() {
        for bad in [
            "http://a.test:99999/",
            "http://a.test:0/",
            "http://[::1]:70000/",
        ] {
            let err = target(&req(bad), None, control()).unwrap_err();
            assert_eq!(err.code(), "bad_request", "{bad}");
        }
        let t = target(&req("http://a.test:/x"), None, control()).unwrap();
        assert_eq!(t.port, 80);
        let t = target(&req("http://u@a.test:81/x"), None, control()).unwrap();
        assert_eq!(t.port, 81);
    }

    #[test]
    fn origin_form_is_not_a_proxy_request() {
        let err = target(&req("/hello"), None, control()).unwrap_err();
        assert_eq!(err.code(), "not_a_proxy_request");
        assert!(err.to_string().contains("127.0.0.1:4001"));
    }

    #[test]
    fn other_schemes_are_rejected() {
        let err = target(&req("ftp://example.com/x"), None, control()).unwrap_err();
        assert_eq!(err.code(), "bad_request");
    }

    #[test]
    fn connect_target_is_authoritative() {
        let conn = ConnInfo {
            client: None,
            connect: Some(std::sync::Arc::new(ConnectTarget {
                host: "api.example.com".into(),
                port: 443,
                proxy_auth: None,
                tls: true,
            })),
        };
        let t = target(
            &req("http://evil.example.net/steal"),
            Some(&conn),
            control(),
        )
        .unwrap();
        assert_eq!(t.host, "api.example.com");
        assert_eq!(t.path_and_query, "/steal");
        assert!(t.tls);
        let t = target(&req("/v1/x?y"), Some(&conn), control()).unwrap();
        assert_eq!(t.path_and_query, "/v1/x?y");
    }

    #[test]
    fn authority_form() {
        assert_eq!(
            split_authority("Example.COM:443").unwrap(),
            ("example.com".to_string(), 443)
        );
        assert_eq!(
            split_authority("[::1]:8443").unwrap(),
            ("::1".to_string(), 8443)
        );
        for bad in [
            "example.com",
            "example.com:0",
            "u:p@example.com:443",
            "",
            ":443",
        ] {
            assert!(split_authority(bad).is_err(), "{bad}");
        }
    }

    fn ws(
        r: &RequestHeader,
        conn: Option<&ConnInfo>,
        keys: &BTreeMap<String, String>,
        trusted: bool,
    ) -> Workspace {
        workspace(
            r,
            conn,
            &Trust {
                api_keys: keys,
                trusted,
            },
        )
        .unwrap()
    }

    #[test]
    fn workspace_sources_without_api_keys() {
        let none = BTreeMap::new();
        let mut r = req("http://a/");
        assert_eq!(ws(&r, None, &none, false).name, "default");
        // "alice:secret"
        r.insert_header("Proxy-Authorization", "Basic YWxpY2U6c2VjcmV0")
            .unwrap();
        assert_eq!(ws(&r, None, &none, false).name, "alice");
        r.insert_header("X-EZThrottle-Workspace", "team-b").unwrap();
        let w = ws(&r, None, &none, false);
        assert_eq!((&*w.name, w.ignored_header), ("team-b", false));
        r.insert_header("X-EZThrottle-Workspace", "bad space")
            .unwrap();
        assert!(workspace(
            &r,
            None,
            &Trust {
                api_keys: &none,
                trusted: false
            }
        )
        .is_err());
    }

    #[test]
    fn with_api_keys_only_a_verified_key_names_the_workspace() {
        let keys: BTreeMap<String, String> = [("tok_a".to_string(), "team-a".to_string())].into();
        let mut r = req("http://a/");
        r.insert_header("X-EZThrottle-Workspace", "team-a").unwrap();
        let w = ws(&r, None, &keys, false);
        assert_eq!((&*w.name, w.ignored_header), ("default", true));
        // "alice:secret": a user name alone is not believed.
        r.insert_header("Proxy-Authorization", "Basic YWxpY2U6c2VjcmV0")
            .unwrap();
        assert_eq!(ws(&r, None, &keys, false).name, "default");
        // "x:tok_a": the key's workspace, whatever the user or header says.
        r.insert_header("Proxy-Authorization", "Basic eDp0b2tfYQ==")
            .unwrap();
        r.insert_header("X-EZThrottle-Workspace", "team-b").unwrap();
        let w = ws(&r, None, &keys, false);
        assert_eq!((&*w.name, w.ignored_header), ("team-a", true));
        // The key given on the CONNECT of an intercepted connection.
        let conn = ConnInfo {
            client: None,
            connect: Some(std::sync::Arc::new(ConnectTarget {
                host: "api.test".into(),
                port: 443,
                proxy_auth: ProxyCredentials::parse("Basic eDp0b2tfYQ=="),
                tls: true,
            })),
        };
        assert_eq!(ws(&req("/x"), Some(&conn), &keys, false).name, "team-a");
        // A trusted client (or the job runner) is believed.
        let w = ws(&r, None, &keys, true);
        assert_eq!((&*w.name, w.ignored_header), ("team-b", false));
        assert!(format!("{:?}", ProxyCredentials::parse("Basic eDp0b2tfYQ==")).contains("****"));
        assert!(!format!("{:?}", ProxyCredentials::parse("Basic eDp0b2tfYQ==")).contains("tok_a"));
    }

    #[test]
    fn only_the_right_token_makes_a_job_runner() {
        let token = "0123456789abcdef";
        let mut r = req("http://a/");
        assert_eq!(caller(&r, token), Caller::Client);
        r.insert_header(INTERNAL_HEADER, internal_value(false, token))
            .unwrap();
        assert_eq!(caller(&r, token), Caller::JobRunner { parked: false });
        assert_eq!(caller(&r, token).egress(), crate::egress::Purpose::Job);
        r.insert_header(INTERNAL_HEADER, internal_value(true, token))
            .unwrap();
        assert_eq!(caller(&r, token).egress(), crate::egress::Purpose::Proxy);
        for bad in [
            "job 0123456789abcdeX",
            "job ",
            "job",
            "root 0123456789abcdef",
            "",
        ] {
            r.insert_header(INTERNAL_HEADER, bad).unwrap();
            assert_eq!(caller(&r, token), Caller::Client, "{bad:?}");
        }
    }

    #[test]
    fn via_loop_detection() {
        let mut r = req("http://a/");
        assert!(!looped(&r, "abc"));
        r.insert_header("Via", "1.1 other, 1.1 ezthrottle-abc")
            .unwrap();
        assert!(looped(&r, "abc"));
        assert!(!looped(&r, "abcd"));
    }
}
