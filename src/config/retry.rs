//! `[retry]` and per-domain retry tables (SPEC §7).

use super::load::{size, Ctx};
use super::raw::RawRetry;
use super::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub max_reroutes: u32,
    /// Shared, not copied: every request's retry state takes a clone of its
    /// domain's `RetryConfig` (docs/performance.md, "The seventh pass").
    pub retry_codes: std::sync::Arc<[u16]>,
    pub reroute_codes: std::sync::Arc<[u16]>,
    pub max_buffered_body: u64,
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

pub(super) fn retry(
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
            Some(v) => status_codes(cx, &format!("{key}.retry_codes"), v)?.into(),
            None => base.retry_codes.clone(),
        },
        reroute_codes: match &raw.reroute_codes {
            Some(v) => status_codes(cx, &format!("{key}.reroute_codes"), v)?.into(),
            None => base.reroute_codes.clone(),
        },
        max_buffered_body: match &raw.max_buffered_body {
            Some(v) => size(cx, &format!("{key}.max_buffered_body"), v)?,
            None => base.max_buffered_body,
        },
    })
}

impl Default for RetryConfig {
    /// SPEC §7: 3 retries on 429/503, 2 reroutes on 500/502/504, bodies up
    /// to 1 MiB held for them.
    fn default() -> Self {
        RetryConfig {
            max_retries: 3,
            max_reroutes: 2,
            retry_codes: [429, 503].into(),
            reroute_codes: [500, 502, 504].into(),
            max_buffered_body: 1 << 20,
        }
    }
}

pub(super) fn build(cx: &Ctx, r: &RawRetry) -> Result<RetryConfig, ConfigError> {
    retry(cx, "retry", r, &RetryConfig::default())
}
