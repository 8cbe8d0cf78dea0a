//! Parsing and validation: TOML text → `RawConfig` → `Config`. Every error
//! names the file, the dotted key and the reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::*;
use super::*;

pub(super) struct Ctx<'a> {
    pub file: &'a str,
}

impl Ctx<'_> {
    /// A duration key that must be longer than zero; `default_secs` when unset.
    pub fn positive_duration(
        &self,
        key: &str,
        v: &Option<String>,
        default_secs: u64,
    ) -> Result<Duration, ConfigError> {
        let d = match v {
            Some(v) => duration(self, key, v)?,
            None => Duration::from_secs(default_secs),
        };
        if d.is_zero() {
            return Err(self.err(key, "must be longer than 0"));
        }
        Ok(d)
    }

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

pub(super) fn addr(cx: &Ctx, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| {
        cx.err(
            key,
            format!("expected an address like \"127.0.0.1:4000\", got {v:?}"),
        )
    })
}

pub(super) fn positive_u32(cx: &Ctx, key: &str, v: i64, max: u64) -> Result<u32, ConfigError> {
    if v < 1 || v as u64 > max {
        return Err(cx.err(key, format!("must be between 1 and {max}, got {v}")));
    }
    Ok(v as u32)
}

pub(super) fn valid_host(host: &str) -> bool {
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
pub(super) fn nets(cx: &Ctx, key: &str, v: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
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

/// Most entries a `budget_key` list may have: each is one more hash input
/// per request, and no API counts by more than a couple of headers.
pub(super) const MAX_BUDGET_KEYS: usize = 4;

fn build(cx: &Ctx, raw: RawConfig) -> Result<Config, ConfigError> {
    // Each section validates itself beside its struct; what one section
    // needs of another (a domain's retry table, its regions) is passed in.
    let retry = super::retry::build(cx, &raw.retry)?;
    let regions = super::regions::build(cx, &raw.regions)?;
    let config = Config {
        source: None,
        data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| "./ezthrottle-data".into())),
        proxy: super::proxy::build(cx, &raw.proxy)?,
        control: super::control::build(cx, &raw.control)?,
        tls: super::tls::build(cx, &raw.tls)?,
        resolve: super::resolve::build(cx, &raw.resolve)?,
        limits: super::limits::build(cx, &raw.limits, &retry, &regions)?,
        retry,
        idempotency: super::idempotency::build(cx, &raw.idempotency)?,
        jobs: super::jobs::build(cx, &raw.jobs)?,
        webhooks: super::webhooks::build(cx, &raw.webhooks)?,
        regions,
        storage: super::storage::build(cx, &raw.storage)?,
        metrics: super::storage::build_metrics(cx, &raw.metrics)?,
        egress: super::egress::parse(cx, &raw.egress)?,
    };
    cross_checks(cx, &config)?;
    Ok(config)
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
    if !c.proxy.listen.ip().is_loopback()
        && c.proxy.allow_clients == super::proxy::default_allow_clients()
    {
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
