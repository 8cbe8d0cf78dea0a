//! Our own headers on the wire (SPEC §5–§7, §9): the names the proxy, the
//! job runner and apps share, in one place, so the pipeline and the job
//! runner (which sends every attempt through the pipeline) both depend on
//! this module instead of on each other.

/// Every header of ours starts so; none reaches an origin
/// (`pipeline/upstream.rs`) or is stored with a job's request.
pub const PREFIX: &str = "x-ezthrottle-";

/// How long a request may wait for admission (SPEC §5).
pub const MAX_WAIT_HEADER: &str = "x-ezthrottle-max-wait";

/// Limits an API states for itself (SPEC §5), read from its responses.
pub const RPS_HEADER: &str = "x-ezthrottle-rps";
pub const CONCURRENCY_HEADER: &str = "x-ezthrottle-max-concurrent";

/// Apps name their workspace (SPEC §6).
pub const WORKSPACE_HEADER: &str = "x-ezthrottle-workspace";

/// The job runner proves itself on the loopback hop through our own
/// listener: `job <token>` or `parked <token>` (see [`internal_value`] and
/// `pipeline::identify::caller`).
pub const INTERNAL_HEADER: &str = "x-ezthrottle-internal";

/// Marks a request as a job's attempt: it is never parked again.
pub const JOB_HEADER: &str = "x-ezthrottle-job";

/// A job's `retry_policy` (JSON), read by the pipeline from the runner only.
pub const RETRY_POLICY_HEADER: &str = "x-ezthrottle-retry-policy";

/// The region a job's attempt starts in (jobs name regions explicitly,
/// SPEC §9). Stripped with the other control headers.
pub const REGION_HEADER: &str = "x-ezthrottle-region";

/// The job runner's own control headers: believed only from it.
pub const RUNNER_HEADERS: &[&str] = &[JOB_HEADER, RETRY_POLICY_HEADER, REGION_HEADER];

/// Headers only some callers are believed on, counted when ignored
/// (`ezthrottle_untrusted_headers_ignored_total{header}`).
pub const IGNORABLE_HEADERS: &[&str] = &[
    WORKSPACE_HEADER,
    JOB_HEADER,
    RETRY_POLICY_HEADER,
    REGION_HEADER,
];

/// On every answer the proxy writes itself: its error code, so clients
/// (and the job runner) can tell the proxy's 429 from the origin's.
pub const ERROR_HEADER: &str = "x-ezthrottle-error";

/// On every forwarded response (SPEC §5): how long admission waited, and
/// how many upstream attempts were made.
pub const WAIT_MS_HEADER: &str = "x-ezthrottle-wait-ms";
pub const ATTEMPTS_HEADER: &str = "x-ezthrottle-attempts";

/// Parking (SPEC §7): where to deliver the result, and what to echo back.
pub const WEBHOOK_HEADER: &str = "x-ezthrottle-webhook";
pub const METADATA_HEADER: &str = "x-ezthrottle-metadata";

/// The [`INTERNAL_HEADER`] value the job runner sends.
/// Whether a request carries any `X-EZThrottle-*` header: one pass over its
/// header names, so that a request with none (nearly every one an app
/// sends) skips the eight hashed look-ups of the individual control headers
/// (~1.2k instructions a request; docs/performance.md, "The seventh pass").
pub fn any_control_header(headers: &http::HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().as_bytes().starts_with(PREFIX.as_bytes()))
}

/// `n` as a header value. The values our two response headers almost always
/// carry (a wait of `0` ms, `1` attempt: up to 15) come from a table of static
/// values; `HeaderValue::from(u64)` formats into a new allocation on every
/// response (docs/performance.md, "The seventh pass").
pub fn number_value(n: u64) -> http::HeaderValue {
    use http::HeaderValue as V;
    static SMALL: [V; 16] = [
        V::from_static("0"),
        V::from_static("1"),
        V::from_static("2"),
        V::from_static("3"),
        V::from_static("4"),
        V::from_static("5"),
        V::from_static("6"),
        V::from_static("7"),
        V::from_static("8"),
        V::from_static("9"),
        V::from_static("10"),
        V::from_static("11"),
        V::from_static("12"),
        V::from_static("13"),
        V::from_static("14"),
        V::from_static("15"),
    ];
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(v) => v.clone(),
        None => V::from(n),
    }
}

pub fn internal_value(parked: bool, token: &str) -> String {
    format!("{} {token}", if parked { "parked" } else { "job" })
}

/// The same names as parsed [`http::HeaderName`]s, for look-ups on the
/// request path: a look-up by `&str` parses and validates the name every
/// time (`HdrName::from_bytes`), one by `HeaderName` only hashes it. Every
/// request reads about ten of them, so this is measurable per request
/// (docs/performance.md). Statics, not consts: a custom name holds `Bytes`.
pub mod names {
    use http::HeaderName;

    pub static MAX_WAIT: HeaderName = HeaderName::from_static(super::MAX_WAIT_HEADER);
    pub static RPS: HeaderName = HeaderName::from_static(super::RPS_HEADER);
    pub static CONCURRENCY: HeaderName = HeaderName::from_static(super::CONCURRENCY_HEADER);
    pub static WORKSPACE: HeaderName = HeaderName::from_static(super::WORKSPACE_HEADER);
    pub static INTERNAL: HeaderName = HeaderName::from_static(super::INTERNAL_HEADER);
    pub static JOB: HeaderName = HeaderName::from_static(super::JOB_HEADER);
    pub static RETRY_POLICY: HeaderName = HeaderName::from_static(super::RETRY_POLICY_HEADER);
    pub static REGION: HeaderName = HeaderName::from_static(super::REGION_HEADER);
    pub static WEBHOOK: HeaderName = HeaderName::from_static(super::WEBHOOK_HEADER);
    pub static METADATA: HeaderName = HeaderName::from_static(super::METADATA_HEADER);
    pub static PREFER: HeaderName = HeaderName::from_static("prefer");
    pub static WAIT_MS: HeaderName = HeaderName::from_static(super::WAIT_MS_HEADER);
    pub static ATTEMPTS: HeaderName = HeaderName::from_static(super::ATTEMPTS_HEADER);
    /// `http`'s own, as a `static` for `insert_static_header` (a `const`
    /// is a new value at each use, so it cannot be lent as `'static`).
    pub static VIA: HeaderName = http::header::VIA;
    /// [`super::RUNNER_HEADERS`], in the same order.
    pub static RUNNER: [&HeaderName; 3] = [&JOB, &RETRY_POLICY, &REGION];

    #[cfg(test)]
    mod tests {
        /// Any `X-EZThrottle-` name counts, in any case as sent; others,
        /// even ones that contain the words, do not.
        #[test]
        fn control_headers_are_found_by_prefix() {
            use http::{HeaderMap, HeaderName, HeaderValue};
            let with = |names: &[&str]| {
                let mut h = HeaderMap::new();
                for n in names {
                    h.append(
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_static("v"),
                    );
                }
                super::super::any_control_header(&h)
            };
            assert!(!with(&[]));
            assert!(!with(&[
                "host",
                "accept",
                "x-ezthrottl",
                "x-my-ezthrottle-max-wait"
            ]));
            for name in super::super::RUNNER_HEADERS
                .iter()
                .chain(&[super::super::MAX_WAIT_HEADER, super::super::WEBHOOK_HEADER])
            {
                assert!(with(&["host", name]), "{name}");
            }
            assert!(with(&["X-EZThrottle-Internal"]));
        }

        /// Every number reads back as itself, through the table and past it.
        #[test]
        fn number_values_match_their_numbers() {
            for n in (0..40).chain([u64::from(u32::MAX), u64::MAX]) {
                let v = super::super::number_value(n);
                assert_eq!(v.to_str().unwrap(), n.to_string());
            }
        }

        /// Each parsed name is the string it stands for, so a look-up by
        /// either finds the same header.
        #[test]
        fn names_match_their_strings() {
            use super::super::*;
            let pairs = [
                (&super::MAX_WAIT, MAX_WAIT_HEADER),
                (&super::RPS, RPS_HEADER),
                (&super::CONCURRENCY, CONCURRENCY_HEADER),
                (&super::WORKSPACE, WORKSPACE_HEADER),
                (&super::INTERNAL, INTERNAL_HEADER),
                (&super::JOB, JOB_HEADER),
                (&super::RETRY_POLICY, RETRY_POLICY_HEADER),
                (&super::REGION, REGION_HEADER),
                (&super::WEBHOOK, WEBHOOK_HEADER),
                (&super::METADATA, METADATA_HEADER),
                (&super::WAIT_MS, WAIT_MS_HEADER),
                (&super::ATTEMPTS, ATTEMPTS_HEADER),
            ];
            for (name, s) in pairs {
                assert_eq!(name.as_str(), s);
            }
            for (name, s) in super::RUNNER.iter().zip(RUNNER_HEADERS) {
                assert_eq!(name.as_str(), *s);
            }
        }
    }
}
