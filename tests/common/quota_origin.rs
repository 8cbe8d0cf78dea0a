//! An API that enforces a quota the way a vendor does (issue 13): a
//! plain-HTTP origin on loopback that counts requests per `Host` (and, when
//! a credential header is configured, per value of that header), answers
//! 429 past the quota with that vendor's `Retry-After` style, and sends the
//! chosen dialect's rate-limit headers on every response (200 and 429).
//!
//! Algorithms:
//! - [`Algorithm::FixedWindow`]: `limit` admitted requests per window; a
//!   key's first request opens its window, and windows follow each other
//!   back to back from there (`start + k * window`), so a test shorter than
//!   the window never crosses a boundary;
//! - [`Algorithm::SlidingWindow`]: `limit` admitted requests over the last
//!   `window` (a sliding log);
//! - [`Algorithm::LeakyBucket`]: a bucket of `limit` that drains
//!   `drain_per_sec`; a request that would overflow it gets 429.
//!
//! Rejected requests do not count against the quota (they are recorded as
//! arrivals with status 429).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

/// How the quota is enforced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    FixedWindow,
    SlidingWindow,
    /// `Quota::limit` is the bucket's size; `Quota::window` is not used.
    LeakyBucket {
        drain_per_sec: f64,
    },
}

/// Which vendor's headers every response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `RateLimit-Policy: "default";q=L;w=W` and `RateLimit: "default";r=R;t=T`.
    IetfStructured,
    /// `RateLimit-Limit` / `-Remaining` / `-Reset` (delta seconds).
    IetfTrio,
    /// `X-RateLimit-Limit/-Remaining/-Used/-Reset` (epoch seconds) and
    /// `X-RateLimit-Resource: core`.
    GitHub,
    /// `x-ratelimit-{limit,remaining,reset}-requests`, reset a Go duration;
    /// 429 adds `retry-after-ms`.
    OpenAi,
    /// `anthropic-ratelimit-requests-{limit,remaining,reset}`, reset RFC 3339.
    Anthropic,
    /// `X-Shopify-Shop-Api-Call-Limit: used/size`; 429 `Retry-After: 2.0`
    /// style (one decimal).
    Shopify,
    /// `X-RateLimit-Limit/-Remaining/-Reset` (float epoch), `-Reset-After`
    /// (float seconds), `-Bucket`; 429 adds `X-RateLimit-Scope: user` and a
    /// JSON body with `retry_after`.
    Discord,
}

/// Every dialect, for tests that go over all of them.
pub const ALL_DIALECTS: [Dialect; 7] = [
    Dialect::IetfStructured,
    Dialect::IetfTrio,
    Dialect::GitHub,
    Dialect::OpenAi,
    Dialect::Anthropic,
    Dialect::Shopify,
    Dialect::Discord,
];

/// The bucket name sent in IETF policies, GitHub's resource, Discord's bucket.
pub const BUCKET: &str = "core";

#[derive(Debug, Clone)]
pub struct Quota<'a> {
    pub algorithm: Algorithm,
    /// Requests per window (fixed/sliding) or the bucket's size (leaky).
    pub limit: u64,
    pub window: Duration,
    pub dialect: Dialect,
    /// A request header (e.g. `authorization`, `x-api-key`) whose value
    /// splits budgets; a request without it shares the `""` budget.
    pub credential_header: Option<&'a str>,
}

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub host: String,
    /// The credential header's value, `""` when absent or not configured.
    pub credential: String,
    pub path: String,
    pub status: u16,
    /// What was left of the budget after this request.
    pub remaining: u64,
    pub at: Instant,
}

/// Where a run's time went, for a failure message: requests admitted in
/// each of the first `windows` windows and when every refusal came
/// (seconds), both counted from the first arrival.
pub fn per_window(
    arrivals: &[Arrival],
    window: Duration,
    windows: u32,
) -> (Vec<usize>, Vec<String>) {
    let Some(first) = arrivals.first().map(|a| a.at) else {
        return (vec![0; windows as usize], Vec::new());
    };
    let admitted = (0..windows)
        .map(|k| {
            arrivals
                .iter()
                .filter(|a| a.status == 200)
                .filter(|a| {
                    let t = a.at.saturating_duration_since(first);
                    t >= window * k && t < window * (k + 1)
                })
                .count()
        })
        .collect();
    let refused = arrivals
        .iter()
        .filter(|a| a.status == 429)
        .map(|a| {
            format!(
                "{:.2}s",
                a.at.saturating_duration_since(first).as_secs_f64()
            )
        })
        .collect();
    (admitted, refused)
}

/// The budget state a response describes.
#[derive(Debug, Clone, Copy)]
struct Status {
    limit: u64,
    remaining: u64,
    /// Until the whole quota is restored.
    reset_in: Duration,
    /// On 429: until one request would be admitted.
    retry_after: Duration,
}

enum KeyState {
    Fixed { start: Instant, used: u64 },
    Sliding { admitted: VecDeque<Instant> },
    Leaky { level: f64, at: Instant },
}

struct Config {
    algorithm: Algorithm,
    limit: u64,
    window: Duration,
    dialect: Dialect,
    credential_header: Option<String>,
    /// How long an answer takes after the request was counted.
    latency: Duration,
}

#[derive(Default)]
struct State {
    keys: HashMap<(String, String), KeyState>,
    arrivals: Vec<Arrival>,
}

pub struct QuotaOrigin {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: super::serve::Loopback,
}

impl QuotaOrigin {
    pub fn start(quota: Quota<'_>) -> QuotaOrigin {
        Self::start_with_latency(quota, Duration::ZERO)
    }

    /// An API that counts a request when it arrives and answers `latency`
    /// later: several requests are on their way at once, as with a real
    /// API across a network. Its `remaining` is as of the arrival (what the
    /// limiter counted then), its reset as of the answer (as an absolute
    /// reset time, GitHub's epoch, always is): the remaining lags the
    /// requests sent meanwhile, the time left does not.
    pub fn start_with_latency(quota: Quota<'_>, latency: Duration) -> QuotaOrigin {
        assert!(quota.limit > 0, "a quota of 0 admits nothing");
        if let Algorithm::LeakyBucket { drain_per_sec } = quota.algorithm {
            assert!(
                drain_per_sec.is_finite() && drain_per_sec > 0.0,
                "leaky bucket drain must be a positive rate"
            );
        } else {
            assert!(!quota.window.is_zero(), "a window must not be empty");
        }
        let config = Arc::new(Config {
            algorithm: quota.algorithm,
            limit: quota.limit,
            window: quota.window,
            dialect: quota.dialect,
            credential_header: quota.credential_header.map(|h| h.to_ascii_lowercase()),
            latency,
        });
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let server = super::serve::Loopback::new("quota origin");
        let addr = server.serve(super::serve::Listen::plain(), move |req| {
            handle(req, st.clone(), config.clone())
        });
        QuotaOrigin {
            addr,
            state,
            _server: server,
        }
    }

    /// `http://<host>:<port><path_and_query>`; `host` must be mapped to
    /// 127.0.0.1 in the proxy's `[resolve]`.
    pub fn url(&self, host: &str, path_and_query: &str) -> String {
        format!("http://{host}:{}{path_and_query}", self.addr.port())
    }

    /// Requests to `host`, in the order they were decided.
    pub fn arrivals(&self, host: &str) -> Vec<Arrival> {
        let st = self.state.lock().expect("state");
        st.arrivals
            .iter()
            .filter(|a| a.host == host)
            .cloned()
            .collect()
    }

    fn count(&self, host: &str, credential: Option<&str>, status: u16) -> usize {
        let st = self.state.lock().expect("state");
        st.arrivals
            .iter()
            .filter(|a| {
                a.host == host && a.status == status && credential.is_none_or(|c| a.credential == c)
            })
            .count()
    }

    pub fn count_ok(&self, host: &str) -> usize {
        self.count(host, None, 200)
    }

    pub fn count_429(&self, host: &str) -> usize {
        self.count(host, None, 429)
    }

    /// Admitted requests to `host` carrying `credential` (`""`: none).
    pub fn count_ok_for(&self, host: &str, credential: &str) -> usize {
        self.count(host, Some(credential), 200)
    }

    pub fn count_429_for(&self, host: &str, credential: &str) -> usize {
        self.count(host, Some(credential), 429)
    }
}

/// Decide one request for a key: admit (and count it) or refuse, and the
/// budget state after the decision.
fn decide(cfg: &Config, key: &mut KeyState, now: Instant) -> (bool, Status) {
    let limit = cfg.limit;
    match key {
        KeyState::Fixed { start, used } => {
            let elapsed = now.saturating_duration_since(*start);
            if elapsed >= cfg.window {
                // Move to the boundary of the window `now` falls in.
                let k = (elapsed.as_nanos() / cfg.window.as_nanos()) as u32;
                *start += cfg.window * k;
                *used = 0;
            }
            let ok = *used < limit;
            if ok {
                *used += 1;
            }
            let reset_in = (*start + cfg.window).saturating_duration_since(now);
            (
                ok,
                Status {
                    limit,
                    remaining: limit - *used,
                    reset_in,
                    retry_after: reset_in,
                },
            )
        }
        KeyState::Sliding { admitted } => {
            while admitted
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= cfg.window)
            {
                admitted.pop_front();
            }
            let ok = (admitted.len() as u64) < limit;
            if ok {
                admitted.push_back(now);
            }
            let until = |t: &Instant| (*t + cfg.window).saturating_duration_since(now);
            (
                ok,
                Status {
                    limit,
                    remaining: limit - admitted.len() as u64,
                    // Every admitted request has left the window.
                    reset_in: admitted.back().map(until).unwrap_or_default(),
                    // The oldest one has.
                    retry_after: admitted.front().map(until).unwrap_or_default(),
                },
            )
        }
        KeyState::Leaky { level, at } => {
            let Algorithm::LeakyBucket { drain_per_sec } = cfg.algorithm else {
                unreachable!("leaky state without a leaky algorithm");
            };
            let drained = now.saturating_duration_since(*at).as_secs_f64() * drain_per_sec;
            *level = (*level - drained).max(0.0);
            *at = now;
            let size = limit as f64;
            let ok = *level + 1.0 <= size;
            if ok {
                *level += 1.0;
            }
            let used = (level.ceil() as u64).min(limit);
            let secs = |x: f64| {
                Duration::try_from_secs_f64((x / drain_per_sec).max(0.0)).unwrap_or_default()
            };
            (
                ok,
                Status {
                    limit,
                    remaining: limit - used,
                    reset_in: secs(*level),
                    retry_after: secs(*level + 1.0 - size),
                },
            )
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Go's `time.Duration.String()` at millisecond precision (rounded up):
/// `0s`, `12ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{frac:03}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

/// The dialect's headers (and, on 429, its `Retry-After` style).
fn dialect_headers(
    dialect: Dialect,
    window: Duration,
    st: Status,
    refused: bool,
) -> Vec<(&'static str, String)> {
    let Status {
        limit,
        remaining,
        reset_in,
        retry_after,
    } = st;
    let wall = SystemTime::now();
    let epoch = |d: Duration| {
        (wall + d)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    let mut h: Vec<(&'static str, String)> = Vec::new();
    match dialect {
        Dialect::IetfStructured => {
            h.push((
                "ratelimit-policy",
                format!("\"{BUCKET}\";q={limit};w={}", ceil_secs(window).max(1)),
            ));
            h.push((
                "ratelimit",
                format!("\"{BUCKET}\";r={remaining};t={}", ceil_secs(reset_in)),
            ));
            if refused {
                h.push(("retry-after", ceil_secs(retry_after).to_string()));
            }
        }
        Dialect::IetfTrio => {
            h.push(("ratelimit-limit", limit.to_string()));
            h.push(("ratelimit-remaining", remaining.to_string()));
            h.push(("ratelimit-reset", ceil_secs(reset_in).to_string()));
            if refused {
                h.push(("retry-after", ceil_secs(retry_after).to_string()));
            }
        }
        Dialect::GitHub => {
            h.push(("x-ratelimit-limit", limit.to_string()));
            h.push(("x-ratelimit-remaining", remaining.to_string()));
            h.push(("x-ratelimit-used", (limit - remaining).to_string()));
            h.push((
                "x-ratelimit-reset",
                (epoch(reset_in).ceil() as u64).to_string(),
            ));
            h.push(("x-ratelimit-resource", BUCKET.to_string()));
            if refused {
                h.push(("retry-after", ceil_secs(retry_after).to_string()));
            }
        }
        Dialect::OpenAi => {
            h.push(("x-ratelimit-limit-requests", limit.to_string()));
            h.push(("x-ratelimit-remaining-requests", remaining.to_string()));
            h.push(("x-ratelimit-reset-requests", go_duration(reset_in)));
            if refused {
                h.push(("retry-after", ceil_secs(retry_after).to_string()));
                h.push((
                    "retry-after-ms",
                    format!("{:.1}", retry_after.as_secs_f64() * 1000.0),
                ));
            }
        }
        Dialect::Anthropic => {
            // Whole seconds, rounded up, as Anthropic sends them.
            let secs = ceil_secs(reset_in);
            let reset =
                UNIX_EPOCH + Duration::from_secs(epoch(Duration::ZERO).ceil() as u64 + secs);
            h.push(("anthropic-ratelimit-requests-limit", limit.to_string()));
            h.push((
                "anthropic-ratelimit-requests-remaining",
                remaining.to_string(),
            ));
            h.push((
                "anthropic-ratelimit-requests-reset",
                humantime::format_rfc3339_seconds(reset).to_string(),
            ));
            if refused {
                h.push(("retry-after", ceil_secs(retry_after).to_string()));
            }
        }
        Dialect::Shopify => {
            h.push((
                "x-shopify-shop-api-call-limit",
                format!("{}/{limit}", limit - remaining),
            ));
            if refused {
                h.push((
                    "retry-after",
                    format!("{:.1}", (retry_after.as_secs_f64() * 10.0).ceil() / 10.0),
                ));
            }
        }
        Dialect::Discord => {
            h.push(("x-ratelimit-limit", limit.to_string()));
            h.push(("x-ratelimit-remaining", remaining.to_string()));
            h.push(("x-ratelimit-reset", format!("{:.3}", epoch(reset_in))));
            h.push((
                "x-ratelimit-reset-after",
                format!("{:.3}", reset_in.as_secs_f64()),
            ));
            h.push(("x-ratelimit-bucket", BUCKET.to_string()));
            if refused {
                h.push(("x-ratelimit-scope", "user".to_string()));
                h.push(("retry-after", ceil_secs(retry_after).to_string()));
            }
        }
    }
    h
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    cfg: Arc<Config>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase())
        .unwrap_or_default();
    let credential = cfg
        .credential_header
        .as_deref()
        .and_then(|name| req.headers().get(name))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    // Read the request body like a real API (an unread body makes hyper
    // close the connection, staling pooled connections).
    let _ = req.into_body().collect().await;
    let (ok, st) = {
        let mut s = state.lock().expect("state");
        let now = Instant::now();
        let key = s
            .keys
            .entry((host.clone(), credential.clone()))
            .or_insert_with(|| match cfg.algorithm {
                Algorithm::FixedWindow => KeyState::Fixed {
                    start: now,
                    used: 0,
                },
                Algorithm::SlidingWindow => KeyState::Sliding {
                    admitted: VecDeque::new(),
                },
                Algorithm::LeakyBucket { .. } => KeyState::Leaky {
                    level: 0.0,
                    at: now,
                },
            });
        let (ok, st) = decide(&cfg, key, now);
        s.arrivals.push(Arrival {
            host: host.clone(),
            credential: credential.clone(),
            path,
            status: if ok { 200 } else { 429 },
            remaining: st.remaining,
            at: now,
        });
        (ok, st)
    };
    let mut st = st;
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
        st.reset_in = st.reset_in.saturating_sub(cfg.latency);
        st.retry_after = st.retry_after.saturating_sub(cfg.latency);
    }
    let status = if ok { 200 } else { 429 };
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in dialect_headers(cfg.dialect, cfg.window, st, !ok) {
        resp = resp.header(name, value);
    }
    let body = if ok {
        serde_json::json!({"host": host, "credential": credential, "remaining": st.remaining})
    } else if cfg.dialect == Dialect::Discord {
        serde_json::json!({
            "message": "You are being rate limited.",
            "retry_after": (st.retry_after.as_secs_f64() * 1000.0).ceil() / 1000.0,
            "global": false,
        })
    } else {
        serde_json::json!({"error": {"type": "rate_limit_exceeded", "host": host}})
    };
    Ok(resp
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad header")))))
}
