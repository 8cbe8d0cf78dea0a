//! Parsing and validation: TOML text → `RawConfig` → `Config`. Every error
//! names the file, the dotted key and the reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::raw::*;
use super::*;

pub(super) struct Ctx<'a> {
    pub file: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// `limits.domains."api.example.com"`: quote keys that hold dots.
pub(super) fn quoted(key: &str) -> String {
    if key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

pub(super) fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { file };
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = dotted(e.path());
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        let key = if path == "." || path.is_empty() {
            unknown_key(&message).unwrap_or_else(|| "<file>".into())
        } else {
            match unknown_key(&message) {
                // serde_path_to_error stops at the table; name the unknown key itself.
                Some(k) if !path.ends_with(&quoted(&k)) => format!("{path}.{}", quoted(&k)),
                _ => path,
            }
        };
        let line = inner
            .span()
            .map(|s| format!(" (line {})", line_of(text, s.start)))
            .unwrap_or_default();
        cx.err(key, format!("{message}{line}"))
    })?;
    build(&cx, raw)
}

/// The 1-based line holding byte `at`. (Counting `lines()` of the text
/// before it was one short whenever `at` starts a line, which is where
/// every key starts: errors named the line above the key.)
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A serde path as the dotted key the rest of the errors use, with keys
/// that hold dots quoted (`limits.domains."a.test".rps`).
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quoted(key));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quoted(variant));
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        ".".into()
    } else {
        out
    }
}

fn unknown_key(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

pub(super) fn duration(cx: &Ctx, key: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.trim()).map_err(|_| {
        cx.err(
            key,
            format!("expected a duration like \"500ms\", \"30s\" or \"24h\", got {v:?}"),
        )
    })
}

/// Sizes: an integer number of bytes, or a string like "512KiB", "1MiB",
/// "10MB". Hand-written because the accepted forms are a handful and a
/// crate's wider grammar (floats, spaces, bit units) would accept typos.
pub(super) fn size(cx: &Ctx, key: &str, v: &toml::Value) -> Result<u64, ConfigError> {
    let bad = || {
        cx.err(
            key,
            format!("expected a size in bytes or like \"1MiB\", got {v}"),
        )
    };
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num.parse().map_err(|_| bad())?;
            let mult: u64 = match unit.trim() {
                "" | "B" => 1,
                "KB" | "kB" => 1_000,
                "KiB" => 1 << 10,
                "MB" => 1_000_000,
                "MiB" => 1 << 20,
                "GB" => 1_000_000_000,
                "GiB" => 1 << 30,
                _ => return Err(bad()),
            };
            n.checked_mul(mult).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

pub(super) fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

fn addr(cx: &Ctx, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| {
        cx.err(
            key,
            format!("expected an address like \"127.0.0.1:4000\", got {v:?}"),
        )
    })
}

fn positive_u32(cx: &Ctx, key: &str, v: i64, max: u64) -> Result<u32, ConfigError> {
    if v < 1 || v as u64 > max {
        return Err(cx.err(key, format!("must be between 1 and {max}, got {v}")));
    }
    Ok(v as u32)
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A list of CIDRs (or single IPs); errors name the entry.
fn nets(cx: &Ctx, key: &str, v: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            super::egress::net(s).ok_or_else(|| {
                cx.err(
                    format!("{key}[{i}]"),
                    format!(
                        "expected a CIDR like \"10.0.0.0/8\" or an IP, got {:?}",
                        s.trim()
                    ),
                )
            })
        })
        .collect()
}

fn default_allow_clients() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn status_codes(cx: &Ctx, key: &str, v: &[i64]) -> Result<Vec<u16>, ConfigError> {
    v.iter()
        .enumerate()
        .map(|(i, c)| {
            if (100..=599).contains(c) {
                Ok(*c as u16)
            } else {
                Err(cx.err(
                    format!("{key}[{i}]"),
                    format!("must be an HTTP status code 100-599, got {c}"),
                ))
            }
        })
        .collect()
}

fn retry(
    cx: &Ctx,
    key: &str,
    raw: &RawRetry,
    base: &RetryConfig,
) -> Result<RetryConfig, ConfigError> {
    let count = |k: &str, v: Option<i64>, d: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(d),
            Some(n) if (0..=1000).contains(&n) => Ok(n as u32),
            Some(n) => Err(cx.err(
                format!("{key}.{k}"),
                format!("must be between 0 and 1000, got {n}"),
            )),
        }
    };
    Ok(RetryConfig {
        max_retries: count("max_retries", raw.max_retries, base.max_retries)?,
        max_reroutes: count("max_reroutes", raw.max_reroutes, base.max_reroutes)?,
        retry_codes: match &raw.retry_codes {
            Some(v) => status_codes(cx, &format!("{key}.retry_codes"), v)?,
            None => base.retry_codes.clone(),
        },
        reroute_codes: match &raw.reroute_codes {
            Some(v) => status_codes(cx, &format!("{key}.reroute_codes"), v)?,
            None => base.reroute_codes.clone(),
        },
        max_buffered_body: match &raw.max_buffered_body {
            Some(v) => size(cx, &format!("{key}.max_buffered_body"), v)?,
            None => base.max_buffered_body,
        },
    })
}

/// Most entries a `budget_key` list may have: each is one more hash input
/// per request, and no API counts by more than a couple of headers.
pub(super) const MAX_BUDGET_KEYS: usize = 4;

/// `budget_key`: `"authorization"`, `"header:<name>"`, or a list of those.
/// Only these two forms, so that a later form (a cookie, a query parameter)
/// can be added without an existing value changing meaning.
fn budget_key(cx: &Ctx, key: &str, v: &toml::Value) -> Result<Vec<http::HeaderName>, ConfigError> {
    let expected = "expected \"authorization\" or \"header:<name>\" (e.g. \"header:x-api-key\")";
    let one = |key: &str, v: &toml::Value| -> Result<http::HeaderName, ConfigError> {
        let toml::Value::String(s) = v else {
            return Err(cx.err(key, format!("{expected}, got {v}")));
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(cx.err(key, format!("is empty: {expected}")));
        }
        if s.eq_ignore_ascii_case("authorization") {
            return Ok(http::header::AUTHORIZATION);
        }
        let Some(name) = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("header:"))
            .and_then(|_| s.get(7..))
        else {
            return Err(cx.err(key, format!("unknown form {s:?}: {expected}")));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(cx.err(key, format!("{s:?} names no header: {expected}")));
        }
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| cx.err(key, format!("{name:?} is not a header name")))
    };
    let names = match v {
        toml::Value::Array(list) => {
            if list.len() > MAX_BUDGET_KEYS {
                return Err(cx.err(
                    key,
                    format!("lists {} headers, more than {MAX_BUDGET_KEYS}", list.len()),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, v)| one(&format!("{key}[{i}]"), v))
                .collect::<Result<Vec<_>, _>>()?
        }
        toml::Value::String(_) => vec![one(key, v)?],
        other => {
            return Err(cx.err(
                key,
                format!("expected a string or a list of strings, got {other}"),
            ))
        }
    };
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(cx.err(
                format!("{key}[{i}]"),
                format!("{:?} is listed twice", n.as_str()),
            ));
        }
    }
    Ok(names)
}

fn default_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        max_reroutes: 2,
        retry_codes: vec![429, 503],
        reroute_codes: vec![500, 502, 504],
        max_buffered_body: 1 << 20,
    }
}

/// `[proxy]` request-head limits and `max_buffered`: each within what
/// pingora itself accepts (so it never refuses a head we let through), and
/// consistent with each other.
fn head_limits(
    cx: &Ctx,
    p: &RawProxy,
) -> Result<(crate::accept::framing::HeadLimits, u64), ConfigError> {
    use crate::accept::framing::{
        HeadLimits, DEFAULT_MAX_BUFFERED, PINGORA_MAX_HEAD, PINGORA_MAX_HEADERS,
    };
    let d = HeadLimits::default();
    let sized =
        |key: &str, v: &Option<toml::Value>, default: usize| -> Result<usize, ConfigError> {
            let Some(v) = v else { return Ok(default) };
            let n = size(cx, key, v)?;
            if !(64..=PINGORA_MAX_HEAD as u64).contains(&n) {
                return Err(cx.err(
                    key,
                    format!("must be between 64 bytes and {PINGORA_MAX_HEAD} bytes, got {n}"),
                ));
            }
            Ok(n as usize)
        };
    let limits = HeadLimits {
        max_request_line: sized(
            "proxy.max_request_line",
            &p.max_request_line,
            d.max_request_line,
        )?,
        max_header_line: sized(
            "proxy.max_header_line",
            &p.max_header_line,
            d.max_header_line,
        )?,
        max_head: sized("proxy.max_head", &p.max_head, d.max_head)?,
        max_headers: match p.max_headers {
            None => d.max_headers,
            Some(n) if (1..=PINGORA_MAX_HEADERS as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(cx.err(
                    "proxy.max_headers",
                    format!("must be between 1 and {PINGORA_MAX_HEADERS}, got {n}"),
                ))
            }
        },
    };
    for (key, v) in [
        ("proxy.max_request_line", limits.max_request_line),
        ("proxy.max_header_line", limits.max_header_line),
    ] {
        if v > limits.max_head {
            return Err(cx.err(
                key,
                format!("{v} is larger than proxy.max_head ({})", limits.max_head),
            ));
        }
    }
    let max_buffered = match &p.max_buffered {
        None => DEFAULT_MAX_BUFFERED as u64,
        Some(v) => size(cx, "proxy.max_buffered", v)?,
    };
    if max_buffered < limits.max_head as u64 {
        return Err(cx.err(
            "proxy.max_buffered",
            format!(
                "{max_buffered} is smaller than proxy.max_head ({}): not even one head would fit",
                limits.max_head
            ),
        ));
    }
    Ok((limits, max_buffered))
}

fn build(cx: &Ctx, raw: RawConfig) -> Result<Config, ConfigError> {
    // [proxy]
    let p = &raw.proxy;
    let listen = match &p.listen {
        Some(v) => addr(cx, "proxy.listen", v)?,
        None => SocketAddr::from(([127, 0, 0, 1], 4000)),
    };
    let connect_ports = match &p.connect_ports {
        // 80 too: some clients (undici's `EnvHttpProxyAgent`) CONNECT even
        // for `http://` URLs; what comes through is sniffed (`intercept.rs`).
        None => vec![443, 80],
        Some(v) if v.is_empty() => {
            return Err(cx.err("proxy.connect_ports", "must list at least one port"))
        }
        Some(v) => v
            .iter()
            .enumerate()
            .map(|(i, port)| {
                u16::try_from(*port).ok().filter(|p| *p > 0).ok_or_else(|| {
                    cx.err(
                        format!("proxy.connect_ports[{i}]"),
                        format!("must be a port 1-65535, got {port}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let allow_clients = match &p.allow_clients {
        None => default_allow_clients(),
        Some(v) => nets(cx, "proxy.allow_clients", v)?,
    };
    let trusted_clients = match &p.trusted_clients {
        None => Vec::new(),
        Some(v) => nets(cx, "proxy.trusted_clients", v)?,
    };
    let dur = |key: &str, v: &Option<String>, d: u64| -> Result<Duration, ConfigError> {
        let d = match v {
            Some(v) => duration(cx, key, v)?,
            None => Duration::from_secs(d),
        };
        if d.is_zero() {
            return Err(cx.err(key, "must be longer than 0"));
        }
        Ok(d)
    };
    let threads = match p.threads {
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            return Err(cx.err(
                "proxy.threads",
                format!("must be between 1 and 1024, got {n}"),
            ))
        }
    };
    let (head_limits, max_buffered) = head_limits(cx, p)?;
    let proxy = ProxyConfig {
        head_limits,
        head_timeout: dur("proxy.head_timeout", &p.head_timeout, 30)?,
        max_buffered,
        listen,
        connect_ports,
        allow_clients,
        trusted_clients,
        drain_timeout: dur("proxy.drain_timeout", &p.drain_timeout, 30)?,
        connect_timeout: dur("proxy.connect_timeout", &p.connect_timeout, 10)?,
        read_timeout: dur("proxy.read_timeout", &p.read_timeout, 60)?,
        idle_timeout: dur("proxy.idle_timeout", &p.idle_timeout, 300)?,
        threads,
    };

    // [control]
    let control_listen = match &raw.control.listen {
        Some(v) => addr(cx, "control.listen", v)?,
        None => SocketAddr::from(([127, 0, 0, 1], 4001)),
    };
    for (token, ws) in &raw.control.api_keys {
        if token.trim().is_empty() || ws.trim().is_empty() {
            return Err(cx.err(
                "control.api_keys",
                "tokens and workspace names must not be empty",
            ));
        }
    }
    let control = ControlConfig {
        listen: control_listen,
        api_keys: raw.control.api_keys.clone(),
    };

    // [tls]
    let path = |v: &Option<String>| v.as_ref().map(PathBuf::from);
    let tls = TlsConfig {
        ca_cert: path(&raw.tls.ca_cert),
        ca_key: path(&raw.tls.ca_key),
        upstream_ca_file: path(&raw.tls.upstream_ca_file),
        http2: raw.tls.http2.unwrap_or(true),
    };
    if tls.ca_cert.is_some() != tls.ca_key.is_some() {
        let key = if tls.ca_cert.is_some() {
            "tls.ca_key"
        } else {
            "tls.ca_cert"
        };
        return Err(cx.err(key, "tls.ca_cert and tls.ca_key must be set together"));
    }

    // [resolve]
    let mut resolve = BTreeMap::new();
    for (host, ip) in &raw.resolve {
        let key = format!("resolve.{}", quoted(host));
        let h = host.trim().to_ascii_lowercase();
        if !valid_host(&h) {
            return Err(cx.err(key, "expected a host name"));
        }
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| cx.err(&key, format!("expected an IP address, got {ip:?}")))?;
        resolve.insert(h, ip);
    }

    // [limits]
    let l = &raw.limits;
    let rps_ceiling = l.rps_ceiling.unwrap_or(10_000.0);
    if !rps_ceiling.is_finite() || rps_ceiling <= 0.0 {
        return Err(cx.err("limits.rps_ceiling", "must be a finite number > 0"));
    }
    let concurrency_ceiling = positive_u32(
        cx,
        "limits.concurrency_ceiling",
        l.concurrency_ceiling.unwrap_or(1024),
        u32::MAX as u64,
    )?;
    let max_wait_ceiling = match &l.max_wait_ceiling {
        Some(v) => {
            let d = duration(cx, "limits.max_wait_ceiling", v)?;
            if d.is_zero() || d > Duration::from_secs(86_400) {
                return Err(cx.err(
                    "limits.max_wait_ceiling",
                    format!("must be between 1ms and 24h, got {v:?}"),
                ));
            }
            d
        }
        None => Duration::from_secs(3600),
    };
    let check_limits = |prefix: &str,
                        rps: Option<f64>,
                        mc: Option<i64>,
                        burst: Option<i64>,
                        qc: Option<i64>,
                        mw: &Option<String>,
                        base: &DomainLimits|
     -> Result<DomainLimits, ConfigError> {
        let rps = match rps {
            Some(r) if !r.is_finite() || r <= 0.0 => {
                return Err(cx.err(
                    format!("{prefix}.rps"),
                    format!("must be a finite number > 0, got {r}"),
                ))
            }
            Some(r) if r > rps_ceiling => {
                return Err(cx.err(
                    format!("{prefix}.rps"),
                    format!("{r} is above limits.rps_ceiling ({rps_ceiling})"),
                ))
            }
            Some(r) => r,
            None => base.rps,
        };
        let max_concurrent = match mc {
            Some(v) => positive_u32(
                cx,
                &format!("{prefix}.max_concurrent"),
                v,
                concurrency_ceiling as u64,
            )?,
            None => base.max_concurrent,
        };
        let burst = match burst {
            Some(v) => positive_u32(cx, &format!("{prefix}.burst"), v, 1_000_000)?,
            None => base.burst,
        };
        let queue_capacity = match qc {
            Some(v) => {
                positive_u32(cx, &format!("{prefix}.queue_capacity"), v, 10_000_000)? as usize
            }
            None => base.queue_capacity,
        };
        let max_wait = match mw {
            Some(v) => {
                let d = duration(cx, &format!("{prefix}.max_wait"), v)?;
                if d.is_zero() {
                    return Err(cx.err(format!("{prefix}.max_wait"), "must be longer than 0"));
                }
                if d > max_wait_ceiling {
                    return Err(cx.err(
                        format!("{prefix}.max_wait"),
                        format!(
                            "{} is above limits.max_wait_ceiling ({})",
                            format_duration(d),
                            format_duration(max_wait_ceiling)
                        ),
                    ));
                }
                d
            }
            None => base.max_wait,
        };
        Ok(DomainLimits {
            rps,
            max_concurrent,
            burst,
            queue_capacity,
            max_wait,
        })
    };
    let builtin = DomainLimits {
        rps: 2.0,
        max_concurrent: 2,
        burst: 1,
        queue_capacity: 10_000,
        max_wait: Duration::from_secs(60),
    };
    let defaults = check_limits(
        "limits",
        l.rps,
        l.max_concurrent,
        l.burst,
        l.queue_capacity,
        &l.max_wait,
        &builtin,
    )?;

    // [retry]
    let retry_cfg = retry(cx, "retry", &raw.retry, &default_retry())?;

    // [regions]
    let mut regions = BTreeMap::new();
    for (name, r) in &raw.regions {
        let key = format!("regions.{}", quoted(name));
        if name == "local" {
            return Err(cx.err(
                key,
                "\"local\" is the built-in region (direct connections) and cannot be redefined",
            ));
        }
        let Some(proxy) = &r.proxy else {
            return Err(cx.err(
                format!("{key}.proxy"),
                "is required: the http://host:port of the peer proxy",
            ));
        };
        let ok = proxy
            .parse::<http::Uri>()
            .ok()
            .filter(|u| {
                u.scheme_str() == Some("http")
                    && u.port_u16().is_some()
                    && u.host().is_some_and(|h| !h.is_empty())
            })
            .is_some();
        if !ok {
            return Err(cx.err(
                format!("{key}.proxy"),
                format!("expected http://host:port, got {proxy:?}"),
            ));
        }
        regions.insert(
            name.clone(),
            RegionConfig {
                proxy: proxy.clone(),
            },
        );
    }

    // [limits.domains."x"]
    let mut domains = BTreeMap::new();
    for (host, d) in &l.domains {
        let prefix = format!("limits.domains.{}", quoted(host));
        let h = host.trim().to_ascii_lowercase();
        let bare = h.strip_prefix("*.").unwrap_or(&h);
        if !valid_host(bare) {
            return Err(cx.err(prefix, "expected a host name like \"api.example.com\" or \"*.example.com\" (no scheme, port or path)"));
        }
        let limits = check_limits(
            &prefix,
            d.rps,
            d.max_concurrent,
            d.burst,
            d.queue_capacity,
            &d.max_wait,
            &defaults,
        )?;
        let tls = match d.tls.as_deref() {
            None | Some("intercept") => TlsMode::Intercept,
            Some("tunnel") => TlsMode::Tunnel,
            Some(other) => {
                return Err(cx.err(
                    format!("{prefix}.tls"),
                    format!("expected \"intercept\" or \"tunnel\", got {other:?}"),
                ))
            }
        };
        let upstream_protocol = match d.upstream_protocol.as_deref() {
            None | Some("auto") => UpstreamProtocol::Auto,
            Some("http1") => UpstreamProtocol::Http1,
            Some("h2") => UpstreamProtocol::H2,
            Some(other) => {
                return Err(cx.err(
                    format!("{prefix}.upstream_protocol"),
                    format!("expected \"auto\", \"http1\" or \"h2\", got {other:?}"),
                ))
            }
        };
        let region_list = match &d.regions {
            None => vec!["local".to_string()],
            Some(list) => {
                for (i, r) in list.iter().enumerate() {
                    if r != "local" && !regions.contains_key(r) {
                        return Err(cx.err(
                            format!("{prefix}.regions[{i}]"),
                            format!("unknown region {r:?}: define [regions.{r}] or use \"local\""),
                        ));
                    }
                }
                list.clone()
            }
        };
        let retry = match &d.retry {
            Some(r) => Some(retry(cx, &format!("{prefix}.retry"), r, &retry_cfg)?),
            None => None,
        };
        let budget_key = match &d.budget_key {
            Some(v) => Some(budget_key(cx, &format!("{prefix}.budget_key"), v)?),
            None => None,
        };
        if tls == TlsMode::Tunnel && budget_key.as_ref().is_some_and(|k| !k.is_empty()) {
            return Err(cx.err(
                format!("{prefix}.budget_key"),
                "needs the request headers, which tls = \"tunnel\" never sees: remove it or intercept the domain",
            ));
        }
        domains.insert(
            h,
            DomainConfig {
                limits,
                rps_set: d.rps.is_some(),
                max_concurrent_set: d.max_concurrent.is_some(),
                pin: d.pin.unwrap_or(false),
                hold_slot_while_open: d.hold_slot_while_open.unwrap_or(false),
                tls,
                upstream_protocol,
                regions: region_list,
                retry,
                budget_key,
            },
        );
    }

    // [jobs]
    let jobs = JobsConfig {
        retention: dur("jobs.retention", &raw.jobs.retention, 7 * 24 * 3600)?,
        deadline: dur("jobs.deadline", &raw.jobs.deadline, 24 * 3600)?,
        lease: dur("jobs.lease", &raw.jobs.lease, 30)?,
    };

    // [idempotency]
    let idempotency = IdempotencyConfig {
        ttl: dur("idempotency.ttl", &raw.idempotency.ttl, 24 * 3600)?,
        max_stored_body: match &raw.idempotency.max_stored_body {
            Some(v) => size(cx, "idempotency.max_stored_body", v)?,
            None => 10 << 20,
        },
        max_request_body: match &raw.idempotency.max_request_body {
            Some(v) => size(cx, "idempotency.max_request_body", v)?,
            None => 10 << 20,
        },
    };

    // [webhooks]
    if let Some(s) = &raw.webhooks.secret {
        if s.chars().count() < 16 {
            return Err(cx.err("webhooks.secret", "must be at least 16 characters"));
        }
        let max = crate::webhooks::secrets::MAX_SECRET_BYTES;
        if s.len() > max {
            return Err(cx.err(
                "webhooks.secret",
                format!("must be at most {max} bytes (got {})", s.len()),
            ));
        }
    }
    let webhooks = WebhooksConfig {
        secret: raw.webhooks.secret.clone(),
        max_attempts: positive_u32(
            cx,
            "webhooks.max_attempts",
            raw.webhooks.max_attempts.unwrap_or(8),
            1000,
        )?,
        backoff: dur("webhooks.backoff", &raw.webhooks.backoff, 1)?,
        backoff_cap: dur("webhooks.backoff_cap", &raw.webhooks.backoff_cap, 600)?,
    };
    if webhooks.backoff_cap < webhooks.backoff {
        return Err(cx.err(
            "webhooks.backoff_cap",
            format!(
                "must be at least webhooks.backoff ({}), got {}",
                format_duration(webhooks.backoff),
                format_duration(webhooks.backoff_cap)
            ),
        ));
    }

    // [storage]
    let backend = match raw.storage.backend.as_deref() {
        None | Some("embedded") => {
            for (key, set) in [
                ("storage.url", raw.storage.url.is_some()),
                ("storage.url_env", raw.storage.url_env.is_some()),
                ("storage.url_file", raw.storage.url_file.is_some()),
                ("storage.timeout", raw.storage.timeout.is_some()),
                ("storage.prefix", raw.storage.prefix.is_some()),
                ("storage.cluster", raw.storage.cluster.is_some()),
            ] {
                if set {
                    return Err(cx.err(key, "only used with backend = \"redis\""));
                }
            }
            StorageBackend::Embedded
        }
        Some("redis") => StorageBackend::Redis(redis_config(cx, &raw.storage)?),
        Some(other) => {
            return Err(cx.err(
                "storage.backend",
                format!("expected \"embedded\" or \"redis\", got {other:?}"),
            ))
        }
    };

    let (encryption_key, encryption_key_source) = encryption_key(cx, &raw.storage)?;

    let metrics = MetricsConfig {
        max_domains: positive_u32(
            cx,
            "metrics.max_domains",
            raw.metrics.max_domains.unwrap_or(500),
            1_000_000,
        )? as usize,
    };

    let config = Config {
        source: None,
        data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| "./ezthrottle-data".into())),
        proxy,
        control,
        tls,
        resolve,
        limits: LimitsConfig {
            defaults,
            rps_ceiling,
            concurrency_ceiling,
            max_wait_ceiling,
            domains,
            presets: l.presets.unwrap_or(true),
        },
        retry: retry_cfg,
        idempotency,
        jobs,
        webhooks,
        regions,
        storage: StorageConfig {
            backend,
            encryption_key,
            encryption_key_source,
        },
        metrics,
        egress: super::egress::parse(cx, &raw.egress)?,
    };
    cross_checks(cx, &config)?;
    Ok(config)
}

/// `[storage] encryption_key_file` / `encryption_key_env`: the key is read
/// here so a missing file or variable, or a malformed key, is a config error
/// (also for `config check`). An inline `encryption_key` is refused: config
/// files end up in repositories, ConfigMaps and backups.
fn encryption_key(
    cx: &Ctx,
    raw: &RawStorage,
) -> Result<(Option<crate::store::EncryptionKey>, Option<String>), ConfigError> {
    use crate::store::EncryptionKey;
    if raw.encryption_key.is_some() {
        return Err(cx.err(
            "storage.encryption_key",
            "a key must not be written in the config file; put it in a file (encryption_key_file = \"/path\") or an environment variable (encryption_key_env = \"VAR\")",
        ));
    }
    match (&raw.encryption_key_file, &raw.encryption_key_env) {
        (Some(_), Some(_)) => Err(cx.err(
            "storage.encryption_key_file",
            "set either encryption_key_file or encryption_key_env, not both",
        )),
        (Some(path), None) => {
            let key = "storage.encryption_key_file";
            if path.is_empty() {
                return Err(cx.err(key, "must not be empty"));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| cx.err(key, format!("cannot read {path}: {e}")))?;
            let k = EncryptionKey::parse(&text)
                .map_err(|reason| cx.err(key, format!("the key in {path} {reason}")))?;
            Ok((Some(k), Some(format!("file:{path}"))))
        }
        (None, Some(var)) => {
            let key = "storage.encryption_key_env";
            if var.is_empty() {
                return Err(cx.err(key, "must name an environment variable"));
            }
            let text = std::env::var(var).map_err(|e| {
                cx.err(
                    key,
                    format!("environment variable {var} is not usable: {e}"),
                )
            })?;
            let k = EncryptionKey::parse(&text).map_err(|reason| {
                cx.err(
                    key,
                    format!("the key in environment variable {var} {reason}"),
                )
            })?;
            Ok((Some(k), Some(format!("env:{var}"))))
        }
        (None, None) => Ok((None, None)),
    }
}

/// `[storage]` of the Redis backend. The URL may carry a password, so it can
/// come from a file or an environment variable (a Kubernetes Secret) instead
/// of the config file; it is read here so that a missing one is a config
/// error naming the key.
fn redis_config(cx: &Ctx, raw: &RawStorage) -> Result<RedisConfig, ConfigError> {
    let given = [
        raw.url.is_some(),
        raw.url_env.is_some(),
        raw.url_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(cx.err("storage.url", "set only one of url, url_env and url_file"));
    }
    let (key, url, url_source) = if let Some(u) = &raw.url {
        ("storage.url", u.clone(), "config".to_string())
    } else if let Some(var) = &raw.url_env {
        let key = "storage.url_env";
        if var.is_empty() {
            return Err(cx.err(key, "must name an environment variable"));
        }
        let u = std::env::var(var).map_err(|e| {
            cx.err(
                key,
                format!("environment variable {var} is not usable: {e}"),
            )
        })?;
        (key, u.trim().to_string(), format!("env:{var}"))
    } else if let Some(path) = &raw.url_file {
        let key = "storage.url_file";
        if path.is_empty() {
            return Err(cx.err(key, "must not be empty"));
        }
        let u = std::fs::read_to_string(path)
            .map_err(|e| cx.err(key, format!("cannot read {path}: {e}")))?;
        (key, u.trim().to_string(), format!("file:{path}"))
    } else {
        return Err(cx.err(
            "storage.url",
            "is required with backend = \"redis\" (or url_env / url_file)",
        ));
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(cx.err(
            key,
            format!(
                "expected redis://host:port or rediss://..., got {:?}",
                mask_url(&url)
            ),
        ));
    }
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(cx.err(
            key,
            format!(
                "{:?} is not a usable Redis URL: {}",
                mask_url(&url),
                e.category()
            ),
        ));
    }
    let timeout = match &raw.timeout {
        Some(t) => duration(cx, "storage.timeout", t)?,
        None => Duration::from_millis(250),
    };
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        return Err(cx.err(
            "storage.timeout",
            format!(
                "must be between 1ms and 10s, got {}",
                format_duration(timeout)
            ),
        ));
    }
    let prefix = raw.prefix.clone().unwrap_or_else(|| "ezt".to_string());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(cx.err(
            "storage.prefix",
            format!("must be 1-64 letters, digits, '-', '_' or '.', got {prefix:?}"),
        ));
    }
    Ok(RedisConfig {
        url,
        url_source,
        timeout,
        prefix,
        cluster: raw.cluster.unwrap_or(false),
    })
}

fn mask_url(u: &str) -> String {
    // redis://user:password@host — never echo a password.
    match u.split_once('@') {
        Some((_, host)) => format!("****@{host}"),
        None => u.to_string(),
    }
}

/// Rules that involve several keys; re-run after command-line overrides.
pub(super) fn cross_checks(cx: &Ctx, c: &Config) -> Result<(), ConfigError> {
    if !c.control.listen.ip().is_loopback() && c.control.api_keys.is_empty() {
        return Err(cx.err(
            "control.api_keys",
            format!(
                "control.listen {} is not a loopback address: set api keys, or the job and secrets API would be open to the network",
                c.control.listen
            ),
        ));
    }
    if !c.proxy.listen.ip().is_loopback() && c.proxy.allow_clients == default_allow_clients() {
        return Err(cx.err(
            "proxy.allow_clients",
            format!(
                "proxy.listen {} accepts remote connections but allow_clients only allows loopback: list the networks that may use the proxy",
                c.proxy.listen
            ),
        ));
    }
    Ok(())
}
