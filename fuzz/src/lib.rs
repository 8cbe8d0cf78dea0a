//! Fuzz targets for ezthrottle's parsers (docs/fuzzing.md).
//!
//! Each `pub fn` takes one raw fuzz input. It must never panic: a panic is
//! either a panic inside ezthrottle (or a dependency on our path) or a broken
//! invariant asserted here. The functions are driven by libFuzzer through
//! the thin binaries in `fuzz_targets/`, and replayed over the seed corpus by
//! `cargo test` in this crate.
//!
//! Structure-aware targets read their input through
//! [`arbitrary::Unstructured`], so the same bytes always mean the same case.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Unstructured;
use ezthrottle::accept::connect;
use ezthrottle::accept::framing::{self, BodyFraming, FramingError, HeadScanner};
use ezthrottle::config::HeadLimits;
use ezthrottle::admission::learn;
use ezthrottle::config::{Config, Overrides};
use ezthrottle::egress::{self as egress_mod, Egress, Purpose};
use ezthrottle::idempotency::{fingerprint as fp, key};
use ezthrottle::jobs::{request as job_request, spec::JobSpec, spec::RetryPolicySpec};
use ezthrottle::pipeline::ctx::{ConnInfo, ConnectTarget};
use ezthrottle::pipeline::{identify, park};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::server::HttpSession;

/// The job runner's per-process token (pipeline/identify.rs `caller`).
const RUNNER_TOKEN: &str = "runner-token-0123456789";

fn control() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4001))
}

/// An intercepted connection: its CONNECT target is authoritative.
fn intercepted() -> ConnInfo {
    ConnInfo {
        client: Some(SocketAddr::from(([127, 0, 0, 1], 50000))),
        connect: Some(ConnectTarget {
            host: "api.example.com".into(),
            port: 443,
            proxy_auth: identify::ProxyCredentials::parse("Basic d3MtY29ubmVjdDprZXktMQ=="),
        }),
    }
}

fn valid_workspace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn check_host(host: &str) {
    assert!(!host.is_empty(), "empty host accepted");
    assert_eq!(host, host.to_ascii_lowercase(), "host not lower-cased");
    // Not asserted: no trailing dot. One is dropped (`example.com.`), but
    // `example.com..` keeps one and `..` becomes `.`; the resolver refuses a
    // name with an empty label, so such a host reaches nothing.
}

/// What the pipeline does with a request head once pingora has parsed it:
/// identify (target, workspace, loop), the parking headers, the
/// Idempotency-Key, and a job attempt's retry-policy header.
fn request_checks(req: &RequestHeader) {
    let no_keys = BTreeMap::new();
    let keys = BTreeMap::from([("key-1".to_string(), "ws-key".to_string())]);
    for conn in [None, Some(intercepted())] {
        if let Ok(t) = identify::target(req, conn.as_ref(), control()) {
            check_host(&t.host);
            assert_ne!(t.port, 0, "port 0 accepted");
            assert!(t.path_and_query.starts_with('/'), "{:?}", t.path_and_query);
            if conn.is_some() {
                assert_eq!(
                    (t.host.as_str(), t.port, t.tls),
                    ("api.example.com", 443, true)
                );
            }
        }
        for (keys, trusted) in [(&no_keys, false), (&keys, false), (&keys, true)] {
            let trust = identify::Trust {
                api_keys: keys,
                trusted,
            };
            if let Ok(ws) = identify::workspace(req, conn.as_ref(), &trust) {
                assert!(
                    ws.name == "ws-key" || ws.name == "default" || valid_workspace(&ws.name),
                    "workspace {ws:?}"
                );
                // With API keys an untrusted client names no workspace itself.
                if !keys.is_empty() && !trusted {
                    assert!(
                        ws.name == "ws-key" || ws.name == "default",
                        "believed {ws:?}"
                    );
                }
            }
        }
    }
    let _ = identify::looped(req, "fuzz0001");
    let caller = identify::caller(req, RUNNER_TOKEN);
    if caller.is_internal() {
        let sent = req
            .headers
            .get(identify::INTERNAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            sent.ends_with(RUNNER_TOKEN),
            "a client passed for the job runner: {sent:?}"
        );
    }
    if let Ok(Some(p)) = park::options(req, Duration::from_secs(30), caller, policy()) {
        assert!(!p.webhooks.is_empty());
        assert!(p.metadata.is_object());
        for url in &p.webhooks {
            check_egress_verdict(Purpose::Webhook, url);
        }
    }
    for v in req.headers.get_all(key::HEADER) {
        if let Ok(k) = key::validate(v) {
            assert!((1..=255).contains(&k.len()));
        }
    }
    if let Some(policy) = req
        .headers
        .get("x-ezthrottle-retry-policy")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str::<RetryPolicySpec>(v).ok())
    {
        let mut retry = default_config().retry.clone();
        policy.apply(&mut retry);
        let p = ezthrottle::retry::Policy::new(retry, &req.method, false);
        for code in [429, 500, 502, 503] {
            let _ = p.decide(
                ezthrottle::retry::Outcome::Status(code),
                ezthrottle::retry::Spent::default(),
            );
        }
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
}

/// (a) A plain (non-CONNECT) request head as the proxy port reads it:
/// pingora's HTTP/1 server session parses and validates it (the same code
/// the proxy listener runs), then our pipeline's header logic reads it and
/// the body is drained as pingora frames it (Content-Length / chunked).
/// A head starting with `CONNECT ` goes where the front door sends it.
pub fn head_plain(data: &[u8]) {
    if data.starts_with(b"CONNECT ") {
        head_connect(data);
        return;
    }
    RT.with(|rt| {
        rt.block_on(async {
            let mut session = HttpSession::new(Box::new(Cursor::new(data.to_vec())));
            match session.read_request().await {
                Ok(Some(_)) => {}
                _ => return,
            }
            request_checks(session.req_header());
            let _ = session.is_upgrade_req();
            let _ = session.is_body_empty();
            for _ in 0..64 {
                match session.read_body_bytes().await {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        })
    });
}

/// (a) A CONNECT head (accept/connect.rs reads these itself with httparse),
/// and (e) the authority / host / Proxy-Authorization parsers on raw text.
pub fn head_connect(data: &[u8]) {
    if let Ok(t) = connect::parse_head(data) {
        check_host(&t.host);
        assert_ne!(t.port, 0);
        if let Some(c) = &t.proxy_auth {
            assert!(!c.user.contains(':'));
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Ok((host, port)) = identify::split_authority(&text) {
        check_host(&host);
        assert_ne!(port, 0);
    }
    if let Ok(host) = identify::normalize_host(&text) {
        assert!(!host.is_empty());
    }
    if let Some(c) = identify::ProxyCredentials::parse(&text) {
        assert!(!c.user.contains(':'));
        assert!(!format!("{c:?}").contains("key-1") || c.user.contains("key-1"));
    }
}

/// The limits an input is checked against: its first byte picks the
/// defaults, tiny limits (so that short inputs reach every limit), or the
/// ceilings pingora itself has.
fn limits_and_head(data: &[u8]) -> (HeadLimits, usize, &[u8]) {
    let Some((&first, head)) = data.split_first() else {
        return (HeadLimits::default(), 1, data);
    };
    let limits = match first % 3 {
        0 => HeadLimits::default(),
        1 => HeadLimits {
            max_request_line: 48,
            max_header_line: 32,
            max_head: 160,
            max_headers: 4,
        },
        _ => HeadLimits {
            max_request_line: framing::PINGORA_MAX_HEAD,
            max_header_line: framing::PINGORA_MAX_HEAD,
            max_head: framing::PINGORA_MAX_HEAD,
            max_headers: framing::PINGORA_MAX_HEADERS,
        },
    };
    // Bytes per read when the head arrives in pieces: 1..=64.
    let step = usize::from(first >> 2) + 1;
    (limits, step, head)
}

/// (a) The request-head checker the front door runs before pingora sees a
/// byte (accept/framing.rs `inspect_head`), over arbitrary bytes and three
/// sets of limits. Besides never panicking: an accepted head lies inside
/// the buffer and the limits, its framing is consistent, and the
/// incremental scanner (`HeadScanner::feed`, as a trickled head arrives)
/// finds the same end or the same error as one call on the whole input.
pub fn inspect_head(data: &[u8]) {
    let (limits, step, buf) = limits_and_head(data);
    let whole = framing::inspect_head(buf, &limits);
    if let Ok(info) = &whole {
        assert!(info.start < info.end && info.end <= buf.len(), "{info:?}");
        assert!(info.end <= limits.max_head, "{info:?} beyond max_head");
        assert!(
            buf[..info.end].ends_with(b"\r\n\r\n"),
            "head does not end with CRLF CRLF"
        );
        if info.is_connect {
            assert!(matches!(
                info.body,
                BodyFraming::None | BodyFraming::Length(0)
            ));
        }
        if let BodyFraming::Length(n) = info.body {
            assert!(n <= framing::MAX_CONTENT_LENGTH);
        }
        let again = framing::inspect_head(&buf[..info.end], &limits);
        assert_eq!(again.as_ref(), Ok(info), "the head alone reads differently");
        let _ = FramingError::Incomplete.to_proxy_error();
    }
    if let Err(e) = &whole {
        let _ = e.to_proxy_error();
    }
    // The same bytes arriving `step` at a time.
    let mut once = HeadScanner::default();
    let at_once = once.feed(buf, &limits);
    let mut scanner = HeadScanner::default();
    let mut got = Ok(None);
    let mut len = 0;
    while len < buf.len() {
        len = (len + step).min(buf.len());
        got = scanner.feed(&buf[..len], &limits);
        if !matches!(got, Ok(None)) {
            break;
        }
    }
    if buf.is_empty() {
        got = scanner.feed(buf, &limits);
    }
    // The same verdict; which refusal (414, 431 or 400) may depend on how
    // the bytes arrive: a long first line can break the line limit before
    // the malformed byte at its end has arrived.
    match (&got, &at_once) {
        (Err(_), Err(_)) => {}
        _ => assert_eq!(got, at_once, "trickled head (step {step}) ends differently"),
    }
    if let Ok(Some(end)) = at_once {
        assert_eq!(scanner.start(), once.start());
        if let Ok(info) = &whole {
            assert_eq!((info.start, info.end), (once.start(), end));
        }
    }
}

/// (a) What pingora makes of a head `inspect_head` accepted: the front door
/// hands pingora exactly that head and the body bytes its framing names,
/// so pingora must accept it too (else the client gets pingora's bare 400
/// after all) and agree on whether a body follows.
pub fn framing_pingora(data: &[u8]) {
    let (limits, _, buf) = limits_and_head(data);
    let Ok(info) = framing::inspect_head(buf, &limits) else {
        return;
    };
    if info.is_connect {
        head_connect(&buf[info.start..info.end]);
        return;
    }
    let mut bytes = buf[info.start..].to_vec();
    if let BodyFraming::Length(n) = info.body {
        // Only what the framing says belongs to this request.
        let body = (bytes.len() - (info.end - info.start)).min(n as usize);
        bytes.truncate(info.end - info.start + body);
    }
    RT.with(|rt| {
        rt.block_on(async {
            let mut session = HttpSession::new(Box::new(Cursor::new(bytes)));
            match session.read_request().await {
                Ok(Some(n)) => {
                    assert_eq!(n, info.end - info.start, "pingora's head ends elsewhere")
                }
                other => panic!(
                    "pingora refused a head inspect_head accepted ({info:?}): {:?}",
                    other.map_err(|e| e.to_string())
                ),
            }
            let empty = session.is_body_empty();
            match info.body {
                BodyFraming::None | BodyFraming::Length(0) => {
                    assert!(
                        empty,
                        "pingora expects a body the framing does not ({info:?})"
                    )
                }
                _ => assert!(
                    !empty,
                    "pingora expects no body, the framing does ({info:?})"
                ),
            }
            request_checks(session.req_header());
        })
    });
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

const REQUEST_HEADERS: &[&str] = &[
    "host",
    "via",
    "x-ezthrottle-workspace",
    "proxy-authorization",
    "x-ezthrottle-webhook",
    "x-ezthrottle-metadata",
    "x-ezthrottle-job",
    "prefer",
    "idempotency-key",
    "x-ezthrottle-retry-policy",
    "x-ezthrottle-internal",
    "x-ezthrottle-max-wait",
    "x-ezthrottle-region",
    "content-length",
    "transfer-encoding",
];

const TARGET_PREFIXES: &[&str] = &[
    "",
    "http://",
    "https://",
    "HTTP://",
    "ftp://",
    "/",
    "http://[",
    "http://u:p@",
];

/// (e) Structure-aware: a request head built field by field (method, target,
/// the headers the pipeline reads), handed to the same checks as
/// `head_plain` without going through the HTTP parser, so that values the
/// parser would refuse early still reach identify / park / idempotency.
pub fn identify(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = build_and_check(&mut u);
}

fn build_and_check(u: &mut Unstructured) -> arbitrary::Result<()> {
    let method: String = if u.ratio(1, 8)? {
        u.arbitrary()?
    } else {
        u.choose(METHODS)?.to_string()
    };
    let mut path = u.choose(TARGET_PREFIXES)?.as_bytes().to_vec();
    path.extend_from_slice(u.arbitrary::<&[u8]>()?);
    let Ok(mut req) = RequestHeader::build(method.as_str(), &path, None) else {
        return Ok(());
    };
    let n = u.int_in_range(0..=12)?;
    for _ in 0..n {
        let name: HeaderName = if u.ratio(1, 10)? {
            match HeaderName::from_bytes(u.arbitrary::<&[u8]>()?) {
                Ok(n) => n,
                Err(_) => continue,
            }
        } else {
            HeaderName::from_static(u.choose(REQUEST_HEADERS)?)
        };
        let Ok(value) = HeaderValue::from_bytes(u.arbitrary::<&[u8]>()?) else {
            continue;
        };
        let _ = req.append_header(name, value);
    }
    request_checks(&req);
    let text = String::from_utf8_lossy(&path);
    let _ = identify::split_authority(&text);
    Ok(())
}

const LIMIT_HEADERS: &[&str] = &[
    learn::RPS_HEADER,
    learn::CONCURRENCY_HEADER,
    "retry-after",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-limit",
];

const LIMIT_VALUES: &[&str] = &[
    "0",
    "1",
    " 2 ",
    "0.5",
    "1e9",
    "999999999.9",
    "NaN",
    "inf",
    "-1",
    "86400",
    "86401",
    "999999999",
    "1000000000",
    "1764003600",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Sun, 30 Nov 2025 16:20:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
];

fn check_signals(s: &learn::Signals) {
    if let Some(r) = s.rps {
        assert!(r.is_finite() && r > 0.0 && r < 1e9, "rps {r}");
    }
    if let Some(c) = s.max_concurrent {
        assert!(c > 0 && c < 1_000_000, "max_concurrent {c}");
    }
    if let Some(p) = s.pause {
        assert!(
            p > Duration::ZERO && p <= Duration::from_secs(86_400),
            "pause {p:?}"
        );
    }
}

/// (b) The learned-limit header parsers (admission/learn.rs): a response
/// status, a clock and a set of limit headers with arbitrary values, read
/// whole by `learn::read` and each value by the single parsers.
pub fn learn_headers(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = learn_case(&mut u);
}

fn learn_case(u: &mut Unstructured) -> arbitrary::Result<()> {
    let status = if u.ratio(1, 8)? {
        u.arbitrary::<u16>()?
    } else {
        *u.choose(&[429u16, 503, 200, 500])?
    };
    // Mostly near today; sometimes anywhere a SystemTime can be.
    let now = if u.ratio(1, 4)? {
        UNIX_EPOCH + Duration::from_secs(u.int_in_range(0..=u64::from(u32::MAX) * 16)?)
    } else {
        UNIX_EPOCH + Duration::from_secs(1_764_000_000 + u64::from(u.arbitrary::<u16>()?))
    };
    let mut headers = HeaderMap::new();
    let n = u.int_in_range(0..=10)?;
    for _ in 0..n {
        let name = HeaderName::from_static(u.choose(LIMIT_HEADERS)?);
        // Raw bytes alone rarely spell a number at the edges: also any u64,
        // i64 or f64 as text, and values known to sit on a boundary.
        let value: Vec<u8> = match u.int_in_range(0..=4)? {
            0 => u.arbitrary::<&[u8]>()?.to_vec(),
            1 => u.arbitrary::<u64>()?.to_string().into_bytes(),
            2 => u.arbitrary::<i64>()?.to_string().into_bytes(),
            3 => u.arbitrary::<f64>()?.to_string().into_bytes(),
            _ => u.choose(LIMIT_VALUES)?.as_bytes().to_vec(),
        };
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.append(name, v);
        }
    }
    check_signals(&learn::read(status, &headers, now));
    for v in headers.values() {
        let text = String::from_utf8_lossy(v.as_bytes());
        if let Some(r) = learn::parse_rps(&text) {
            assert!(r.is_finite() && r > 0.0 && r < 1e9);
        }
        if let Some(c) = learn::parse_concurrency(&text) {
            assert!(c > 0 && c < 1_000_000);
        }
        if let Some(d) = learn::parse_retry_after(&text, now) {
            assert!(d > Duration::ZERO && d <= Duration::from_secs(86_400));
        }
    }
    Ok(())
}

fn default_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_toml_str("", "<defaults>").expect("defaults parse"))
}

/// Hosts whose per-domain settings are looked up after a config parses.
const HOSTS: &[&str] = &[
    "api.stripe.com",
    "a.b.example.com",
    "example.com",
    "",
    "*",
    "shop.myshopify.com",
];

thread_local! {
    static CONFIG_FILE: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// (c) The config loader: TOML text through `Config::from_toml_str` (types,
/// validation, defaults); when it parses, the lookups the proxy makes per
/// request, the effective-config renderer (`config check`), and the whole
/// `Config::load` (file read, overrides, cross-checks) on the same text.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml_str(text, "fuzz.toml") else {
        return;
    };
    for host in HOSTS {
        let _ = config.domain(host);
        let _ = config.limits_for(host);
        let _ = config.tls_mode(host);
        let _ = config.preset(host);
        let _ = config.budget_key(host);
    }
    let effective = config.to_effective_toml();
    assert!(!effective.is_empty());
    let path = CONFIG_FILE.with(|f| {
        f.borrow_mut()
            .get_or_insert_with(|| {
                std::env::temp_dir().join(format!(
                    "ezthrottle-fuzz-config-{}-{:?}.toml",
                    std::process::id(),
                    std::thread::current().id()
                ))
            })
            .clone()
    });
    if std::fs::write(&path, text).is_ok() {
        let _ = Config::load(Some(&path), &Overrides::default());
    }
}

/// The config jobs are parsed against: two regions and a domain with
/// its own limits, so that region names and per-domain ceilings are
/// reachable.
const JOB_CONFIG: &str = r#"
[regions.east]
proxy = "http://127.0.0.1:5000"
[regions.lax]
proxy = "http://127.0.0.1:5001"
[limits.domains."api.example.com"]
rps = 5
max_concurrent = 2
"#;

fn job_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::from_toml_str(JOB_CONFIG, "<fuzz>").expect("job config parses"))
}

/// (d) `POST /api/v1/jobs` bodies (jobs/request.rs): JSON → validated
/// `JobSpec`. An accepted spec must get a HASH key and must read back
/// unchanged from the JSON it is stored as.
pub fn job_json(data: &[u8]) {
    let Ok(sub) = job_request::parse(data, job_config()) else {
        return;
    };
    let key = job_request::derived_key("default", &sub.spec);
    assert!(!key.is_empty());
    check_spec(&sub.spec);
    let stored = serde_json::to_vec(&sub.spec).expect("a spec serialises");
    let back: JobSpec = serde_json::from_slice(&stored).expect("a stored spec reads back");
    assert_eq!(
        serde_json::to_vec(&back).expect("serialises"),
        stored,
        "spec changed through storage"
    );
}

fn check_spec(spec: &JobSpec) {
    assert!(
        spec.url.starts_with("http://") || spec.url.starts_with("https://"),
        "url {:?}",
        spec.url
    );
    assert!(spec.metadata.is_object() || spec.metadata.is_null());
    for h in &spec.headers {
        assert!(HeaderName::from_bytes(h.0.as_bytes()).is_ok());
        assert!(HeaderValue::from_str(&h.1).is_ok());
    }
    if let Some(f) = &spec.fallback {
        check_spec(&f.job);
    }
    if let Some(s) = &spec.on_success {
        check_spec(s);
    }
    if let Some(s) = &spec.on_failure {
        check_spec(s);
    }
}

/// (e) The idempotency fingerprint (idempotency/fingerprint.rs): the
/// canonical JSON of a body must be JSON, denote the same value, and be a
/// fixed point (canonicalising it again changes nothing).
pub fn fingerprint(data: &[u8]) {
    let f = fp::fingerprint(data);
    assert_eq!(f.len(), 64);
    let Some(canon) = fp::canonical_json(data) else {
        return;
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&canon) {
        panic!(
            "canonical form is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&canon)
        );
    }
    // `1e400` is JSON but no f64: compare values where serde_json has them.
    if let Ok(before) = serde_json::from_slice::<serde_json::Value>(data) {
        let after: serde_json::Value =
            serde_json::from_slice(&canon).expect("the same numbers parse again");
        assert_eq!(before, after, "canonical form denotes another value");
    }
    assert_eq!(
        fp::canonical_json(&canon).as_deref(),
        Some(&canon[..]),
        "canonical form is not a fixed point"
    );
}

fn policy() -> &'static Egress {
    static E: OnceLock<Egress> = OnceLock::new();
    E.get_or_init(|| Egress::new(default_config()))
}

/// An IP the way a URL host may spell it (`2852039166`, `0xa9.0xfe.0xa9.0xfe`,
/// `[::ffff:a9fe:a9fe]`), judged as the IPv4 address an IPv6 one carries
/// (mapped, compatible, NAT64) — worked out here independently of
/// egress.rs.
fn oracle_ip(host: &str) -> Option<IpAddr> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    let ip = match h.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if h.contains(':') => return None,
        Err(_) => match url::Host::parse(&h).ok()? {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(_) => return None,
        },
    };
    Some(match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            if let Some(v4) = v6.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || (s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1))
            {
                IpAddr::V4(tail)
            } else {
                ip
            }
        }
        v4 => v4,
    })
}

/// Refused for everyone by default: link-local and cloud metadata.
fn metadata_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..2] == [169, 254] || v4 == Ipv4Addr::new(100, 100, 100, 200),
        IpAddr::V6(v6) => {
            v6.segments()[0] & 0xffc0 == 0xfe80
                || v6 == "fd00:ec2::254".parse::<std::net::Ipv6Addr>().unwrap()
        }
    }
}

/// Refused by default for job targets and webhooks: this host and private
/// networks.
fn internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 127
                || o[0] == 0
                || o[0] == 10
                || (o[0] == 172 && o[1] & 0xf0 == 16)
                || (o[0] == 192 && o[1] == 168)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || v6.segments()[0] & 0xfe00 == 0xfc00
        }
    }
}

const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata", "instance-data"];

/// What a URL the policy let through must not be.
fn check_egress_verdict(purpose: Purpose, raw: &str) {
    let Ok(url) = url::Url::parse(raw) else {
        panic!("{purpose:?}: {raw:?} allowed but is not a URL");
    };
    let Some(host) = url.host_str() else {
        panic!("{purpose:?}: {raw:?} allowed without a host");
    };
    let port = url.port_or_known_default();
    if let Some(ip) = oracle_ip(host) {
        let c = default_config();
        let own = [c.proxy.listen.port(), c.control.listen.port()];
        if let Some(p) = port {
            assert!(
                !((ip.is_loopback() || ip.is_unspecified()) && own.contains(&p)),
                "{purpose:?}: {raw:?} reaches our own listener {ip}:{p}"
            );
        }
        assert!(
            !metadata_ip(ip),
            "{purpose:?}: {raw:?} reaches metadata address {ip}"
        );
        if purpose != Purpose::Proxy {
            assert!(
                !internal_ip(ip),
                "{purpose:?}: {raw:?} reaches internal address {ip}"
            );
        }
    } else {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        assert!(
            !METADATA_NAMES.contains(&name.as_str()),
            "{purpose:?}: {raw:?} names {name}"
        );
    }
    if purpose != Purpose::Proxy {
        assert!(
            matches!(port, Some(80 | 443)),
            "{purpose:?}: {raw:?} port {port:?}"
        );
    }
}

/// (e) The egress policy's static checks (egress.rs, issue 10's SSRF
/// bullet): a URL (job target, webhook) or a bare host as a client may
/// spell it. Whatever the policy lets through must not be, by an
/// independent reading of the same text, a link-local / metadata address
/// or name (anyone), nor a loopback / private address or a port other than
/// 80 and 443 (jobs and webhooks).
pub fn egress(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let e = policy();
    for purpose in [Purpose::Job, Purpose::Webhook, Purpose::Proxy] {
        if e.check_url(purpose, &text).is_ok() {
            check_egress_verdict(purpose, &text);
        }
    }
    // The same text as a host (CONNECT authority, request target host).
    let host = text.trim();
    for purpose in [Purpose::Job, Purpose::Proxy] {
        if e.check_name(purpose, host, 443).is_ok() {
            if let Some(ip) = oracle_ip(host) {
                assert!(!metadata_ip(ip), "{purpose:?}: host {host:?} is {ip}");
                if purpose == Purpose::Job {
                    assert!(!internal_ip(ip), "{purpose:?}: host {host:?} is {ip}");
                }
            }
        }
    }
    if let Ok(url) = url::Url::parse(&text) {
        let _ = egress_mod::url_host_port(&url);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let c = egress_mod::canonical(ip);
        if let Some(o) = oracle_ip(host) {
            assert_eq!(c, o, "canonical({ip})");
        }
        let own = SocketAddr::new(ip, default_config().control.listen.port());
        if ip.is_loopback() || ip.is_unspecified() {
            assert!(e.is_self(own), "{own} is the control listener");
        }
    }
}

/// (a) The chunked-body tracker of the front door (accept/framing.rs
/// `ChunkTracker`): it decides where a chunked request body ends, so that
/// the bytes after it (a pipelined request) are kept for us and pingora
/// never reads past the request. 1st byte: bytes per read (1..=64); the
/// rest: a chunked body, maybe followed by anything. Besides never
/// panicking: the tracker says the same trickled as in one piece, and where
/// it says the body ends, pingora's own chunked decoder (given the head and
/// exactly those bytes) ends there too, without error.
pub fn chunk_tracker(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(first & 0x3f) + 1;
    let max_trailers = 1024;
    let mut whole = framing::ChunkTracker::new(max_trailers);
    let at_once = whole.feed(body);
    let mut t = framing::ChunkTracker::new(max_trailers);
    let mut trickled = Ok(0);
    let mut taken = 0;
    for piece in body.chunks(step) {
        match t.feed(piece) {
            Ok(n) => {
                assert!(n <= piece.len());
                taken += n;
                trickled = Ok(taken);
                if t.done() || n < piece.len() {
                    break;
                }
            }
            Err(e) => {
                trickled = Err(e);
                break;
            }
        }
    }
    match (&at_once, &trickled) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "trickled ({step}) body ends elsewhere");
            assert_eq!(whole.done(), t.done());
        }
        (Err(_), Err(_)) => {}
        _ => panic!("trickled ({step}): {trickled:?}, at once: {at_once:?}"),
    }
    let Ok(n) = at_once else {
        return;
    };
    if !whole.done() {
        return;
    }
    let mut bytes =
        b"POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    bytes.extend_from_slice(&body[..n]);
    RT.with(|rt| {
        rt.block_on(async {
            let mut session = HttpSession::new(Box::new(Cursor::new(bytes)));
            assert!(matches!(session.read_request().await, Ok(Some(_))));
            let mut got = 0usize;
            loop {
                match session.read_body_bytes().await {
                    Ok(Some(b)) => got += b.len(),
                    Ok(None) => break,
                    Err(e) => panic!(
                        "the tracker ended the body after {n} bytes, pingora: {e} (after {got} body bytes)"
                    ),
                }
            }
            assert!(session.is_body_done(), "pingora wants more than the tracker's {n} bytes");
        })
    });
}
