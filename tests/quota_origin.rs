//! The quota origin itself (tests/common/quota_origin.rs), with no proxy
//! involved: each algorithm refuses past its quota, each dialect's headers
//! read back through `ezthrottle::admission::dialects::read` to the budget
//! the origin enforces, and credentials split budgets.
//!
//! Deterministic by construction: requests are sequential, windows are 60 s
//! and limits small (no boundary is crossed during a test), the leaky bucket
//! drains 0.01/s (it cannot free a request during a test). No sleeps, no
//! timing upper bounds.

mod common;

use std::time::{Duration, SystemTime};

use common::quota_origin::{
    go_duration, Algorithm, Dialect, Quota, QuotaOrigin, ALL_DIALECTS, BUCKET,
};
use common::raw::{self, RawResponse};
use ezthrottle::admission::dialects::{self, Budget, BudgetKind};

const WINDOW: Duration = Duration::from_secs(60);
const SLOW_DRAIN: f64 = 0.01;

fn quota(algorithm: Algorithm, limit: u64, dialect: Dialect) -> Quota<'static> {
    Quota {
        algorithm,
        limit,
        window: WINDOW,
        dialect,
        credential_header: None,
    }
}

/// `GET path` straight to the origin with `Host: host` and extra headers.
fn get(o: &QuotaOrigin, host: &str, extra: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET /v1/thing HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw::request(o.addr, &req)
}

fn statuses(o: &QuotaOrigin, host: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(o, host, &[]).status).collect()
}

fn header_map(r: &RawResponse) -> http::HeaderMap {
    let mut m = http::HeaderMap::new();
    for (k, v) in &r.headers {
        m.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    m
}

fn expected(d: Dialect) -> dialects::Dialect {
    match d {
        Dialect::IetfStructured => dialects::Dialect::IetfStructured,
        Dialect::IetfTrio => dialects::Dialect::Ietf,
        Dialect::GitHub => dialects::Dialect::XRateLimit,
        Dialect::OpenAi => dialects::Dialect::OpenAi,
        Dialect::Anthropic => dialects::Dialect::Anthropic,
        Dialect::Shopify => dialects::Dialect::Shopify,
        Dialect::Discord => dialects::Dialect::Discord,
    }
}

/// The request budget `r` states in dialect `d`, and everything it states.
fn request_budget(d: Dialect, r: &RawResponse) -> (Budget, Vec<Budget>) {
    let reading = dialects::read(r.status, &header_map(r), SystemTime::now());
    assert!(
        reading.ignored.is_empty(),
        "{d:?}: headers ignored {:?} in {:?}",
        reading.ignored,
        r.headers
    );
    let want = expected(d);
    let mine: Vec<&Budget> = reading
        .budgets
        .iter()
        .filter(|b| b.dialect == want)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "{d:?}: one {want:?} budget expected in {:?} from {:?}",
        reading.budgets,
        r.headers
    );
    assert_eq!(mine[0].kind, BudgetKind::Requests);
    (mine[0].clone(), reading.budgets.clone())
}

#[test]
fn fixed_window_refuses_past_its_limit_per_host() {
    let o = QuotaOrigin::start(quota(Algorithm::FixedWindow, 3, Dialect::IetfTrio));
    let rs: Vec<RawResponse> = (0..5).map(|_| get(&o, "fixed.test", &[])).collect();
    let st: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(st, [200, 200, 200, 429, 429]);
    let remaining: Vec<&str> = rs
        .iter()
        .map(|r| r.header("ratelimit-remaining").expect("remaining"))
        .collect();
    assert_eq!(remaining, ["2", "1", "0", "0", "0"]);
    for r in &rs {
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        let reset: u64 = r.header("ratelimit-reset").expect("reset").parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    for r in &rs[3..] {
        let after: u64 = r
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&after), "retry-after {after}");
    }
    assert!(
        rs[0].header("retry-after").is_none(),
        "no Retry-After on 200"
    );
    assert_eq!(o.count_ok("fixed.test"), 3);
    assert_eq!(o.count_429("fixed.test"), 2);
    let arrivals = o.arrivals("fixed.test");
    assert_eq!(arrivals.len(), 5);
    assert!(arrivals.iter().all(|a| a.path == "/v1/thing"));
    assert_eq!(
        arrivals.iter().map(|a| a.remaining).collect::<Vec<_>>(),
        [2, 1, 0, 0, 0]
    );

    // Another Host has its own budget.
    assert_eq!(statuses(&o, "other.test", 4), [200, 200, 200, 429]);
    assert_eq!(o.count_ok("other.test"), 3);
    assert_eq!(o.count_429("other.test"), 1);
    assert_eq!(o.count_429("fixed.test"), 2, "other host did not count");
    assert_eq!(
        o.url("fixed.test", "/x"),
        format!("http://fixed.test:{}/x", o.addr.port())
    );
}

#[test]
fn sliding_window_refuses_past_its_limit() {
    let o = QuotaOrigin::start(quota(Algorithm::SlidingWindow, 2, Dialect::IetfStructured));
    let rs: Vec<RawResponse> = (0..4).map(|_| get(&o, "slide.test", &[])).collect();
    assert_eq!(
        rs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 429, 429]
    );
    for r in &rs {
        assert_eq!(
            r.header("ratelimit-policy"),
            Some(format!("\"{BUCKET}\";q=2;w=60").as_str())
        );
    }
    let members: Vec<&str> = rs.iter().map(|r| r.header("ratelimit").unwrap()).collect();
    assert!(members[0].starts_with("\"core\";r=1;t="), "{members:?}");
    for m in &members[1..] {
        assert!(m.starts_with("\"core\";r=0;t="), "{members:?}");
    }
    assert_eq!(o.count_ok("slide.test"), 2);
    assert_eq!(o.count_429("slide.test"), 2);
    assert_eq!(statuses(&o, "slide2.test", 3), [200, 200, 429]);
}

#[test]
fn leaky_bucket_refuses_when_full() {
    let o = QuotaOrigin::start(quota(
        Algorithm::LeakyBucket {
            drain_per_sec: SLOW_DRAIN,
        },
        3,
        Dialect::Shopify,
    ));
    let rs: Vec<RawResponse> = (0..5).map(|_| get(&o, "shop.test", &[])).collect();
    assert_eq!(
        rs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 200, 429, 429]
    );
    let calls: Vec<&str> = rs
        .iter()
        .map(|r| r.header("x-shopify-shop-api-call-limit").unwrap())
        .collect();
    assert_eq!(calls, ["1/3", "2/3", "3/3", "3/3", "3/3"]);
    for r in &rs[3..] {
        // Shopify's style: float seconds with one decimal (`2.0`).
        let v = r.header("retry-after").expect("retry-after");
        assert!(v.contains('.'), "{v}");
        let secs: f64 = v.parse().expect("float seconds");
        assert!(secs > 0.0, "{v}");
    }
    assert_eq!(o.count_ok("shop.test"), 3);
    assert_eq!(o.count_429("shop.test"), 2);
}

#[test]
fn every_dialect_reads_back_as_the_enforced_budget() {
    for d in ALL_DIALECTS {
        // Each vendor with the algorithm it is known for.
        let algorithm = match d {
            Dialect::Shopify => Algorithm::LeakyBucket {
                drain_per_sec: SLOW_DRAIN,
            },
            Dialect::Anthropic | Dialect::IetfStructured => Algorithm::SlidingWindow,
            _ => Algorithm::FixedWindow,
        };
        let o = QuotaOrigin::start(quota(algorithm, 2, d));
        let host = "dialect.test";
        let rs: Vec<RawResponse> = (0..3).map(|_| get(&o, host, &[])).collect();
        assert_eq!(
            rs.iter().map(|r| r.status).collect::<Vec<_>>(),
            [200, 200, 429],
            "{d:?}"
        );
        for (r, want_remaining) in rs.iter().zip([1, 0, 0]) {
            let (b, all) = request_budget(d, r);
            assert_eq!(b.limit, Some(2), "{d:?}: {b:?}");
            assert_eq!(b.remaining, Some(want_remaining), "{d:?}: {b:?}");
            match d {
                Dialect::Shopify => assert!(b.drain_per_sec.is_some(), "{d:?}: {b:?}"),
                _ => {
                    let reset = b
                        .reset_in
                        .unwrap_or_else(|| panic!("{d:?}: no reset {b:?}"));
                    assert!(reset <= WINDOW + Duration::from_secs(2), "{d:?}: {b:?}");
                }
            }
            match d {
                Dialect::GitHub | Dialect::Discord | Dialect::IetfStructured => {
                    assert_eq!(b.bucket.as_deref(), Some(BUCKET), "{d:?}: {b:?}")
                }
                _ => {}
            }
            if d == Dialect::IetfStructured {
                assert_eq!(b.window, Some(WINDOW), "{d:?}: {b:?}");
            }
            let retry = all
                .iter()
                .find(|b| b.dialect == dialects::Dialect::RetryAfter);
            if r.status == 429 {
                let retry = retry.unwrap_or_else(|| panic!("{d:?}: 429 without Retry-After"));
                assert!(retry.reset_in.is_some_and(|t| !t.is_zero()), "{d:?}");
            } else {
                assert!(retry.is_none(), "{d:?}: Retry-After on a 200");
            }
        }
        assert_eq!(o.count_ok(host), 2, "{d:?}");
        assert_eq!(o.count_429(host), 1, "{d:?}");
    }
}

#[test]
fn vendor_specific_header_shapes() {
    // GitHub: used, epoch-seconds reset, resource.
    let o = QuotaOrigin::start(quota(Algorithm::FixedWindow, 5, Dialect::GitHub));
    let r = get(&o, "gh.test", &[]);
    assert_eq!(r.header("x-ratelimit-used"), Some("1"));
    assert_eq!(r.header("x-ratelimit-resource"), Some(BUCKET));
    let reset: f64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1e9..1e12).contains(&reset), "epoch seconds: {reset}");
    assert!(!r.header("x-ratelimit-reset").unwrap().contains('.'));

    // OpenAI: Go duration reset, retry-after-ms on 429.
    let o = QuotaOrigin::start(quota(Algorithm::FixedWindow, 1, Dialect::OpenAi));
    let r = get(&o, "oai.test", &[]);
    let reset = r.header("x-ratelimit-reset-requests").unwrap().to_string();
    assert!(reset.ends_with('s') && !reset.contains(' '), "{reset}");
    assert!(
        dialects::parse_go_duration(&reset, SystemTime::now()).is_some(),
        "{reset}"
    );
    let r = get(&o, "oai.test", &[]);
    assert_eq!(r.status, 429);
    let ms: f64 = r.header("retry-after-ms").unwrap().parse().unwrap();
    assert!(ms > 0.0);

    // Anthropic: RFC 3339 UTC reset.
    let o = QuotaOrigin::start(quota(Algorithm::FixedWindow, 1, Dialect::Anthropic));
    let r = get(&o, "ant.test", &[]);
    let reset = r.header("anthropic-ratelimit-requests-reset").unwrap();
    assert!(reset.ends_with('Z') && reset.contains('T'), "{reset}");

    // Discord: float reset-after, bucket, scope and JSON retry_after on 429.
    let o = QuotaOrigin::start(quota(Algorithm::FixedWindow, 1, Dialect::Discord));
    let r = get(&o, "dc.test", &[]);
    let after: f64 = r
        .header("x-ratelimit-reset-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(after > 0.0 && after <= 60.0, "{after}");
    assert!(r.header("x-ratelimit-reset-after").unwrap().contains('.'));
    assert_eq!(r.header("x-ratelimit-bucket"), Some(BUCKET));
    let r = get(&o, "dc.test", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-scope"), Some("user"));
    let body = r.json();
    assert!(
        body["retry_after"].as_f64().is_some_and(|s| s > 0.0),
        "{body}"
    );
    assert_eq!(body["global"], false);
}

#[test]
fn credentials_get_separate_budgets() {
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::LeakyBucket {
            drain_per_sec: SLOW_DRAIN,
        },
    ] {
        let o = QuotaOrigin::start(Quota {
            credential_header: Some("Authorization"),
            ..quota(algorithm, 2, Dialect::GitHub)
        });
        let host = "cred.test";
        let a = [("Authorization", "Bearer a")];
        let b = [("authorization", "Bearer b")];
        let st = |h: &[(&str, &str)], n: usize| -> Vec<u16> {
            (0..n).map(|_| get(&o, host, h).status).collect()
        };
        assert_eq!(st(&a, 3), [200, 200, 429], "{algorithm:?}");
        // B starts with a full budget of its own.
        let first_b = get(&o, host, &b);
        assert_eq!(first_b.status, 200, "{algorithm:?}");
        assert_eq!(first_b.header("x-ratelimit-remaining"), Some("1"));
        assert_eq!(st(&b, 2), [200, 429], "{algorithm:?}");
        // No credential: a third budget.
        assert_eq!(st(&[], 1), [200], "{algorithm:?}");
        // A is still exhausted.
        assert_eq!(st(&a, 1), [429], "{algorithm:?}");

        assert_eq!(o.count_ok_for(host, "Bearer a"), 2);
        assert_eq!(o.count_429_for(host, "Bearer a"), 2);
        assert_eq!(o.count_ok_for(host, "Bearer b"), 2);
        assert_eq!(o.count_429_for(host, "Bearer b"), 1);
        assert_eq!(o.count_ok_for(host, ""), 1);
        assert_eq!(o.count_ok(host), 5);
        assert_eq!(o.count_429(host), 3);
    }

    // Without a credential header configured, credentials share one budget.
    let o = QuotaOrigin::start(quota(Algorithm::FixedWindow, 2, Dialect::IetfTrio));
    assert_eq!(get(&o, "shared.test", &[("x-api-key", "k1")]).status, 200);
    assert_eq!(get(&o, "shared.test", &[("x-api-key", "k2")]).status, 200);
    assert_eq!(get(&o, "shared.test", &[("x-api-key", "k3")]).status, 429);
    assert_eq!(o.count_ok_for("shared.test", ""), 2);
}

#[test]
fn go_durations_format_like_go_and_parse_back() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(12), "12ms"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_secs(360), "6m0s"),
        (Duration::from_secs(3723), "1h2m3s"),
        (Duration::from_secs(3600), "1h0m0s"),
    ];
    for (d, want) in cases {
        assert_eq!(go_duration(d), want);
        assert_eq!(
            dialects::parse_go_duration(want, SystemTime::now()),
            Some(d),
            "{want}"
        );
    }
}
