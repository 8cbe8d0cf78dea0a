//! Vendor rate-limit dialects: what an API says about its budget, read from
//! a response's headers into typed [`Budget`]s (issue 13, docs/dialects.md).
//!
//! Pure functions, like `learn.rs`: headers in, budgets out; [`budget_pace`]
//! says what pace a budget implies, and `learn.rs` / `domain.rs` decide what
//! a domain does with it.
//!
//! Every value read is bounded: a value that does not parse, is out of range
//! (negative, NaN, `2^64-1`, a reset in 1970 or in the year 3000), is longer
//! than [`MAX_VALUE_LEN`], is not visible ASCII, or is repeated with
//! different values is ignored and its header name listed in
//! [`Reading::ignored`]. Nothing here unwraps input.
//!
//! Why hand-written rather than the `rate-limits` crate: that crate returns
//! one budget per response and picks a single vendor, so it cannot express
//! OpenAI's or Anthropic's parallel request/token budgets, and it has no
//! Shopify leaky bucket, no Discord `Reset-After`/`Bucket`, no IETF
//! structured `RateLimit`/`RateLimit-Policy` lists; its public API also
//! changed shape in each recent minor release, and it brings in the
//! `headers` and `once_cell` crates. The structured IETF fields are parsed
//! with `sfv` (RFC 8941), which this build already compiles for pingora.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// Longest header value read; longer ones are ignored (a 10 KB value is an
/// attack or a bug, not a budget).
pub const MAX_VALUE_LEN: usize = 1024;
/// Longest bucket / policy / resource name kept (Discord buckets are short
/// hashes, GitHub resources short words); longer ones are ignored.
pub const MAX_BUCKET_LEN: usize = 64;
/// Counts at or above this are not a budget anyone means (OpenAI's largest
/// published token limits are around 1e10).
pub const ABSURD_COUNT: u64 = 1_000_000_000_000_000;
/// A reset more than a day away is a broken header, not a plan (as
/// `learn.rs`'s longest pause).
pub const MAX_RESET: Duration = Duration::from_secs(24 * 3600);
/// A reset timestamp up to this far in the past is clock skew: the window
/// has just reset (`reset_in` = 0). Further in the past it is ignored.
pub const PAST_SKEW: Duration = Duration::from_secs(300);
/// `X-RateLimit-Reset` (and the IETF trio's `RateLimit-Reset`) below this is
/// delta seconds; from here up to [`EPOCH_MS_THRESHOLD`] epoch seconds
/// (2001-09-09 onwards, GitHub, X, Discord). Same value as `learn.rs`.
pub const EPOCH_THRESHOLD: f64 = 1e9;
/// From here up to [`EPOCH_ABSURD`] the reset is epoch milliseconds; above
/// that (microseconds, nanoseconds, garbage) it is ignored.
pub const EPOCH_MS_THRESHOLD: f64 = 1e12;
pub const EPOCH_ABSURD: f64 = 1e15;
/// The slowest pace [`budget_pace`] returns: one request a day (a budget
/// with one request left and the longest accepted reset).
pub const MIN_RPS: f64 = 1.0 / 86_400.0;
/// Shopify's documented REST plans all drain a full bucket in 20 s:
/// 40 → 2/s (standard), 80 → 4/s (Advanced), 400 → 20/s (Plus).
pub const SHOPIFY_DRAIN_SECS: f64 = 20.0;

/// Which convention a budget was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `RateLimit-Limit` / `-Remaining` / `-Reset` (IETF drafts 00–06).
    Ietf,
    /// `RateLimit-Policy` / `RateLimit` structured lists (IETF draft 07+).
    IetfStructured,
    /// `X-RateLimit-*` (GitHub, GitLab, X's `x-rate-limit-*`, many others).
    XRateLimit,
    OpenAi,
    Anthropic,
    Shopify,
    Discord,
    /// `Retry-After` / `retry-after-ms` on a 429 or 503.
    RetryAfter,
}

impl Dialect {
    /// Every dialect, so tables naming one (the presets) can be checked
    /// against the real set instead of a copy that drifts.
    pub const ALL: [Dialect; 8] = [
        Dialect::Ietf,
        Dialect::IetfStructured,
        Dialect::XRateLimit,
        Dialect::OpenAi,
        Dialect::Anthropic,
        Dialect::Shopify,
        Dialect::Discord,
        Dialect::RetryAfter,
    ];

    /// The `source` label shown for a limit learned from this dialect.
    pub fn source(&self) -> &'static str {
        match self {
            Dialect::Ietf => "dialect:ietf",
            Dialect::IetfStructured => "dialect:ietf-structured",
            Dialect::XRateLimit => "dialect:x-ratelimit",
            Dialect::OpenAi => "dialect:openai",
            Dialect::Anthropic => "dialect:anthropic",
            Dialect::Shopify => "dialect:shopify",
            Dialect::Discord => "dialect:discord",
            Dialect::RetryAfter => "dialect:retry-after",
        }
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
    /// IETF `qu="content-bytes"`.
    ContentBytes,
    /// IETF `qu="concurrent-requests"`.
    ConcurrentRequests,
}

/// One budget an API announced.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub dialect: Dialect,
    pub kind: BudgetKind,
    /// The quota of the window (or the leaky bucket's size).
    pub limit: Option<u64>,
    /// What is left of it; never above `limit` when both are known.
    pub remaining: Option<u64>,
    /// Time from `now` until the quota is restored; zero: it just was.
    pub reset_in: Option<Duration>,
    /// The window's length, when the API says it (IETF `w`, `RateLimit-Limit`
    /// `;w=`).
    pub window: Option<Duration>,
    /// GitHub `X-RateLimit-Resource`, Discord `X-RateLimit-Bucket`, IETF
    /// policy name: at most [`MAX_BUCKET_LEN`] visible ASCII characters.
    pub bucket: Option<String>,
    /// Leaky bucket (Shopify): requests drained per second. The header does
    /// not say it; it is assumed from the documented plans (size / 20 s).
    pub drain_per_sec: Option<f64>,
    /// Discord: the limit is global (`X-RateLimit-Global: true` or
    /// `X-RateLimit-Scope: global`), not per route.
    pub global: bool,
}

impl Budget {
    pub(crate) fn new(dialect: Dialect, kind: BudgetKind) -> Budget {
        Budget {
            dialect,
            kind,
            limit: None,
            remaining: None,
            reset_in: None,
            window: None,
            bucket: None,
            drain_per_sec: None,
            global: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset_in.is_none()
    }
}

/// Everything one response says about its budgets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub budgets: Vec<Budget>,
    /// Header names (lowercase) whose values were present but unusable,
    /// each listed once.
    pub ignored: Vec<&'static str>,
}

impl Reading {
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty() && self.ignored.is_empty()
    }
}

/// What a budget means for the pace of the next requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Requests per second that spend the remaining budget evenly.
    Rate(f64),
    /// Nothing is left: wait this long.
    PauseFor(Duration),
    Unknown,
}

/// Share of a *sustained* rate (`limit / window`, a token bucket's refill)
/// that is paced. Starts the proxy spaces exactly can reach the origin a
/// little closer together (network jitter), and a window's boundary as the
/// origin counts it is not exactly where its headers said: pacing the full
/// sustained rate would meet the limit head-on now and then.
pub const SUSTAINED_SHARE: f64 = 0.95;

/// OpenAI's and Anthropic's request and token limits are per minute (their
/// rate-limit guides: RPM, TPM); the headers do not say it.
pub const BUCKET_WINDOW: Duration = Duration::from_secs(60);

impl Dialect {
    /// Token buckets refill continuously and say, as their reset, when they
    /// will be *full* again (OpenAI, Anthropic). Every other dialect counts
    /// in windows that restore the whole quota at the reset.
    pub fn refills_continuously(&self) -> bool {
        matches!(self, Dialect::OpenAi | Dialect::Anthropic)
    }
}

/// The pace a budget implies:
/// - `remaining == 0`: pause until the reset (leaky bucket: until one
///   request drains, `1 / drain_per_sec`); unknown without a reset;
/// - token, byte and concurrency budgets give no rate (a request's cost in
///   them is unknown here), only the pause at zero;
/// - a leaky bucket runs at its drain rate;
/// - otherwise the faster of *even* — `remaining / reset_in`, what is left
///   spent evenly until the reset — and [`SUSTAINED_SHARE`] of the
///   *sustained* rate — `limit / window` when the window is known, or a
///   token bucket's refill `(limit - remaining) / reset_in`. Even alone
///   would fall to half the quota on a sliding window or a token bucket
///   (there `remaining` stays near zero at a steady pace while the reset
///   stays a whole window away); the sustained rate alone would spend a
///   fixed window's leftover too slowly. Whichever wins, a budget that
///   reaches 0 pauses until its reset, so the API never has to say 429;
/// - clamped to `[MIN_RPS, ceiling_rps]` (a ceiling that is not a positive
///   finite number is no ceiling).
pub fn budget_pace(b: &Budget, ceiling_rps: f64) -> Pace {
    let clamp = |r: f64| {
        let r = r.max(MIN_RPS);
        if ceiling_rps.is_finite() && ceiling_rps > 0.0 {
            r.min(ceiling_rps)
        } else {
            r
        }
    };
    let drain = b.drain_per_sec.filter(|d| d.is_finite() && *d > 0.0);
    if b.remaining == Some(0) {
        if let Some(d) = drain {
            return Duration::try_from_secs_f64(1.0 / d)
                .ok()
                .filter(|p| !p.is_zero() && *p <= MAX_RESET)
                .map_or(Pace::Unknown, Pace::PauseFor);
        }
        return match b.reset_in {
            // A token bucket's reset is when it is full again; one request
            // is back after a limit-th of that.
            // Tokens: a request's cost is unknown, so the whole reset.
            Some(d)
                if !d.is_zero()
                    && b.dialect.refills_continuously()
                    && b.kind == BudgetKind::Requests =>
            {
                let one = b
                    .limit
                    .filter(|l| *l > 0)
                    .map_or(d, |l| d / l.min(u32::MAX as u64) as u32);
                Pace::PauseFor(one.max(Duration::from_millis(1)))
            }
            Some(d) if !d.is_zero() => Pace::PauseFor(d),
            _ => Pace::Unknown,
        };
    }
    if b.kind != BudgetKind::Requests {
        return Pace::Unknown;
    }
    if let Some(d) = drain {
        return Pace::Rate(clamp(d));
    }
    let reset = b.reset_in.filter(|d| !d.is_zero()).map(|d| d.as_secs_f64());
    // A bucket has no deadline to spend its content by: its reset is when it
    // is full again, and what is left is a burst allowance, not a budget
    // to spread.
    let even = b
        .remaining
        .zip(reset)
        .filter(|_| !b.dialect.refills_continuously())
        .map(|(r, d)| r as f64 / d);
    let by_window = match (b.limit, b.window) {
        (Some(l), Some(w)) if l > 0 && !w.is_zero() => Some(l as f64 / w.as_secs_f64()),
        _ => None,
    };
    let refill = match (b.limit, b.remaining, reset) {
        (Some(l), Some(r), Some(d)) if b.dialect.refills_continuously() && l > r => {
            Some((l - r) as f64 / d)
        }
        _ => None,
    };
    let sustained = by_window.or(refill).map(|s| s * SUSTAINED_SHARE);
    match (even, sustained) {
        (Some(e), Some(s)) => Pace::Rate(clamp(e.max(s))),
        (Some(r), None) | (None, Some(r)) => Pace::Rate(clamp(r)),
        (None, None) => Pace::Unknown,
    }
}

/// The strictest pace over several budgets and the budget it comes from:
/// the longest pause if any, else the slowest rate, else none.
pub fn governing<'a>(
    budgets: impl IntoIterator<Item = &'a Budget>,
    ceiling_rps: f64,
) -> Option<(Pace, &'a Budget)> {
    let mut pause: Option<(Duration, &Budget)> = None;
    let mut rate: Option<(f64, &Budget)> = None;
    for b in budgets {
        match budget_pace(b, ceiling_rps) {
            Pace::PauseFor(d) if pause.is_none_or(|(p, _)| d > p) => pause = Some((d, b)),
            Pace::Rate(r) if rate.is_none_or(|(x, _)| r < x) => rate = Some((r, b)),
            _ => {}
        }
    }
    match (pause, rate) {
        (Some((d, b)), _) => Some((Pace::PauseFor(d), b)),
        (None, Some((r, b))) => Some((Pace::Rate(r), b)),
        (None, None) => None,
    }
}

/// [`governing`]'s pace alone.
pub fn strictest<'a>(budgets: impl IntoIterator<Item = &'a Budget>, ceiling_rps: f64) -> Pace {
    governing(budgets, ceiling_rps).map_or(Pace::Unknown, |(p, _)| p)
}

/// Every header name this module reads (lowercase).
pub const HEADER_NAMES: &[&str] = &[
    IETF_POLICY,
    IETF_RATELIMIT,
    IETF_LIMIT,
    IETF_REMAINING,
    IETF_RESET,
    X_LIMIT,
    X_REMAINING,
    X_RESET,
    X_USED,
    X_RESOURCE,
    X2_LIMIT,
    X2_REMAINING,
    X2_RESET,
    DISCORD_RESET_AFTER,
    DISCORD_BUCKET,
    DISCORD_GLOBAL,
    DISCORD_SCOPE,
    SHOPIFY,
    RETRY_AFTER,
    RETRY_AFTER_MS,
    OPENAI[0].limit,
    OPENAI[0].remaining,
    OPENAI[0].reset,
    OPENAI[1].limit,
    OPENAI[1].remaining,
    OPENAI[1].reset,
    ANTHROPIC[0].limit,
    ANTHROPIC[0].remaining,
    ANTHROPIC[0].reset,
    ANTHROPIC[1].limit,
    ANTHROPIC[1].remaining,
    ANTHROPIC[1].reset,
    ANTHROPIC[2].limit,
    ANTHROPIC[2].remaining,
    ANTHROPIC[2].reset,
    ANTHROPIC[3].limit,
    ANTHROPIC[3].remaining,
    ANTHROPIC[3].reset,
];

const IETF_POLICY: &str = "ratelimit-policy";
const IETF_RATELIMIT: &str = "ratelimit";
const IETF_LIMIT: &str = "ratelimit-limit";
const IETF_REMAINING: &str = "ratelimit-remaining";
const IETF_RESET: &str = "ratelimit-reset";
const X_LIMIT: &str = "x-ratelimit-limit";
const X_REMAINING: &str = "x-ratelimit-remaining";
const X_RESET: &str = "x-ratelimit-reset";
const X_USED: &str = "x-ratelimit-used";
const X_RESOURCE: &str = "x-ratelimit-resource";
/// X (Twitter) spells them `x-rate-limit-*`.
const X2_LIMIT: &str = "x-rate-limit-limit";
const X2_REMAINING: &str = "x-rate-limit-remaining";
const X2_RESET: &str = "x-rate-limit-reset";
const DISCORD_RESET_AFTER: &str = "x-ratelimit-reset-after";
const DISCORD_BUCKET: &str = "x-ratelimit-bucket";
const DISCORD_GLOBAL: &str = "x-ratelimit-global";
const DISCORD_SCOPE: &str = "x-ratelimit-scope";
const SHOPIFY: &str = "x-shopify-shop-api-call-limit";
const RETRY_AFTER: &str = "retry-after";
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The header names of one (limit, remaining, reset) family.
struct Family {
    kind: BudgetKind,
    limit: &'static str,
    remaining: &'static str,
    reset: &'static str,
}

const OPENAI: [Family; 2] = [
    Family {
        kind: BudgetKind::Requests,
        limit: "x-ratelimit-limit-requests",
        remaining: "x-ratelimit-remaining-requests",
        reset: "x-ratelimit-reset-requests",
    },
    Family {
        kind: BudgetKind::Tokens,
        limit: "x-ratelimit-limit-tokens",
        remaining: "x-ratelimit-remaining-tokens",
        reset: "x-ratelimit-reset-tokens",
    },
];

const ANTHROPIC: [Family; 4] = [
    Family {
        kind: BudgetKind::Requests,
        limit: "anthropic-ratelimit-requests-limit",
        remaining: "anthropic-ratelimit-requests-remaining",
        reset: "anthropic-ratelimit-requests-reset",
    },
    Family {
        kind: BudgetKind::Tokens,
        limit: "anthropic-ratelimit-tokens-limit",
        remaining: "anthropic-ratelimit-tokens-remaining",
        reset: "anthropic-ratelimit-tokens-reset",
    },
    Family {
        kind: BudgetKind::InputTokens,
        limit: "anthropic-ratelimit-input-tokens-limit",
        remaining: "anthropic-ratelimit-input-tokens-remaining",
        reset: "anthropic-ratelimit-input-tokens-reset",
    },
    Family {
        kind: BudgetKind::OutputTokens,
        limit: "anthropic-ratelimit-output-tokens-limit",
        remaining: "anthropic-ratelimit-output-tokens-remaining",
        reset: "anthropic-ratelimit-output-tokens-reset",
    },
];

/// Read every budget a response announces. `status` matters only for
/// `Retry-After` / `retry-after-ms`, read on 429 and 503 alone.
pub fn read(status: u16, headers: &HeaderMap, now: SystemTime) -> Reading {
    // Most responses carry no budget at all: one pass over the names then
    // spares the ~40 look-ups below (each hashes a name parsed anew), which
    // were 5% of the proxy's CPU per request (docs/performance.md).
    if !headers.keys().any(|name| may_announce(name.as_str())) {
        return Reading::default();
    }
    let mut r = Reader {
        headers,
        now,
        out: Reading::default(),
    };
    r.ietf_structured();
    r.ietf_trio();
    if [
        DISCORD_BUCKET,
        DISCORD_RESET_AFTER,
        DISCORD_SCOPE,
        DISCORD_GLOBAL,
    ]
    .iter()
    .any(|n| headers.contains_key(*n))
    {
        r.discord();
    } else {
        r.x_ratelimit(X_LIMIT, X_REMAINING, X_RESET);
        r.x_ratelimit(X2_LIMIT, X2_REMAINING, X2_RESET);
    }
    for f in &OPENAI {
        r.family(Dialect::OpenAi, f, parse_go_duration);
    }
    for f in &ANTHROPIC {
        r.family(Dialect::Anthropic, f, parse_rfc3339_until);
    }
    r.shopify();
    if status == 429 || status == 503 {
        r.retry_after();
    }
    r.out
}

/// Whether a header name can belong to any dialect read here: every name
/// above contains `ratelimit` or `rate-limit`, or is Shopify's call limit,
/// or starts with `retry-after`. (Names in a `HeaderMap` are lower case.)
fn may_announce(name: &str) -> bool {
    // A byte scan instead of `str::contains`, whose searcher set-up cost
    // more than the search on names this short (two per header name, ~2k
    // instructions per response).
    let b = name.as_bytes();
    let rate_limit = (0..b.len().saturating_sub(8)).any(|i| {
        b[i] == b'r' && b[i + 1..].starts_with(b"ate") && {
            let rest = &b[i + 4..];
            rest.starts_with(b"limit") || rest.starts_with(b"-limit")
        }
    });
    rate_limit || name.starts_with(RETRY_AFTER) || name == SHOPIFY
}

/// One header's value, after the checks every value gets.
enum Field<'a> {
    Absent,
    Bad,
    Value(&'a str),
}

/// A header's single value: visible ASCII, at most [`MAX_VALUE_LEN`], and
/// when repeated, repeated identically.
fn field<'a>(headers: &'a HeaderMap, name: &str) -> Field<'a> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Field::Absent;
    };
    if first.len() > MAX_VALUE_LEN || all.any(|v| v.as_bytes() != first.as_bytes()) {
        return Field::Bad;
    }
    match first.to_str() {
        Ok(v) => Field::Value(v.trim()),
        Err(_) => Field::Bad,
    }
}

struct Reader<'a> {
    headers: &'a HeaderMap,
    now: SystemTime,
    out: Reading,
}

impl Reader<'_> {
    fn ignore(&mut self, name: &'static str) {
        if !self.out.ignored.contains(&name) {
            self.out.ignored.push(name);
        }
    }

    /// The header's value through `parse`; present but unusable: ignored.
    fn get<T>(&mut self, name: &'static str, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        match field(self.headers, name) {
            Field::Absent => None,
            Field::Bad => {
                self.ignore(name);
                None
            }
            Field::Value(v) => {
                let t = parse(v);
                if t.is_none() {
                    self.ignore(name);
                }
                t
            }
        }
    }

    fn count(&mut self, name: &'static str) -> Option<u64> {
        self.get(name, parse_count)
    }

    fn reset_by_magnitude(&mut self, name: &'static str) -> Option<Duration> {
        let now = self.now;
        self.get(name, |v| parse_reset_by_magnitude(v, now))
    }

    /// `remaining` above `limit` contradicts itself: the remaining is dropped.
    fn consistent(&mut self, b: &mut Budget, remaining_name: &'static str) {
        if let (Some(l), Some(r)) = (b.limit, b.remaining) {
            if r > l {
                b.remaining = None;
                self.ignore(remaining_name);
            }
        }
    }

    fn push(&mut self, b: Budget) {
        if !b.is_empty() {
            self.out.budgets.push(b);
        }
    }

    fn family(
        &mut self,
        dialect: Dialect,
        f: &Family,
        reset: fn(&str, SystemTime) -> Option<Duration>,
    ) {
        let mut b = Budget::new(dialect, f.kind);
        if dialect.refills_continuously() {
            b.window = Some(BUCKET_WINDOW);
        }
        b.limit = self.count(f.limit);
        b.remaining = self.count(f.remaining);
        let now = self.now;
        b.reset_in = self.get(f.reset, |v| reset(v, now));
        self.consistent(&mut b, f.remaining);
        self.push(b);
    }

    /// `RateLimit-Policy: "burst";q=100;w=60, "day";q=1000;w=86400` and
    /// `RateLimit: "burst";r=42;t=30`, joined by policy name. Draft 06's
    /// `RateLimit-Policy: 100;w=60` (an integer quota, no name) is read too.
    fn ietf_structured(&mut self) {
        let policies = self.structured(IETF_POLICY);
        let limits = self.structured(IETF_RATELIMIT);
        let mut budgets: Vec<Budget> = Vec::new();
        let mut bad_policy = false;
        for item in policies.iter().flatten() {
            match policy_budget(item) {
                Some(b) => budgets.push(b),
                None => bad_policy = true,
            }
        }
        let mut bad_limit = false;
        for item in limits.iter().flatten() {
            let Some((name, remaining, reset_in)) = current_limit(item) else {
                bad_limit = true;
                continue;
            };
            let at = budgets
                .iter()
                .position(|b| b.bucket.is_some() && b.bucket == name);
            let i = match at {
                Some(i) => i,
                None => {
                    let mut b = Budget::new(Dialect::IetfStructured, BudgetKind::Requests);
                    b.bucket = name;
                    budgets.push(b);
                    budgets.len() - 1
                }
            };
            let b = &mut budgets[i];
            b.remaining = remaining;
            b.reset_in = reset_in;
            if let (Some(l), Some(r)) = (b.limit, b.remaining) {
                if r > l {
                    b.remaining = None;
                    bad_limit = true;
                }
            }
        }
        if bad_policy {
            self.ignore(IETF_POLICY);
        }
        if bad_limit {
            self.ignore(IETF_RATELIMIT);
        }
        for b in budgets {
            self.push(b);
        }
    }

    /// A structured list header, its field lines joined (RFC 8941 §3.1).
    fn structured(&mut self, name: &'static str) -> Option<sfv::List> {
        let mut joined = String::new();
        for v in self.headers.get_all(name) {
            let Ok(s) = v.to_str() else {
                self.ignore(name);
                return None;
            };
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(s);
            if joined.len() > MAX_VALUE_LEN {
                self.ignore(name);
                return None;
            }
        }
        if joined.is_empty() {
            return None;
        }
        match sfv::Parser::parse_list(joined.as_bytes()) {
            Ok(list) => Some(list),
            Err(_) => {
                self.ignore(name);
                None
            }
        }
    }

    /// `RateLimit-Limit: 100` (or draft 03's `100, 100;w=60`),
    /// `RateLimit-Remaining: 42`, `RateLimit-Reset: 30` (delta seconds; the
    /// magnitude rule reads any sane delta as a delta).
    fn ietf_trio(&mut self) {
        let mut b = Budget::new(Dialect::Ietf, BudgetKind::Requests);
        if let Some((limit, window)) = self.get(IETF_LIMIT, parse_limit_with_window) {
            b.limit = Some(limit);
            b.window = window;
        }
        b.remaining = self.count(IETF_REMAINING);
        b.reset_in = self.reset_by_magnitude(IETF_RESET);
        self.consistent(&mut b, IETF_REMAINING);
        self.push(b);
    }

    /// GitHub / X / generic `X-RateLimit-*`; `Used` fills a missing
    /// `Remaining`, `Resource` names the bucket.
    fn x_ratelimit(&mut self, limit: &'static str, remaining: &'static str, reset: &'static str) {
        let mut b = Budget::new(Dialect::XRateLimit, BudgetKind::Requests);
        b.limit = self.count(limit);
        b.remaining = self.count(remaining);
        b.reset_in = self.reset_by_magnitude(reset);
        self.consistent(&mut b, remaining);
        if b.is_empty() {
            return;
        }
        if limit == X_LIMIT {
            let used = self.count(X_USED);
            match (b.limit, used) {
                (Some(l), Some(u)) if u > l => self.ignore(X_USED),
                (Some(l), Some(u)) if b.remaining.is_none() => b.remaining = Some(l - u),
                _ => {}
            }
            b.bucket = self.get(X_RESOURCE, parse_bucket);
        }
        self.push(b);
    }

    /// Discord: `X-RateLimit-Reset-After` (float seconds) is preferred to
    /// `X-RateLimit-Reset` (float epoch seconds): no clock skew.
    fn discord(&mut self) {
        let mut b = Budget::new(Dialect::Discord, BudgetKind::Requests);
        b.limit = self.count(X_LIMIT);
        b.remaining = self.count(X_REMAINING);
        let after = self.get(DISCORD_RESET_AFTER, parse_delta_secs);
        let at = self.reset_by_magnitude(X_RESET);
        b.reset_in = after.or(at);
        b.bucket = self.get(DISCORD_BUCKET, parse_bucket);
        let global = self.get(DISCORD_GLOBAL, parse_bool);
        let scope = self.get(DISCORD_SCOPE, |v| {
            let v = v.to_ascii_lowercase();
            ["user", "global", "shared"]
                .contains(&v.as_str())
                .then_some(v == "global")
        });
        b.global = global == Some(true) || scope == Some(true);
        self.consistent(&mut b, X_REMAINING);
        if !b.is_empty() || b.global {
            self.out.budgets.push(b);
        }
    }

    /// `X-Shopify-Shop-Api-Call-Limit: 32/40`: 32 used of a bucket of 40
    /// that drains at an assumed size / [`SHOPIFY_DRAIN_SECS`] per second.
    fn shopify(&mut self) {
        let Some((used, size)) = self.get(SHOPIFY, parse_used_of) else {
            return;
        };
        let mut b = Budget::new(Dialect::Shopify, BudgetKind::Requests);
        b.limit = Some(size);
        b.remaining = Some(size - used);
        b.drain_per_sec = Some(shopify_drain_per_sec(size));
        self.push(b);
    }

    /// `retry-after-ms` (OpenAI, float milliseconds) is preferred to
    /// `Retry-After` (delta seconds, Shopify's `2.0` too, or an HTTP-date).
    fn retry_after(&mut self) {
        let ms = self.get(RETRY_AFTER_MS, |v| delay(decimal_nanos(v, 1_000_000)?));
        let now = self.now;
        let secs = self.get(RETRY_AFTER, |v| parse_retry_after(v, now));
        if let Some(d) = ms.or(secs).filter(|d| !d.is_zero()) {
            let mut b = Budget::new(Dialect::RetryAfter, BudgetKind::Requests);
            b.remaining = Some(0);
            b.reset_in = Some(d);
            self.push(b);
        }
    }
}

/// Shopify's documented drain rate for a bucket size (size / 20 s).
pub fn shopify_drain_per_sec(size: u64) -> f64 {
    size as f64 / SHOPIFY_DRAIN_SECS
}

/// A count: a plain non-negative integer below [`ABSURD_COUNT`].
pub fn parse_count(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| *n < ABSURD_COUNT)
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A non-negative decimal (`12`, `1.234`, `.5`; no sign, exponent, `inf` or
/// `NaN`) times `unit_nanos`, exactly, in nanoseconds. Fraction digits past
/// the twelfth are dropped; more than 20 integer digits are refused.
fn decimal_nanos(v: &str, unit_nanos: u128) -> Option<u128> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || int.len() > 20 || !digits(int) || !digits(frac) {
        return None;
    }
    let frac = &frac[..frac.len().min(12)];
    let int_v: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    int_v
        .checked_mul(unit_nanos)?
        .checked_add(frac_v.checked_mul(unit_nanos)? / scale)
}

/// Nanoseconds as a delay of at most [`MAX_RESET`].
fn delay(nanos: u128) -> Option<Duration> {
    let d = Duration::from_nanos(u64::try_from(nanos).ok()?);
    (d <= MAX_RESET).then_some(d)
}

/// Delta seconds, decimals allowed (`1.234`), at most [`MAX_RESET`].
pub fn parse_delta_secs(v: &str) -> Option<Duration> {
    delay(decimal_nanos(v, NANOS_PER_SEC)?)
}

/// The time from `now` until `at`: at most [`MAX_RESET`] ahead; up to
/// [`PAST_SKEW`] behind counts as zero; further behind is unusable.
fn until(at: SystemTime, now: SystemTime) -> Option<Duration> {
    match at.duration_since(now) {
        Ok(d) => (d <= MAX_RESET).then_some(d),
        Err(e) => (e.duration() <= PAST_SKEW).then_some(Duration::ZERO),
    }
}

/// The reset of `X-RateLimit-Reset`, `RateLimit-Reset` and Discord's
/// `X-RateLimit-Reset`, decided by magnitude `n` (decimals allowed):
/// - `n < 1e9`: delta seconds;
/// - `1e9 <= n < 1e12`: Unix epoch seconds (2001-09-09 to year 33658);
/// - `1e12 <= n < 1e15`: Unix epoch milliseconds;
/// - `n >= 1e15`: ignored.
///
/// The result must then be at most [`MAX_RESET`] ahead (or up to
/// [`PAST_SKEW`] behind, read as zero), else it is ignored.
pub fn parse_reset_by_magnitude(v: &str, now: SystemTime) -> Option<Duration> {
    let n = decimal_nanos(v, NANOS_PER_SEC)?; // n seconds, in nanoseconds
    let epoch_nanos = if n < EPOCH_THRESHOLD as u128 * NANOS_PER_SEC {
        return delay(n);
    } else if n < EPOCH_MS_THRESHOLD as u128 * NANOS_PER_SEC {
        n
    } else if n < EPOCH_ABSURD as u128 * NANOS_PER_SEC {
        n / 1000
    } else {
        return None;
    };
    let secs = u64::try_from(epoch_nanos / NANOS_PER_SEC).ok()?;
    let sub = u32::try_from(epoch_nanos % NANOS_PER_SEC).ok()?;
    let at = UNIX_EPOCH.checked_add(Duration::new(secs, sub))?;
    until(at, now)
}

/// Go's `time.Duration` string as OpenAI sends it: `12ms`, `1s`, `6m0s`,
/// `1h2m3s`, `0.5s`, `100us`/`100µs`, `7ns`; `0` alone is zero. At most
/// [`MAX_RESET`]; signs are refused.
pub fn parse_go_duration(v: &str, _now: SystemTime) -> Option<Duration> {
    if v == "0" {
        return Some(Duration::ZERO);
    }
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    let mut rest = v;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        let num = &rest[..num_len];
        rest = &rest[num_len..];
        let (unit_nanos, unit_len): (u128, usize) = if rest.starts_with("ms") {
            (1_000_000, 2)
        } else if rest.starts_with("us") {
            (1_000, 2)
        } else if rest.starts_with("\u{b5}s") {
            (1_000, "\u{b5}s".len())
        } else if rest.starts_with("ns") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3600 * NANOS_PER_SEC, 1)
        } else if rest.starts_with('m') {
            (60 * NANOS_PER_SEC, 1)
        } else if rest.starts_with('s') {
            (NANOS_PER_SEC, 1)
        } else {
            return None;
        };
        rest = &rest[unit_len..];
        total = total.checked_add(decimal_nanos(num, unit_nanos)?)?;
    }
    delay(total)
}

/// An RFC 3339 timestamp (Anthropic: `2025-08-21T12:40:59Z`, fractions and
/// a `+00:00` offset accepted) as the time from `now` until it.
pub fn parse_rfc3339_until(v: &str, now: SystemTime) -> Option<Duration> {
    let zulu;
    let v = match v.strip_suffix("+00:00") {
        Some(base) => {
            zulu = format!("{base}Z");
            zulu.as_str()
        }
        None => v,
    };
    until(humantime::parse_rfc3339(v).ok()?, now)
}

/// `Retry-After`: delta seconds (decimals tolerated: Shopify sends `2.0`) or
/// an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    if let Some(d) = parse_delta_secs(v) {
        return Some(d);
    }
    until(httpdate::parse_http_date(v).ok()?, now)
}

/// `RateLimit-Limit`: the first list member's integer, and the `;w=`
/// window of the first member with that quota (`100, 100;w=60, 1000;w=3600`
/// → 100 per 60 s).
fn parse_limit_with_window(v: &str) -> Option<(u64, Option<Duration>)> {
    let (mut limit, mut window) = (None, None);
    for member in v.split(',') {
        let mut parts = member.trim().split(';');
        let quota = parse_count(parts.next()?.trim())?;
        let mut w = None;
        for p in parts {
            let (k, val) = p.trim().split_once('=')?;
            if k.trim() == "w" {
                let secs = parse_count(val.trim())?;
                if secs == 0 || secs > MAX_RESET.as_secs() {
                    return None;
                }
                w = Some(Duration::from_secs(secs));
            }
        }
        match limit {
            None => (limit, window) = (Some(quota), w),
            Some(l) if l == quota && window.is_none() => window = w,
            _ => {}
        }
    }
    Some((limit?, window))
}

/// `32/40`: used 32 of a bucket of 40.
fn parse_used_of(v: &str) -> Option<(u64, u64)> {
    let (used, size) = v.split_once('/')?;
    let (used, size) = (parse_count(used.trim())?, parse_count(size.trim())?);
    (size > 0 && used <= size).then_some((used, size))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A bucket name: 1..=[`MAX_BUCKET_LEN`] visible ASCII characters.
fn parse_bucket(v: &str) -> Option<String> {
    (!v.is_empty() && v.len() <= MAX_BUCKET_LEN && v.bytes().all(|c| c.is_ascii_graphic()))
        .then(|| v.to_string())
}

fn sf_count(item: &sfv::BareItem) -> Option<u64> {
    let n = u64::try_from(item.as_int()?).ok()?;
    (n < ABSURD_COUNT).then_some(n)
}

fn sf_name(item: &sfv::BareItem) -> Option<Option<String>> {
    let s = item.as_str().or_else(|| item.as_token())?;
    Some(Some(parse_bucket(s)?))
}

/// One `RateLimit-Policy` member; `None`: unusable.
fn policy_budget(entry: &sfv::ListEntry) -> Option<Budget> {
    let sfv::ListEntry::Item(item) = entry else {
        return None;
    };
    let mut b = Budget::new(Dialect::IetfStructured, BudgetKind::Requests);
    if let Some(q) = sf_count(&item.bare_item) {
        b.limit = Some(q); // draft 06: `100;w=60`
    } else {
        b.bucket = sf_name(&item.bare_item)?;
    }
    for (k, v) in &item.params {
        match k.as_str() {
            "q" => b.limit = Some(sf_count(v)?),
            "w" => {
                let w = Duration::from_secs(sf_count(v)?);
                if w.is_zero() || w > MAX_RESET {
                    return None;
                }
                b.window = Some(w);
            }
            "qu" => {
                b.kind = match v.as_str().or_else(|| v.as_token())? {
                    "requests" => BudgetKind::Requests,
                    "content-bytes" => BudgetKind::ContentBytes,
                    "concurrent-requests" => BudgetKind::ConcurrentRequests,
                    _ => return None,
                }
            }
            _ => {} // pk (partition key) and extensions
        }
    }
    b.limit?;
    Some(b)
}

type CurrentLimit = (Option<String>, Option<u64>, Option<Duration>);

/// One `RateLimit` member: (policy name, remaining, reset); `None`: unusable.
fn current_limit(entry: &sfv::ListEntry) -> Option<CurrentLimit> {
    let sfv::ListEntry::Item(item) = entry else {
        return None;
    };
    let name = sf_name(&item.bare_item)?;
    let (mut remaining, mut reset) = (None, None);
    for (k, v) in &item.params {
        match k.as_str() {
            "r" => remaining = Some(sf_count(v)?),
            "t" => reset = Some(delay(u128::from(sf_count(v)?) * NANOS_PER_SEC)?),
            _ => {}
        }
    }
    (remaining.is_some() || reset.is_some()).then_some((name, remaining, reset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use rand::{Rng, SeedableRng};

    /// 2026-01-01T00:00:00Z.
    const NEW_YEAR: u64 = 1_767_225_600;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    use crate::testing::headers as h;

    /// The early return in `read` must not hide a dialect: every name any
    /// reader looks up passes the pre-check, and a response without one is
    /// read as nothing.
    #[test]
    fn the_pre_check_lets_every_dialect_name_through() {
        for name in HEADER_NAMES {
            assert!(may_announce(name), "{name} would be skipped");
        }
        for name in ["content-type", "date", "x-request-id", "retry", "server"] {
            assert!(!may_announce(name), "{name}");
        }
        let plain = h(&[("content-type", "text/plain"), ("x-request-id", "abc")]);
        assert!(read(429, &plain, at(NEW_YEAR)).is_empty());
        let limited = h(&[("content-type", "text/plain"), ("retry-after", "7")]);
        assert!(!read(429, &limited, at(NEW_YEAR)).is_empty());
    }

    /// The byte scan says what `contains` said, on names built around the
    /// pieces it looks for (at the start, the end, cut short, repeated).
    #[test]
    fn the_pre_check_scan_is_contains() {
        let by_contains = |n: &str| {
            n.contains("ratelimit")
                || n.contains("rate-limit")
                || n.starts_with(RETRY_AFTER)
                || n == SHOPIFY
        };
        let parts = [
            "",
            "x-",
            "rate",
            "ratelimit",
            "rate-limit",
            "ratelimi",
            "rate-limi",
            "r",
            "ra",
            "-",
            "limit",
            "rrate",
            "retry-after",
            "x-ratelimit-",
            "ate-limit",
        ];
        let mut checked = 0;
        for a in parts {
            for b in parts {
                for c in parts {
                    let name = format!("{a}{b}{c}");
                    assert_eq!(may_announce(&name), by_contains(&name), "{name:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, parts.len().pow(3));
        for name in HEADER_NAMES {
            assert!(by_contains(name));
        }
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    fn only(r: &Reading) -> &Budget {
        assert_eq!(r.budgets.len(), 1, "{r:?}");
        assert!(r.ignored.is_empty(), "{r:?}");
        &r.budgets[0]
    }

    #[test]
    fn sources_are_distinct_and_prefixed() {
        let mut seen: Vec<&str> = Dialect::ALL.iter().map(|d| d.source()).collect();
        assert!(seen.iter().all(|s| s.starts_with("dialect:")));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), Dialect::ALL.len());
        assert_eq!(Dialect::OpenAi.source(), "dialect:openai");
    }

    #[test]
    fn no_headers_no_budgets() {
        assert!(read(200, &HeaderMap::new(), SystemTime::now()).is_empty());
        let r = read(
            200,
            &h(&[("content-type", "text/plain")]),
            SystemTime::now(),
        );
        assert!(r.is_empty());
    }

    #[test]
    fn ietf_structured_policy_and_ratelimit() {
        let now = SystemTime::now();
        let r = read(
            200,
            &h(&[
                ("RateLimit-Policy", "\"default\";q=100;w=60"),
                ("RateLimit", "\"default\";r=42;t=30"),
            ]),
            now,
        );
        let b = only(&r);
        assert_eq!(b.dialect, Dialect::IetfStructured);
        assert_eq!(b.kind, BudgetKind::Requests);
        assert_eq!(b.bucket.as_deref(), Some("default"));
        assert_eq!((b.limit, b.remaining), (Some(100), Some(42)));
        assert_eq!((b.reset_in, b.window), (secs(30), secs(60)));
        // 42 over 30 s is 1.4/s, slower than the window's sustained
        // 100/60 s: the sustained share wins (budget_pace_rules).
        assert_eq!(
            budget_pace(b, 1000.0),
            Pace::Rate(100.0 / 60.0 * SUSTAINED_SHARE)
        );
    }

    #[test]
    fn ietf_structured_several_policies_and_lines() {
        let now = SystemTime::now();
        // Two policies on one line, the current limits on two field lines,
        // a token-named policy and a byte quota with a partition key.
        let r = read(
            200,
            &h(&[
                (
                    "ratelimit-policy",
                    "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400",
                ),
                (
                    "RateLimit-Policy",
                    "bytes;q=65536;w=10;qu=\"content-bytes\";pk=:cHsdsRa894==:",
                ),
                ("RateLimit", "\"burst\";r=0;t=12"),
                ("RateLimit", "\"daily\";r=900;t=40000, bytes;r=1024;t=3"),
            ]),
            now,
        );
        assert!(r.ignored.is_empty(), "{r:?}");
        assert_eq!(r.budgets.len(), 3);
        let burst = &r.budgets[0];
        assert_eq!(burst.bucket.as_deref(), Some("burst"));
        assert_eq!((burst.limit, burst.remaining), (Some(100), Some(0)));
        let daily = &r.budgets[1];
        assert_eq!((daily.limit, daily.remaining), (Some(1000), Some(900)));
        assert_eq!(daily.window, secs(86400));
        let bytes = &r.budgets[2];
        assert_eq!(bytes.kind, BudgetKind::ContentBytes);
        assert_eq!((bytes.limit, bytes.remaining), (Some(65536), Some(1024)));
        // The exhausted burst policy wins over the daily one's rate.
        assert_eq!(
            strictest(&r.budgets, 100.0),
            Pace::PauseFor(Duration::from_secs(12))
        );
    }

    #[test]
    fn ietf_structured_draft_06_and_unmatched() {
        let now = SystemTime::now();
        let r = read(200, &h(&[("RateLimit-Policy", "10;w=1, 50;w=60")]), now);
        assert!(r.ignored.is_empty());
        assert_eq!(r.budgets.len(), 2);
        assert_eq!(
            (r.budgets[0].limit, r.budgets[0].window),
            (Some(10), secs(1))
        );
        assert_eq!(
            budget_pace(&r.budgets[1], 100.0),
            Pace::Rate(50.0 / 60.0 * SUSTAINED_SHARE)
        );
        // A current limit without its policy is a budget of its own.
        let r = read(200, &h(&[("RateLimit", "\"x\";r=5;t=10")]), now);
        let b = only(&r);
        assert_eq!(
            (b.limit, b.remaining, b.reset_in),
            (None, Some(5), secs(10))
        );
        assert_eq!(budget_pace(b, 100.0), Pace::Rate(0.5));
    }

    #[test]
    fn ietf_structured_bad_values_are_ignored() {
        let now = SystemTime::now();
        for (name, bad) in [
            (IETF_POLICY, "\"default\";q=-1;w=60"),
            (IETF_POLICY, "\"default\";w=60"),
            (IETF_POLICY, "\"default\";q=10;w=0"),
            (IETF_POLICY, "\"default\";q=10;qu=\"parsecs\""),
            (IETF_POLICY, "(\"a\" \"b\");q=10"),
            (IETF_POLICY, "\"default\";q=1.5"),
            (IETF_POLICY, "\"default\";q=9999999999999999"),
            (IETF_POLICY, "default;;q=="),
            (IETF_RATELIMIT, "\"default\";r=-4;t=3"),
            (IETF_RATELIMIT, "\"default\";r=4;t=999999999"),
            (IETF_RATELIMIT, "\"default\""),
            (IETF_RATELIMIT, "limit=100, remaining=50, reset=5"),
            (IETF_RATELIMIT, "\"default\";r=4;t=?1"),
        ] {
            let r = read(200, &h(&[(name, bad)]), now);
            assert!(r.budgets.is_empty(), "{bad}: {r:?}");
            assert_eq!(r.ignored, vec![name], "{bad}");
        }
        // remaining above the policy's quota.
        let r = read(
            200,
            &h(&[
                ("RateLimit-Policy", "\"p\";q=10"),
                ("RateLimit", "\"p\";r=11;t=1"),
            ]),
            now,
        );
        assert_eq!(r.budgets[0].remaining, None);
        assert_eq!(r.ignored, vec!["ratelimit"]);
    }

    #[test]
    fn ietf_trio() {
        let now = SystemTime::now();
        let r = read(
            200,
            &h(&[
                ("RateLimit-Limit", "100"),
                ("RateLimit-Remaining", "50"),
                ("RateLimit-Reset", "25"),
            ]),
            now,
        );
        let b = only(&r);
        assert_eq!(b.dialect, Dialect::Ietf);
        assert_eq!(
            (b.limit, b.remaining, b.reset_in),
            (Some(100), Some(50), secs(25))
        );
        assert_eq!(budget_pace(b, 1000.0), Pace::Rate(2.0));
        // Draft 03's quota policies in RateLimit-Limit.
        let r = read(
            200,
            &h(&[("RateLimit-Limit", "100, 100;w=10, 1000;w=3600")]),
            now,
        );
        let b = only(&r);
        assert_eq!((b.limit, b.window), (Some(100), secs(10)));
        assert_eq!(budget_pace(b, 1000.0), Pace::Rate(10.0 * SUSTAINED_SHARE));
    }

    #[test]
    fn github_x_ratelimit() {
        // GitHub's documented sample, read five minutes before the reset.
        let reset = 1_691_591_363;
        let r = read(
            200,
            &h(&[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "4999"),
                ("x-ratelimit-used", "1"),
                ("x-ratelimit-reset", "1691591363"),
                ("x-ratelimit-resource", "core"),
            ]),
            at(reset - 300),
        );
        let b = only(&r);
        assert_eq!(b.dialect, Dialect::XRateLimit);
        assert_eq!((b.limit, b.remaining), (Some(5000), Some(4999)));
        assert_eq!(b.reset_in, secs(300));
        assert_eq!(b.bucket.as_deref(), Some("core"));
        let Pace::Rate(rate) = budget_pace(b, 1000.0) else {
            panic!()
        };
        assert!((rate - 4999.0 / 300.0).abs() < 1e-9);
        // Used fills a missing remaining.
        let r = read(
            200,
            &h(&[("X-RateLimit-Limit", "60"), ("X-RateLimit-Used", "15")]),
            at(reset),
        );
        assert_eq!(only(&r).remaining, Some(45));
        // Used above the limit is ignored.
        let r = read(
            200,
            &h(&[("X-RateLimit-Limit", "60"), ("X-RateLimit-Used", "61")]),
            at(reset),
        );
        assert_eq!(r.budgets[0].remaining, None);
        assert_eq!(r.ignored, vec!["x-ratelimit-used"]);
    }

    #[test]
    fn x_twitter_spelling() {
        let r = read(
            200,
            &h(&[
                ("x-rate-limit-limit", "900"),
                ("x-rate-limit-remaining", "847"),
                ("x-rate-limit-reset", "1767226500"),
            ]),
            at(NEW_YEAR),
        );
        let b = only(&r);
        assert_eq!(
            (b.limit, b.remaining, b.reset_in),
            (Some(900), Some(847), secs(900))
        );
    }

    #[test]
    fn reset_magnitude_rule() {
        let now = at(NEW_YEAR);
        let p = |v: &str| parse_reset_by_magnitude(v, now);
        assert_eq!(p("0"), secs(0));
        assert_eq!(p("30"), secs(30));
        assert_eq!(p("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(p("86400"), secs(86400));
        assert_eq!(p("86401"), None, "delta beyond a day");
        assert_eq!(p("999999999"), None, "largest delta: too long");
        assert_eq!(p(&(NEW_YEAR + 60).to_string()), secs(60), "epoch seconds");
        assert_eq!(
            p(&format!("{}.5", NEW_YEAR + 60)),
            Some(Duration::from_millis(60_500))
        );
        assert_eq!(
            p(&((NEW_YEAR + 60) * 1000).to_string()),
            secs(60),
            "epoch ms"
        );
        assert_eq!(
            p(&((NEW_YEAR + 60) * 1_000_000).to_string()),
            None,
            "epoch us"
        );
        assert_eq!(p(&(NEW_YEAR - 10).to_string()), secs(0), "skew");
        assert_eq!(p(&(NEW_YEAR - 3600).to_string()), None, "long past");
        assert_eq!(p("1000000000"), None, "2001");
        assert_eq!(p("32503680000"), None, "year 3000");
        assert_eq!(p("32503680000000"), None, "year 3000 in ms");
    }

    #[test]
    fn openai_requests_and_tokens() {
        // A sample from OpenAI's community forum (chat completions).
        let r = read(
            200,
            &h(&[
                ("x-ratelimit-limit-requests", "5000"),
                ("x-ratelimit-limit-tokens", "160000"),
                ("x-ratelimit-remaining-requests", "4999"),
                ("x-ratelimit-remaining-tokens", "159976"),
                ("x-ratelimit-reset-requests", "12ms"),
                ("x-ratelimit-reset-tokens", "9ms"),
                ("x-ratelimit-limit-tokens_usage_based", "160000"),
            ]),
            SystemTime::now(),
        );
        assert!(r.ignored.is_empty(), "{r:?}");
        assert_eq!(r.budgets.len(), 2);
        let (req, tok) = (&r.budgets[0], &r.budgets[1]);
        assert_eq!(req.dialect, Dialect::OpenAi);
        assert_eq!(
            (req.kind, tok.kind),
            (BudgetKind::Requests, BudgetKind::Tokens)
        );
        assert_eq!((req.limit, req.remaining), (Some(5000), Some(4999)));
        assert_eq!(req.reset_in, Some(Duration::from_millis(12)));
        assert_eq!((tok.limit, tok.remaining), (Some(160000), Some(159976)));
        assert_eq!(tok.reset_in, Some(Duration::from_millis(9)));
        // 5000 a minute paces at (a share of) 83/s, here the ceiling;
        // tokens give no rate.
        assert_eq!(budget_pace(req, 50.0), Pace::Rate(50.0));
        assert_eq!(
            budget_pace(req, 1000.0),
            Pace::Rate(5000.0 / 60.0 * SUSTAINED_SHARE)
        );
        assert_eq!(budget_pace(tok, 50.0), Pace::Unknown);
        // Docs' example: 60 RPM, 59 left, reset in 1s; 150k TPM, reset 6m0s.
        let r = read(
            200,
            &h(&[
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "59"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-limit-tokens", "150000"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]),
            SystemTime::now(),
        );
        assert_eq!(
            strictest(&r.budgets, 100.0),
            Pace::PauseFor(Duration::from_secs(360))
        );
    }

    #[test]
    fn go_durations() {
        let now = SystemTime::now();
        let ms = |n: u64| Some(Duration::from_millis(n));
        for (v, want) in [
            ("0", ms(0)),
            ("12ms", ms(12)),
            ("1s", ms(1000)),
            ("0.5s", ms(500)),
            ("6m0s", ms(360_000)),
            ("1h2m3s", ms(3_723_000)),
            ("1m30.5s", ms(90_500)),
            ("1.5ms", Some(Duration::from_micros(1500))),
            ("250us", Some(Duration::from_micros(250))),
            ("250µs", Some(Duration::from_micros(250))),
            ("7ns", Some(Duration::from_nanos(7))),
            ("24h", ms(86_400_000)),
            ("24h0m1s", None),
            ("25h", None),
            ("", None),
            ("s", None),
            ("5", None),
            ("-1s", None),
            ("+1s", None),
            ("1x", None),
            ("1.2.3s", None),
            ("1e3s", None),
            ("NaNs", None),
            ("infs", None),
            ("99999999999999999999999999h", None),
            ("1s ", None),
        ] {
            assert_eq!(parse_go_duration(v, now), want, "{v:?}");
        }
    }

    #[test]
    fn anthropic_families() {
        // A recorded api.anthropic.com response, read one second before.
        let now = humantime::parse_rfc3339("2025-08-21T12:40:58Z").unwrap();
        let r = read(
            200,
            &h(&[
                ("anthropic-ratelimit-input-tokens-limit", "80000"),
                ("anthropic-ratelimit-input-tokens-remaining", "80000"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2025-08-21T12:40:59Z",
                ),
                ("anthropic-ratelimit-output-tokens-limit", "16000"),
                ("anthropic-ratelimit-output-tokens-remaining", "16000"),
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2025-08-21T12:41:00Z",
                ),
                ("anthropic-ratelimit-requests-limit", "1000"),
                ("anthropic-ratelimit-requests-remaining", "999"),
                ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59Z"),
                ("anthropic-ratelimit-tokens-limit", "96000"),
                ("anthropic-ratelimit-tokens-remaining", "96000"),
                ("anthropic-ratelimit-tokens-reset", "2025-08-21T12:40:59Z"),
            ]),
            now,
        );
        assert!(r.ignored.is_empty(), "{r:?}");
        let kinds: Vec<_> = r.budgets.iter().map(|b| b.kind).collect();
        assert_eq!(
            kinds,
            [
                BudgetKind::Requests,
                BudgetKind::Tokens,
                BudgetKind::InputTokens,
                BudgetKind::OutputTokens
            ]
        );
        assert!(r.budgets.iter().all(|b| b.dialect == Dialect::Anthropic));
        let req = &r.budgets[0];
        assert_eq!(
            (req.limit, req.remaining, req.reset_in),
            (Some(1000), Some(999), secs(1))
        );
        assert_eq!(r.budgets[3].reset_in, secs(2));
        // 1000 a minute: a share of 16.7/s.
        assert_eq!(
            budget_pace(req, 100.0),
            Pace::Rate(1000.0 / 60.0 * SUSTAINED_SHARE)
        );
        // Fractions and a +00:00 offset; output tokens exhausted.
        let r = read(
            200,
            &h(&[
                ("anthropic-ratelimit-output-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2025-08-21T12:41:08.500+00:00",
                ),
            ]),
            now,
        );
        assert_eq!(
            budget_pace(only(&r), 100.0),
            Pace::PauseFor(Duration::from_millis(10_500))
        );
        for bad in [
            "1970-01-01T00:00:00Z",
            "3000-01-01T00:00:00Z",
            "2025-08-21T12:40:59+02:00",
            "2025-13-45T99:99:99Z",
            "tomorrow",
            "1755780059",
        ] {
            let r = read(200, &h(&[("anthropic-ratelimit-requests-reset", bad)]), now);
            assert!(r.budgets.is_empty(), "{bad}");
            assert_eq!(
                r.ignored,
                vec!["anthropic-ratelimit-requests-reset"],
                "{bad}"
            );
        }
    }

    #[test]
    fn shopify_leaky_bucket() {
        let r = read(
            200,
            &h(&[("X-Shopify-Shop-Api-Call-Limit", "32/40")]),
            SystemTime::now(),
        );
        let b = only(&r);
        assert_eq!(b.dialect, Dialect::Shopify);
        assert_eq!((b.limit, b.remaining), (Some(40), Some(8)));
        assert_eq!(b.drain_per_sec, Some(2.0));
        assert_eq!(budget_pace(b, 100.0), Pace::Rate(2.0));
        assert_eq!(budget_pace(b, 1.0), Pace::Rate(1.0));
        let r = read(
            200,
            &h(&[("x-shopify-shop-api-call-limit", "400/400")]),
            SystemTime::now(),
        );
        let b = only(&r);
        assert_eq!(b.drain_per_sec, Some(20.0));
        assert_eq!(
            budget_pace(b, 100.0),
            Pace::PauseFor(Duration::from_millis(50))
        );
        for bad in [
            "41/40", "0/0", "32", "32/", "/40", "-1/40", "32/40/80", "3.5/40",
        ] {
            let r = read(200, &h(&[(SHOPIFY, bad)]), SystemTime::now());
            assert!(r.budgets.is_empty(), "{bad}");
            assert_eq!(r.ignored, vec![SHOPIFY], "{bad}");
        }
    }

    #[test]
    fn discord() {
        // Discord's documented sample.
        let now = at(1_470_173_022);
        let r = read(
            200,
            &h(&[
                ("X-RateLimit-Limit", "5"),
                ("X-RateLimit-Remaining", "1"),
                ("X-RateLimit-Reset", "1470173023"),
                ("X-RateLimit-Reset-After", "1"),
                ("X-RateLimit-Bucket", "abcd1234"),
            ]),
            now,
        );
        let b = only(&r);
        assert_eq!(b.dialect, Dialect::Discord);
        assert_eq!(
            (b.limit, b.remaining, b.reset_in),
            (Some(5), Some(1), secs(1))
        );
        assert_eq!(b.bucket.as_deref(), Some("abcd1234"));
        assert!(!b.global);
        assert_eq!(budget_pace(b, 50.0), Pace::Rate(1.0));
        // Reset-After (float) wins over the epoch float.
        let r = read(
            429,
            &h(&[
                ("X-RateLimit-Limit", "10"),
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", "1470173023.123"),
                ("X-RateLimit-Reset-After", "64.57"),
                ("X-RateLimit-Bucket", "abcd1234"),
                ("X-RateLimit-Scope", "user"),
            ]),
            now,
        );
        let b = only(&r);
        assert_eq!(b.reset_in, Some(Duration::from_millis(64_570)));
        assert_eq!(
            budget_pace(b, 50.0),
            Pace::PauseFor(Duration::from_millis(64_570))
        );
        // Without Reset-After the epoch float is used.
        let r = read(
            200,
            &h(&[
                ("X-RateLimit-Reset", "1470173023.5"),
                ("X-RateLimit-Bucket", "b"),
            ]),
            now,
        );
        assert_eq!(only(&r).reset_in, Some(Duration::from_millis(1500)));
        // A global 429.
        let r = read(
            429,
            &h(&[
                ("X-RateLimit-Global", "true"),
                ("X-RateLimit-Scope", "global"),
                ("Retry-After", "65"),
            ]),
            now,
        );
        assert!(r.ignored.is_empty());
        assert_eq!(r.budgets.len(), 2);
        assert!(r.budgets[0].global);
        assert_eq!(
            strictest(&r.budgets, 50.0),
            Pace::PauseFor(Duration::from_secs(65))
        );
        // A huge bucket name or an unknown scope is ignored.
        let long = "a".repeat(MAX_BUCKET_LEN + 1);
        let r = read(
            200,
            &h(&[
                ("X-RateLimit-Bucket", &long),
                ("X-RateLimit-Scope", "galaxy"),
            ]),
            now,
        );
        assert!(r.budgets.is_empty());
        assert_eq!(r.ignored, vec![DISCORD_BUCKET, DISCORD_SCOPE]);
    }

    #[test]
    fn retry_after_and_ms() {
        let now = at(NEW_YEAR);
        let pause =
            |status, pairs: &[(&str, &str)]| strictest(&read(status, &h(pairs), now).budgets, 10.0);
        assert_eq!(
            pause(429, &[("Retry-After", "3")]),
            Pace::PauseFor(Duration::from_secs(3))
        );
        assert_eq!(
            pause(503, &[("Retry-After", "2.0")]),
            Pace::PauseFor(Duration::from_secs(2))
        );
        assert_eq!(pause(200, &[("Retry-After", "3")]), Pace::Unknown);
        assert_eq!(
            pause(429, &[("retry-after-ms", "1500.5"), ("retry-after", "2")]),
            Pace::PauseFor(Duration::from_micros(1_500_500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(
            pause(429, &[("Retry-After", &date)]),
            Pace::PauseFor(Duration::from_secs(10))
        );
        assert_eq!(pause(429, &[("Retry-After", "0")]), Pace::Unknown);
        let r = read(429, &h(&[("Retry-After", "0")]), now);
        assert!(r.is_empty());
        let b = &read(429, &h(&[("Retry-After", "3")]), now).budgets[0];
        assert_eq!(b.dialect, Dialect::RetryAfter);
        for bad in [
            "soon",
            "-5",
            "NaN",
            "inf",
            "1e3",
            "86401",
            "Wed, 99 Foo 2020 00:00:00 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Wed, 01 Jan 3000 00:00:00 GMT",
        ] {
            let r = read(429, &h(&[("Retry-After", bad)]), now);
            assert!(r.budgets.is_empty(), "{bad}");
            assert_eq!(r.ignored, vec![RETRY_AFTER], "{bad}");
        }
    }

    #[test]
    fn hostile_counts_are_ignored_and_listed() {
        let now = at(NEW_YEAR);
        for bad in [
            "18446744073709551615",
            "18446744073709551616",
            "1000000000000000",
            "1e308",
            "-1",
            "+5",
            "NaN",
            "inf",
            "-inf",
            "4.5",
            "",
            "0x10",
        ] {
            for name in [
                X_LIMIT,
                X_REMAINING,
                IETF_LIMIT,
                IETF_REMAINING,
                "x-ratelimit-remaining-requests",
                "anthropic-ratelimit-tokens-limit",
            ] {
                let r = read(200, &h(&[(name, bad)]), now);
                assert!(r.budgets.is_empty(), "{name}: {bad}: {r:?}");
                assert_eq!(r.ignored, vec![name], "{name}: {bad}");
            }
        }
        for bad in ["-1", "NaN", "inf", "1e308", "1e3", "", "--", "1.2.3"] {
            for name in [
                X_RESET,
                IETF_RESET,
                "x-ratelimit-reset-requests",
                DISCORD_RESET_AFTER,
            ] {
                let r = read(200, &h(&[(name, bad)]), now);
                assert!(
                    r.budgets.iter().all(|b| b.reset_in.is_none()),
                    "{name}: {bad}: {r:?}"
                );
                assert_eq!(r.ignored, vec![name], "{name}: {bad}");
            }
        }
    }

    #[test]
    fn remaining_above_limit_is_dropped() {
        let now = at(NEW_YEAR);
        for (l, rem) in [
            (X_LIMIT, X_REMAINING),
            (IETF_LIMIT, IETF_REMAINING),
            (
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
            ),
            (
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
            ),
        ] {
            let r = read(200, &h(&[(l, "10"), (rem, "11")]), now);
            assert_eq!(r.budgets.len(), 1);
            assert_eq!(
                (r.budgets[0].limit, r.budgets[0].remaining),
                (Some(10), None)
            );
            assert_eq!(r.ignored, vec![rem]);
        }
    }

    #[test]
    fn duplicates_long_values_and_non_ascii() {
        let now = at(NEW_YEAR);
        // The same value twice is fine; two different values are not.
        let r = read(200, &h(&[(X_REMAINING, "5"), (X_REMAINING, "5")]), now);
        assert_eq!(only(&r).remaining, Some(5));
        let r = read(200, &h(&[(X_REMAINING, "5"), (X_REMAINING, "6")]), now);
        assert!(r.budgets.is_empty());
        assert_eq!(r.ignored, vec![X_REMAINING]);
        // 10 KB values.
        let huge = "9".repeat(10 * 1024);
        let spaced = format!("{}1", " ".repeat(10 * 1024));
        let policy = vec!["\"p\";q=1;w=1"; 1000].join(", ");
        for (name, v) in [
            (X_LIMIT, huge.as_str()),
            (X_REMAINING, spaced.as_str()),
            (IETF_POLICY, policy.as_str()),
            (SHOPIFY, huge.as_str()),
        ] {
            let r = read(200, &h(&[(name, v)]), now);
            assert!(r.budgets.is_empty(), "{name}");
            assert_eq!(r.ignored, vec![name], "{name}");
        }
        // Bytes that are not visible ASCII (obs-text).
        for name in [
            X_LIMIT,
            IETF_RATELIMIT,
            SHOPIFY,
            "anthropic-ratelimit-requests-reset",
        ] {
            let mut m = HeaderMap::new();
            m.insert(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(b"4\xff\xfe0").unwrap(),
            );
            let r = read(200, &m, now);
            assert!(r.budgets.is_empty(), "{name}");
            assert_eq!(r.ignored, vec![name], "{name}");
        }
    }

    #[test]
    fn budget_pace_rules() {
        let mut b = Budget::new(Dialect::XRateLimit, BudgetKind::Requests);
        assert_eq!(budget_pace(&b, 10.0), Pace::Unknown);
        b.limit = Some(100);
        assert_eq!(budget_pace(&b, 10.0), Pace::Unknown, "a limit alone");
        b.window = secs(50);
        assert_eq!(
            budget_pace(&b, 10.0),
            Pace::Rate(2.0 * SUSTAINED_SHARE),
            "a share of limit / window"
        );
        b.remaining = Some(90);
        b.reset_in = secs(30);
        assert_eq!(
            budget_pace(&b, 10.0),
            Pace::Rate(3.0),
            "remaining / reset, when faster"
        );
        b.window = None;
        b.remaining = Some(30);
        b.reset_in = secs(60);
        assert_eq!(budget_pace(&b, 10.0), Pace::Rate(0.5), "remaining / reset");
        assert_eq!(budget_pace(&b, 0.25), Pace::Rate(0.25), "ceiling");
        for no_ceiling in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(budget_pace(&b, no_ceiling), Pace::Rate(0.5));
        }
        b.remaining = Some(1);
        b.reset_in = Some(MAX_RESET);
        assert_eq!(budget_pace(&b, 10.0), Pace::Rate(MIN_RPS), "floor");
        b.remaining = Some(0);
        b.reset_in = secs(7);
        assert_eq!(
            budget_pace(&b, 10.0),
            Pace::PauseFor(Duration::from_secs(7))
        );
        b.reset_in = Some(Duration::ZERO);
        assert_eq!(budget_pace(&b, 10.0), Pace::Unknown, "just reset");
        b.reset_in = None;
        assert_eq!(budget_pace(&b, 10.0), Pace::Unknown, "no reset");
        b.kind = BudgetKind::Tokens;
        b.reset_in = secs(7);
        assert_eq!(
            budget_pace(&b, 10.0),
            Pace::PauseFor(Duration::from_secs(7))
        );
        b.remaining = Some(5);
        assert_eq!(budget_pace(&b, 10.0), Pace::Unknown, "tokens give no rate");
        assert_eq!(strictest(&Vec::new(), 10.0), Pace::Unknown);
    }

    /// A token bucket (OpenAI, Anthropic) says when it is full again: at a
    /// steady pace its remaining stays near zero and its reset near a whole
    /// refill, so "remaining / reset" would starve; its refill rate, read
    /// as (limit - remaining) / reset, is the pace. A window dialect with
    /// the same numbers does not refill continuously.
    #[test]
    fn token_buckets_pace_at_their_refill() {
        let mut b = Budget::new(Dialect::OpenAi, BudgetKind::Requests);
        b.limit = Some(600);
        b.remaining = Some(2);
        b.reset_in = Some(Duration::from_millis(59_800)); // 598 at 10/s
        let Pace::Rate(r) = budget_pace(&b, 100.0) else {
            panic!("a rate");
        };
        assert!((r - 10.0 * SUSTAINED_SHARE).abs() < 1e-9, "{r}");
        // Nearly full: still the refill, not "599 within 0.1 s".
        b.remaining = Some(599);
        b.reset_in = Some(Duration::from_millis(100));
        let Pace::Rate(r) = budget_pace(&b, 1e9) else {
            panic!("a rate");
        };
        assert!((r - 10.0 * SUSTAINED_SHARE).abs() < 1e-9, "{r}");
        // With the window known (the reader sets a minute), the window.
        b.window = Some(BUCKET_WINDOW);
        b.limit = Some(1200);
        assert_eq!(budget_pace(&b, 1e9), Pace::Rate(20.0 * SUSTAINED_SHARE));
        // Empty: one request is back after a limit-th of the reset.
        b.remaining = Some(0);
        b.reset_in = Some(Duration::from_secs(60));
        assert_eq!(
            budget_pace(&b, 1e9),
            Pace::PauseFor(Duration::from_millis(50))
        );
        // Tokens: the whole reset (a request's cost is unknown).
        b.kind = BudgetKind::Tokens;
        assert_eq!(
            budget_pace(&b, 1e9),
            Pace::PauseFor(Duration::from_secs(60))
        );
        // A window dialect with a bucket's numbers spends what is left.
        let mut w = Budget::new(Dialect::XRateLimit, BudgetKind::Requests);
        w.limit = Some(600);
        w.remaining = Some(2);
        w.reset_in = Some(Duration::from_millis(59_800));
        let Pace::Rate(r) = budget_pace(&w, 100.0) else {
            panic!("a rate");
        };
        assert!((r - 2.0 / 59.8).abs() < 1e-9, "{r}");
        assert!(Dialect::Anthropic.refills_continuously());
        assert!(!Dialect::Discord.refills_continuously());
    }

    /// The governing budget is the one that pauses longest, else the
    /// slowest; its dialect is the source shown.
    #[test]
    fn the_strictest_budget_governs() {
        let mut fast = Budget::new(Dialect::OpenAi, BudgetKind::Requests);
        fast.remaining = Some(100);
        fast.reset_in = secs(10);
        let mut slow = Budget::new(Dialect::Ietf, BudgetKind::Requests);
        slow.remaining = Some(10);
        slow.reset_in = secs(10);
        let mut tokens = Budget::new(Dialect::OpenAi, BudgetKind::Tokens);
        tokens.remaining = Some(5000);
        tokens.reset_in = secs(1);
        let all = [fast.clone(), slow.clone(), tokens.clone()];
        let (pace, b) = governing(&all, 1000.0).expect("governs");
        assert_eq!((pace, b.dialect), (Pace::Rate(1.0), Dialect::Ietf));
        tokens.remaining = Some(0);
        let all = [fast, slow, tokens];
        let (pace, b) = governing(&all, 1000.0).expect("governs");
        assert_eq!(
            (pace, b.kind),
            (Pace::PauseFor(Duration::from_secs(1)), BudgetKind::Tokens)
        );
    }

    #[test]
    fn garbage_in_every_header_never_panics() {
        const NASTY: &[&str] = &[
            "18446744073709551615",
            "18446744073709551616",
            "340282366920938463463374607431768211456",
            "1e308",
            "-1e308",
            "NaN",
            "inf",
            "-0",
            "0.0000000000000000000001",
            "99999999999999.999",
            "1000000000000",
            "999999999999999",
            "1/0",
            "0/0",
            "18446744073709551615/18446744073709551615",
            "1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h",
            "9999999999999999h",
            "1970-01-01T00:00:00Z",
            "3000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "\"p\";q=999999999999999;w=999999999999999",
            "\"p\";r=999999999999999;t=999999999999999",
            "(\"a\";q=1 \"b\");q=2",
            "\"",
            ";;;",
            ",,,",
            "µs",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let now = at(NEW_YEAR);
        let (mut budgets, mut ignored) = (0, 0);
        let alphabet = b"0123456789.,;=/:-+ \"()?*smhunsTZ\t\xc2\xb5\x80\xff";
        for round in 0..3000 {
            let mut m = HeaderMap::new();
            let n = rng.gen_range(1..8);
            for _ in 0..n {
                let name = HEADER_NAMES[rng.gen_range(0..HEADER_NAMES.len())];
                let value: Vec<u8> = match rng.gen_range(0..4) {
                    0 => NASTY[rng.gen_range(0..NASTY.len())].as_bytes().to_vec(),
                    1 => (0..rng.gen_range(0..40))
                        .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                        .collect(),
                    2 => (0..rng.gen_range(0..64)).map(|_| rng.gen::<u8>()).collect(),
                    _ => (0..rng.gen_range(0..2 * MAX_VALUE_LEN))
                        .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                        .collect(),
                };
                if let Ok(v) = HeaderValue::from_bytes(&value) {
                    m.append(HeaderName::from_static(name), v);
                }
            }
            let status = [200, 429, 503][round % 3];
            let r = read(status, &m, now);
            budgets += r.budgets.len();
            ignored += r.ignored.len();
            for b in &r.budgets {
                if let (Some(l), Some(rem)) = (b.limit, b.remaining) {
                    assert!(rem <= l, "{m:?} → {b:?}");
                }
                assert!(b.reset_in.is_none_or(|d| d <= MAX_RESET), "{m:?} → {b:?}");
                assert!(b.bucket.as_ref().is_none_or(|s| s.len() <= MAX_BUCKET_LEN));
                for ceiling in [10.0, f64::NAN] {
                    match budget_pace(b, ceiling) {
                        Pace::Rate(x) => assert!(x.is_finite() && x > 0.0, "{b:?}"),
                        Pace::PauseFor(d) => assert!(!d.is_zero() && d <= MAX_RESET),
                        Pace::Unknown => {}
                    }
                }
            }
            let _ = strictest(&r.budgets, 10.0);
            let mut names = r.ignored.clone();
            names.dedup();
            assert_eq!(names.len(), r.ignored.len());
        }
        // The garbage reached the parsers: some of it read, most refused.
        assert!(budgets > 100 && ignored > 1000, "{budgets} {ignored}");
    }

    /// Every built-in preset (`config::presets`) names a dialect this
    /// reader knows, so its `source` label is one the reader produces.
    #[test]
    fn every_preset_dialect_is_one_the_reader_knows() {
        use crate::config::presets::PRESETS;
        let known: Vec<&str> = Dialect::ALL
            .iter()
            .filter_map(|d| d.source().strip_prefix("dialect:"))
            .collect();
        assert_eq!(known.len(), Dialect::ALL.len());
        for p in PRESETS {
            assert!(known.contains(&p.dialect), "{}: {:?}", p.host, p.dialect);
            let d = Dialect::ALL
                .into_iter()
                .find(|d| d.source().strip_prefix("dialect:") == Some(p.dialect))
                .expect("known dialect");
            assert_eq!(d.source(), format!("dialect:{}", p.dialect));
        }
    }
}
