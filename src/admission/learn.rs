//! Reading an API's own limits from its response headers (SPEC §5).
//!
//! Pure functions: headers in, signals out. What a signal does to a domain
//! is decided in `domain.rs`.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::dialects::{self, Budget};

use crate::wire::{CONCURRENCY_HEADER, RPS_HEADER};

/// Values beyond these are not a limit anyone means: they are ignored
/// rather than clamped (SPEC §5 clamps sane values to the ceilings).
const ABSURD_RPS: f64 = 1e9;
const ABSURD_CONCURRENCY: u64 = 1_000_000;

/// What one response says about its domain's limits.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Signals {
    pub rps: Option<f64>,
    pub max_concurrent: Option<u64>,
    /// Pause the domain for this long from now: a budget at zero
    /// (`Retry-After` on a 429/503, `RateLimit-Remaining: 0`, …).
    pub pause: Option<Duration>,
    /// Why [`Signals::pause`]: the response's status and the budget that
    /// reached zero (`HTTP 429: Retry-After`, `HTTP 200: dialect:ietf
    /// requests budget at 0`), for the status page and the console.
    pub pause_reason: Option<String>,
    /// Every budget the response announced in a vendor dialect
    /// (`dialects.rs`); the domain derives its budget pace from them.
    pub budgets: Vec<Budget>,
    /// Header names whose values were present but unusable.
    pub ignored: Vec<&'static str>,
}

impl Signals {
    pub fn is_empty(&self) -> bool {
        self.rps.is_none()
            && self.max_concurrent.is_none()
            && self.pause.is_none()
            && self.budgets.is_empty()
            && self.ignored.is_empty()
    }
}

/// Read every limit signal from a response: our own `X-EZTHROTTLE-*`
/// limits, and every vendor dialect's budgets (whose pauses — a budget at
/// zero, `Retry-After` — become [`Signals::pause`]).
pub fn read(status: u16, headers: &HeaderMap, now: SystemTime) -> Signals {
    let mut s = Signals::default();
    if let Some(v) = header(headers, &crate::wire::names::RPS) {
        match parse_rps(v) {
            Some(r) => s.rps = Some(r),
            None => s.ignored.push(RPS_HEADER),
        }
    }
    if let Some(v) = header(headers, &crate::wire::names::CONCURRENCY) {
        match parse_concurrency(v) {
            Some(c) => s.max_concurrent = Some(c),
            None => s.ignored.push(CONCURRENCY_HEADER),
        }
    }
    let reading = dialects::read(status, headers, now);
    s.ignored.extend(reading.ignored);
    if let Some((dialects::Pace::PauseFor(d), b)) =
        dialects::governing(&reading.budgets, f64::INFINITY)
    {
        s.pause = Some(d);
        s.pause_reason = Some(pause_reason(status, b));
    }
    s.budgets = reading.budgets;
    s
}

/// `HTTP 429: Retry-After`, `HTTP 200: dialect:openai tokens budget at 0`.
fn pause_reason(status: u16, b: &dialects::Budget) -> String {
    if b.dialect == dialects::Dialect::RetryAfter {
        return format!("HTTP {status}: Retry-After");
    }
    let kind = match b.kind {
        dialects::BudgetKind::Requests => "requests",
        dialects::BudgetKind::Tokens => "tokens",
        dialects::BudgetKind::InputTokens => "input tokens",
        dialects::BudgetKind::OutputTokens => "output tokens",
        dialects::BudgetKind::ContentBytes => "content bytes",
        dialects::BudgetKind::ConcurrentRequests => "concurrent requests",
    };
    let bucket = b
        .bucket
        .as_deref()
        .map(|n| format!(" {n:?}"))
        .unwrap_or_default();
    format!(
        "HTTP {status}: {} {kind} budget{bucket} at 0",
        b.dialect.source()
    )
}

fn header<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    // A value that is not visible ASCII is treated as present-but-unusable.
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"))
}

pub fn parse_rps(v: &str) -> Option<f64> {
    let r: f64 = v.trim().parse().ok()?;
    (r.is_finite() && r > 0.0 && r < ABSURD_RPS).then_some(r)
}

pub fn parse_concurrency(v: &str) -> Option<u64> {
    let c: u64 = v.trim().parse().ok()?;
    (c > 0 && c < ABSURD_CONCURRENCY).then_some(c)
}

/// `Retry-After` (delta seconds, decimals allowed, or an HTTP-date) as a
/// wait: one reading for retries and pauses alike (`dialects.rs`); zero
/// is no wait.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    dialects::parse_retry_after(v.trim(), now).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use crate::testing::headers as h;

    #[test]
    fn reads_rps_and_concurrency_case_insensitively() {
        let s = read(
            200,
            &h(&[
                ("X-EZTHROTTLE-RPS", "0.5"),
                ("x-ezthrottle-max-concurrent", " 7 "),
            ]),
            SystemTime::now(),
        );
        assert_eq!(s.rps, Some(0.5));
        assert_eq!(s.max_concurrent, Some(7));
        assert!(s.ignored.is_empty());
    }

    #[test]
    fn bad_values_are_ignored_and_reported() {
        for bad in [
            "fast",
            "NaN",
            "inf",
            "-infinity",
            "-1",
            "0",
            "0.0",
            "1e300",
            "",
            "1,5",
        ] {
            let s = read(200, &h(&[(RPS_HEADER, bad)]), SystemTime::now());
            assert_eq!(s.rps, None, "{bad}");
            assert_eq!(s.ignored, vec![RPS_HEADER], "{bad}");
        }
        for bad in [
            "two",
            "0",
            "-3",
            "2.5",
            "99999999999",
            "18446744073709551616",
        ] {
            let s = read(200, &h(&[(CONCURRENCY_HEADER, bad)]), SystemTime::now());
            assert_eq!(s.max_concurrent, None, "{bad}");
            assert_eq!(s.ignored, vec![CONCURRENCY_HEADER], "{bad}");
        }
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let now = SystemTime::now();
        assert_eq!(
            read(429, &h(&[("retry-after", "3")]), now).pause,
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            read(503, &h(&[("retry-after", "3")]), now).pause,
            Some(Duration::from_secs(3))
        );
        assert_eq!(read(200, &h(&[("retry-after", "3")]), now).pause, None);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(10));
        let p = read(429, &h(&[("retry-after", &date)]), now).pause.unwrap();
        assert!(
            p > Duration::from_secs(8) && p <= Duration::from_secs(10),
            "{p:?}"
        );
        for bad in ["soon", "-5", "999999999", "Wed, 99 Foo 2020 00:00:00 GMT"] {
            let s = read(429, &h(&[("retry-after", bad)]), now);
            assert_eq!(s.pause, None, "{bad}");
            assert_eq!(s.ignored, vec!["retry-after"], "{bad}");
        }
        // Zero is a valid "retry now": no pause, nothing ignored.
        let s = read(429, &h(&[("retry-after", "0")]), now);
        assert_eq!((s.pause, s.ignored.len()), (None, 0));
    }

    #[test]
    fn a_pause_says_why() {
        let now = SystemTime::now();
        let s = read(429, &h(&[("retry-after", "3")]), now);
        assert_eq!(s.pause_reason.as_deref(), Some("HTTP 429: Retry-After"));
        let s = read(
            200,
            &h(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "4")]),
            now,
        );
        assert_eq!(
            s.pause_reason.as_deref(),
            Some("HTTP 200: dialect:ietf requests budget at 0")
        );
        assert_eq!(read(200, &h(&[]), now).pause_reason, None);
    }

    #[test]
    fn ratelimit_remaining_zero_pauses_until_reset() {
        let now = SystemTime::now();
        let s = read(
            200,
            &h(&[("RateLimit-Remaining", "0"), ("RateLimit-Reset", "4")]),
            now,
        );
        assert_eq!(s.pause, Some(Duration::from_secs(4)));
        let s = read(
            200,
            &h(&[("RateLimit-Remaining", "3"), ("RateLimit-Reset", "4")]),
            now,
        );
        assert_eq!(s.pause, None);
        let epoch = (now + Duration::from_secs(6))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let s = read(
            200,
            &h(&[
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", &epoch.to_string()),
            ]),
            now,
        );
        let p = s.pause.unwrap();
        assert!(
            p > Duration::from_secs(4) && p <= Duration::from_secs(6),
            "{p:?}"
        );
        // Past the platform's time range: ignored, never a panic.
        for huge in [
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
        ] {
            for (rem, reset) in [
                ("X-RateLimit-Remaining", "X-RateLimit-Reset"),
                ("RateLimit-Remaining", "RateLimit-Reset"),
            ] {
                let s = read(
                    429,
                    &h(&[(rem, "0"), (reset, huge), ("Retry-After", huge)]),
                    now,
                );
                assert_eq!(s.pause, None, "{huge}");
                assert_eq!(s.ignored.len(), 2, "{huge}: {:?}", s.ignored);
            }
        }
        let s = read(200, &h(&[("X-RateLimit-Remaining", "zero")]), now);
        assert_eq!(s.ignored, vec!["x-ratelimit-remaining"]);
        let s = read(
            200,
            &h(&[("RateLimit-Remaining", "0"), ("RateLimit-Reset", "later")]),
            now,
        );
        assert_eq!((s.pause, s.ignored), (None, vec!["ratelimit-reset"]));
    }
}
