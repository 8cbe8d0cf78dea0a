//! Per-connection and per-request state carried through the pipeline phases.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::idempotent::Keyed;
use super::park::ParkOptions;
use super::retry::RetryState;
use crate::admission::Permit;
use crate::error::ProxyError;
use crate::metrics::{DomainSeries, Metrics};
use crate::state::InFlightGuard;

/// What the front door knows about a downstream connection before pingora
/// parses a request on it. Handed to the pipeline through pingora's
/// connection user context (see `accept`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: Option<SocketAddr>,
    /// Set on intercepted connections: the authoritative CONNECT target.
    /// Shared: each request on the connection takes a copy of its
    /// `ConnInfo`, and this part would be allocated again each time.
    pub connect: Option<Arc<ConnectTarget>>,
}

tokio::task_local! {
    /// The connection an HTTP/2 stream arrived on. pingora's connection user
    /// context (how an HTTP/1.1 request gets its [`ConnInfo`]) exists only
    /// for HTTP/1, so each h2 stream's task carries it instead
    /// (`accept/http2.rs`); the pipeline reads it in `request_filter`.
    static STREAM_CONN: ConnInfo;
}

/// Run `f` (one h2 stream through the pipeline) with `conn` as its connection.
pub async fn with_stream_conn<F: std::future::Future>(conn: ConnInfo, f: F) -> F::Output {
    STREAM_CONN.scope(conn, f).await
}

/// The connection of the h2 stream this task serves, if it serves one.
pub fn stream_conn() -> Option<ConnInfo> {
    STREAM_CONN.try_with(Clone::clone).ok()
}

/// `CONNECT host:port` as the client sent it, host lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` on the CONNECT, if any (password masked in `Debug`).
    pub proxy_auth: Option<super::identify::ProxyCredentials>,
    /// What the client speaks inside: TLS (intercepted), or plain HTTP (a
    /// CONNECT to a plain-HTTP port, as undici's `EnvHttpProxyAgent` sends
    /// for `http://` URLs); decided from its first byte after the `200`.
    pub tls: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Lower-cased host without brackets; also the throttling domain.
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// Origin-form path and query to send upstream: the parsed form, which
    /// becomes the upstream request's URI as it is (no second parse, no
    /// copy; docs/performance.md, "The seventh pass").
    pub path_and_query: http::uri::PathAndQuery,
}

impl Target {
    /// The domain that limits, metrics and idempotency scopes key on
    /// (SPEC §1: lower-case host, port ignored).
    pub fn domain(&self) -> &str {
        &self.host
    }

    /// `host[:port]` as written in a URL or `Host` (port only when not the
    /// scheme's default, IPv6 in brackets).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The absolute URL of the request.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority(), self.path_and_query)
    }
}

/// State of one request through the pipeline.
pub struct RequestCtx {
    pub started: Instant,
    pub conn: Option<ConnInfo>,
    pub target: Option<Target>,
    pub workspace: std::borrow::Cow<'static, str>,
    /// A proxy client, or our own job runner (decides which control headers
    /// are believed and which egress policy applies).
    pub caller: super::identify::Caller,
    /// The request carries some `X-EZThrottle-*` header
    /// ([`crate::wire::any_control_header`]); when not, the phases skip
    /// looking each one up.
    pub control_headers: bool,
    /// How the request ends, decided by the phase that knew.
    pub outcome: Outcome,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Time spent waiting for admission.
    pub wait_ms: u64,
    pub upstream_started: Option<Instant>,
    pub upstream_status: Option<u16>,
    /// The domain's concurrency slot, held until the request is done (or,
    /// when an attempt ends early, until its upstream exchange has: see
    /// `admit::release_after_upstream`).
    pub permit: Option<Permit>,
    /// `host#<hash>` when the domain's budget is split per credential
    /// (`budget_key`) and the request carries one; else `None` (the domain).
    pub throttle: Option<String>,
    /// The HTTP/1 upstream connection of an attempt pingora dropped after an
    /// error, to follow to the end of its exchange (`admit::UpstreamConn`).
    pub upstream_conn: Option<super::admit::UpstreamConn>,
    /// Keeps the request counted as in flight until the context is dropped.
    pub inflight: Option<InFlightGuard>,
    /// Set while a request with an `Idempotency-Key` holds its key.
    pub keyed: Option<Keyed>,
    /// The whole request body, when it was read ahead (see `body.rs`).
    pub body: Option<Bytes>,
    /// That body's share of the process-wide buffer budget
    /// (`[proxy] max_buffered`), given back when the request ends.
    pub body_hold: Option<crate::mem_budget::Hold>,
    /// Retry policy and progress, set once the request is admitted.
    pub retry: Option<RetryState>,
    /// Set when the request may be parked (it named a webhook).
    pub park: Option<ParkOptions>,
    /// The domain's metric series, looked up once per request.
    series: std::sync::OnceLock<Arc<DomainSeries>>,
    /// The configuration this request runs under, taken on first use: a
    /// reload mid-request does not mix two configurations in one request,
    /// and the phases share one snapshot instead of a load each (~11
    /// loads, ~2k instructions per request; docs/performance.md).
    config: std::sync::OnceLock<Arc<crate::config::Config>>,
}

/// How a request ends. One value, so that no two phases can disagree (a
/// request both replayed and parked) and the record phase reads one thing.
#[derive(Debug, Default)]
pub enum Outcome {
    /// Nothing decided: the request goes (or went) upstream and its answer
    /// is delivered.
    #[default]
    Forwarded,
    /// Answered from the idempotency store.
    Replayed,
    /// To be parked: decided by a phase that cannot answer itself (pingora's
    /// error path, `fail_to_proxy`, parks it).
    ParkNow,
    /// It became this job (answered `202`).
    Parked(String),
    /// Answered, or to be answered, with this error.
    Failed(ProxyError),
}

impl Outcome {
    /// The error the request is answered with, if it failed.
    pub fn error(&self) -> Option<&ProxyError> {
        match self {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            conn: None,
            target: None,
            workspace: std::borrow::Cow::Borrowed("default"),
            caller: Default::default(),
            control_headers: false,
            outcome: Outcome::Forwarded,
            attempts: 0,
            wait_ms: 0,
            upstream_started: None,
            upstream_status: None,
            permit: None,
            throttle: None,
            upstream_conn: None,
            inflight: None,
            keyed: None,
            body: None,
            body_hold: None,
            retry: None,
            park: None,
            series: std::sync::OnceLock::new(),
            config: std::sync::OnceLock::new(),
        }
    }

    pub fn domain(&self) -> Option<&str> {
        self.target.as_ref().map(Target::domain)
    }

    /// The metric series of the request's domain (`None` before the
    /// target is known), resolved on first use and kept for the request.
    pub fn series(&self, metrics: &Metrics) -> Option<&Arc<DomainSeries>> {
        let domain = self.domain()?;
        Some(self.series.get_or_init(|| metrics.series(domain)))
    }

    /// The configuration of this request (see the field).
    pub fn config(&self, shared: &crate::state::Shared) -> Arc<crate::config::Config> {
        self.config
            .get_or_init(|| shared.config.load_full())
            .clone()
    }

    /// The throttle this request counts against: its domain, or the
    /// domain's budget for its credential (`admission::budget_key`).
    pub fn throttle(&self) -> Option<&str> {
        self.throttle.as_deref().or_else(|| self.domain())
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
