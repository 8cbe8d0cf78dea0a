//! `[limits]` and `[limits.domains."host"]`: the pace, concurrency, queue
//! and patience of every domain, and what a domain table adds.

use std::collections::BTreeMap;
use std::time::Duration;

use super::load::{
    duration, format_duration, positive_u32, quoted, valid_host, Ctx, MAX_BUDGET_KEYS,
};
use super::raw::RawLimits;
use super::regions::RegionConfig;
use super::retry::{retry, RetryConfig};
use super::tls::{TlsMode, UpstreamProtocol};
use super::ConfigError;

/// The limits a domain runs with (also the `[limits]` defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainLimits {
    pub rps: f64,
    pub max_concurrent: u32,
    pub burst: u32,
    pub queue_capacity: usize,
    pub max_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// The `[limits]` table: defaults for every domain.
    pub defaults: DomainLimits,
    pub rps_ceiling: f64,
    pub concurrency_ceiling: u32,
    /// Longest max wait a request may ask for with `X-EZThrottle-Max-Wait`
    /// (longer asks are clamped; configured max waits may not exceed it).
    /// Default 1h. Key `max_wait_ceiling`.
    pub max_wait_ceiling: Duration,
    /// `[limits.domains."host"]`, keyed by lower-cased host (exact, or `*.suffix`).
    pub domains: BTreeMap<String, DomainConfig>,
    /// Use the built-in presets (`presets.rs`) for hosts no
    /// `[limits.domains]` table matches; default true. Key `presets`.
    pub presets: bool,
}

/// One `[limits.domains."host"]` table, with `[limits]` defaults already
/// filled in for every key it did not set.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub limits: DomainLimits,
    /// Which limit keys this table set itself (for reporting `source = config`).
    pub rps_set: bool,
    pub max_concurrent_set: bool,
    pub pin: bool,
    /// A tunnel or an upgraded connection keeps its concurrency slot while
    /// open (default: it gives the slot back once established, having
    /// counted against the pace). Key `hold_slot_while_open`.
    pub hold_slot_while_open: bool,
    pub tls: TlsMode,
    pub upstream_protocol: UpstreamProtocol,
    /// Reroute order; default `["local"]`.
    pub regions: Vec<String>,
    /// Per-domain `[limits.domains."x".retry]` override, defaults filled from `[retry]`.
    pub retry: Option<RetryConfig>,
    /// Request headers whose values split this domain's budget (one throttle
    /// per credential). `None`: the table did not set `budget_key`;
    /// `Some(vec![])`: it set `budget_key = []`, one budget for the domain.
    pub budget_key: Option<Vec<http::HeaderName>>,
}

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

pub(super) fn build(
    cx: &Ctx,
    l: &RawLimits,
    retry_cfg: &RetryConfig,
    regions: &BTreeMap<String, RegionConfig>,
) -> Result<LimitsConfig, ConfigError> {
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
            Some(r) => Some(retry(cx, &format!("{prefix}.retry"), r, retry_cfg)?),
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
    Ok(LimitsConfig {
        defaults,
        rps_ceiling,
        concurrency_ceiling,
        max_wait_ceiling,
        domains,
        presets: l.presets.unwrap_or(true),
    })
}
