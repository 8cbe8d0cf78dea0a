//! Asynchronous DNS with a cache, plus `[resolve]` static overrides.
//!
//! CONTRACT: `Resolver::new(&Config) -> Result<Resolver, ResolveInitError>`;
//! `Resolver::resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError>` (async; IP
//! literals returned as-is, overrides first, then cached lookups).
//!
//! Why this exists: pingora resolves a peer given by name with a blocking
//! `to_socket_addrs().unwrap()` (it blocks a worker and panics on a DNS
//! failure), so the pipeline always hands it an address from here.
//!
//! Lookups use hickory (pure-Rust stub resolver) with the system
//! configuration (`/etc/resolv.conf`, incl. search domains, plus the hosts
//! file) and hickory's TTL-honouring cache. Unlike `getaddrinfo` on the
//! blocking pool, a hickory lookup can be bounded in time without leaving a
//! stuck thread behind, and its cache follows record TTLs.
//!
//! hickory spawns its connection tasks on whichever tokio runtime first uses
//! them; pingora runs each service on its own runtime(s) and the resolver is
//! shared by all of them. So every lookup runs on one small dedicated runtime
//! thread ("ezthrottle-dns"), started on first use: the resolver then works
//! from any runtime, and `Resolver::new` needs no runtime at all (it is
//! called before pingora starts one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

use crate::config::Config;

/// Per-query timeout towards one name server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per name server.
const ATTEMPTS: usize = 2;
/// Hard bound on one whole lookup (all servers, search domains, A + AAAA),
/// so a dead name server turns into a prompt error, never a hang.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// How long "no such host" is remembered, so a flood of requests to a bad
/// name does not turn into a flood of DNS queries.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Bound on remembered bad names (host names are client-controlled).
const MAX_NEGATIVE: usize = 10_000;
/// Upper bound on how long hickory keeps an answer, whatever its TTL says.
const POSITIVE_MAX_TTL: Duration = Duration::from_secs(300);
/// Names cached by hickory.
const CACHE_SIZE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist or has no A/AAAA records.
    #[error("no address found for {host}")]
    NotFound { host: String },
    /// DNS could not answer (timeout, unreachable server, ...).
    #[error("looking up {host} failed: {reason}")]
    Failed { host: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResolveInitError(String);

/// The lookup engine, started on first use.
struct Engine {
    resolver: TokioResolver,
    handle: tokio::runtime::Handle,
    /// Dropping this stops the DNS thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub struct Resolver {
    /// `[resolve]` overrides, keys lower-cased.
    overrides: HashMap<String, IpAddr>,
    /// Started once (`OnceLock` makes concurrent first callers wait, so only
    /// one DNS thread is ever spawned).
    engine: OnceLock<Result<Engine, String>>,
    /// Names recently found not to exist, with their expiry.
    negative: DashMap<String, Instant>,
    /// Where queries go; tests point this at a server that never answers.
    upstream: Upstream,
    /// Bound on one whole lookup (`LOOKUP_DEADLINE`; shorter in tests).
    deadline: Duration,
}

#[derive(Debug, Clone)]
enum Upstream {
    /// `/etc/resolv.conf` + hosts file.
    System,
    /// Explicit UDP name servers with a per-query timeout (tests only).
    #[cfg(test)]
    Servers(Vec<std::net::SocketAddr>, Duration),
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Cheap and runtime-free: the DNS machinery starts on the first lookup.
    pub fn new(config: &Config) -> Result<Resolver, ResolveInitError> {
        Ok(Self::with_overrides(
            config.resolve.iter().map(|(h, ip)| (h.clone(), *ip)),
        ))
    }

    fn with_overrides(overrides: impl IntoIterator<Item = (String, IpAddr)>) -> Resolver {
        Resolver {
            overrides: overrides
                .into_iter()
                .map(|(h, ip)| (normalize_name(&h), ip))
                .collect(),
            engine: OnceLock::new(),
            negative: DashMap::new(),
            upstream: Upstream::System,
            deadline: LOOKUP_DEADLINE,
        }
    }

    /// The addresses of `host`: a name, or an IP literal (IPv6 with or without
    /// brackets). Never panics on odd input: a client chose this string.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        // Only a host with a colon (IPv6) or ending in a digit (IPv4) can
        // be an address: names skip std's parser (it tries both).
        let may_be_ip = bare.contains(':') || bare.ends_with(|c: char| c.is_ascii_digit());
        if let Some(ip) = may_be_ip.then(|| bare.parse::<IpAddr>().ok()).flatten() {
            return Ok(vec![ip]);
        }
        let name = normalize_name(bare);
        if let Some(ip) = self.overrides.get(&name) {
            return Ok(vec![*ip]);
        }
        if !plausible_name(&name) {
            return Err(ResolveError::NotFound { host: shown(host) });
        }
        if let Some(until) = self.negative.get(&name).map(|e| *e) {
            if until > Instant::now() {
                return Err(ResolveError::NotFound { host: name });
            }
            self.negative.remove(&name);
        }

        let answer = self.lookup(&name).await;
        if let Err(ResolveError::NotFound { .. }) = &answer {
            if self.negative.len() >= MAX_NEGATIVE {
                let now = Instant::now();
                self.negative.retain(|_, until| *until > now);
                if self.negative.len() >= MAX_NEGATIVE {
                    self.negative.clear();
                }
            }
            self.negative.insert(name, Instant::now() + NEGATIVE_TTL);
        }
        answer
    }

    async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let failed = |reason: String| ResolveError::Failed {
            host: name.to_string(),
            reason,
        };
        let engine = self.engine().map_err(|e| failed(e.clone()))?;
        let resolver = engine.resolver.clone();
        let query = name.to_string();
        let deadline = self.deadline;
        let task = engine.handle.spawn(async move {
            tokio::time::timeout(deadline, resolver.lookup_ip(query.as_str())).await
        });
        match task.await {
            Ok(Ok(Ok(lookup))) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for ip in lookup.iter() {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                if ips.is_empty() {
                    Err(ResolveError::NotFound {
                        host: name.to_string(),
                    })
                } else {
                    Ok(ips)
                }
            }
            Ok(Ok(Err(e))) if e.is_nx_domain() || e.is_no_records_found() => {
                Err(ResolveError::NotFound {
                    host: name.to_string(),
                })
            }
            Ok(Ok(Err(e))) => Err(failed(e.to_string())),
            Ok(Err(_elapsed)) => Err(failed(format!("timed out after {deadline:?}"))),
            Err(e) => Err(failed(format!("DNS task ended: {e}"))),
        }
    }

    /// Starts the DNS thread and resolver once; a start-up failure is
    /// remembered and reported by every lookup (it will not fix itself).
    fn engine(&self) -> Result<&Engine, &String> {
        self.engine
            .get_or_init(|| start_engine(&self.upstream))
            .as_ref()
    }
}

fn start_engine(upstream: &Upstream) -> Result<Engine, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the DNS runtime: {e}"))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ezthrottle-dns".into())
        .spawn(move || {
            // Runs until the Resolver (and with it `stop`) is dropped; the
            // runtime is then dropped here, outside any async context.
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(|e| format!("cannot start the DNS thread: {e}"))?;
    Ok(Engine {
        resolver: build_resolver(upstream),
        handle,
        _stop: stop,
    })
}

fn build_resolver(upstream: &Upstream) -> TokioResolver {
    let (config, mut opts, timeout) = match upstream {
        Upstream::System => match hickory_resolver::system_conf::read_system_conf() {
            Ok((config, opts)) => (config, opts, QUERY_TIMEOUT),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system DNS configuration; using hickory's default name servers plus the hosts file");
                (
                    ResolverConfig::default(),
                    ResolverOpts::default(),
                    QUERY_TIMEOUT,
                )
            }
        },
        #[cfg(test)]
        Upstream::Servers(addrs, timeout) => {
            let group = hickory_resolver::config::NameServerConfigGroup::from_ips_clear(
                &addrs.iter().map(|a| a.ip()).collect::<Vec<_>>(),
                addrs.first().map(|a| a.port()).unwrap_or(53),
                false,
            );
            (
                ResolverConfig::from_parts(None, vec![], group),
                ResolverOpts::default(),
                *timeout,
            )
        }
    };
    opts.timeout = timeout;
    opts.attempts = ATTEMPTS;
    opts.use_hosts_file = ResolveHosts::Always;
    opts.cache_size = CACHE_SIZE;
    opts.positive_max_ttl = Some(POSITIVE_MAX_TTL);
    opts.negative_max_ttl = Some(NEGATIVE_TTL);
    let mut builder =
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
    *builder.options_mut() = opts;
    builder.build()
}

/// Lower-case; a trailing root dot is dropped so `a.test.` and `a.test` share
/// cache entries and overrides.
fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Rejects what can never be a DNS name before it reaches the resolver or a
/// cache: empty, over-long, or with characters outside letters, digits, `-`,
/// `_` and `.`.
fn plausible_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A client-supplied name made safe for error messages and logs.
fn shown(host: &str) -> String {
    let capped: String = host.chars().take(256).collect();
    format!("{capped:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    fn resolver() -> Resolver {
        Resolver::with_overrides([
            (
                "API.Internal.Test".to_string(),
                IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            ),
            (
                "localhost".to_string(),
                IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)),
            ),
        ])
    }

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Resolver>();
    }

    #[tokio::test]
    async fn ip_literals_are_returned_as_is() {
        let r = Resolver::with_overrides([]);
        assert_eq!(
            r.resolve("192.0.2.7").await,
            Ok(vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))])
        );
        assert_eq!(
            r.resolve("::1").await,
            Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
        assert_eq!(
            r.resolve("[::1]").await,
            Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
        assert_eq!(
            r.resolve("[2001:db8::1]").await,
            Ok(vec!["2001:db8::1".parse::<IpAddr>().expect("ip")])
        );
        // Literals never start the DNS machinery.
        assert!(r.engine.get().is_none());
    }

    #[tokio::test]
    async fn overrides_win_case_insensitively() {
        let r = resolver();
        let want = Ok(vec![IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))]);
        assert_eq!(r.resolve("api.internal.test").await, want);
        assert_eq!(r.resolve("API.INTERNAL.TEST").await, want);
        assert_eq!(r.resolve("api.internal.test.").await, want);
        // An override beats the hosts file too.
        assert_eq!(
            r.resolve("localhost").await,
            Ok(vec![IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))])
        );
        assert!(r.engine.get().is_none());
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let r = Resolver::with_overrides([]);
        let started = Instant::now();
        let ips = r.resolve("localhost").await.expect("localhost resolves");
        assert!(!ips.is_empty());
        assert!(ips.iter().all(|ip| ip.is_loopback()), "{ips:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Second time from the cache, same answer.
        assert_eq!(r.resolve("LocalHost").await.expect("again"), ips);
    }

    #[tokio::test]
    async fn nonexistent_name_fails_within_the_deadline() {
        let r = Resolver::with_overrides([]);
        let started = Instant::now();
        let err = r.resolve("nope.invalid").await.expect_err("must fail");
        assert!(
            started.elapsed() < LOOKUP_DEADLINE + Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        match &err {
            ResolveError::NotFound { host } | ResolveError::Failed { host, .. } => {
                assert_eq!(host, "nope.invalid")
            }
        }
    }

    #[tokio::test]
    async fn garbage_names_are_not_found_without_panicking() {
        let r = Resolver::with_overrides([]);
        let long = "a".repeat(300);
        for bad in [
            "",
            "[",
            "]",
            "[]",
            "[not an ip]",
            "a b",
            "a..b",
            "x/y",
            "host:443",
            "fe80::1%eth0",
            "nul\0.test",
            "ünïcode.test",
            long.as_str(),
        ] {
            let err = r.resolve(bad).await.expect_err(bad);
            assert!(
                matches!(err, ResolveError::NotFound { .. }),
                "{bad:?}: {err}"
            );
        }
        // None of them needed the network.
        assert!(r.engine.get().is_none());
    }

    #[tokio::test]
    async fn not_found_is_cached_briefly() {
        let r = Resolver::with_overrides([]);
        // RFC 6761: `.invalid` never exists; hickory answers it locally.
        let first = r.resolve("cached.invalid").await;
        if let Err(ResolveError::NotFound { .. }) = first {
            let until = r.negative.get("cached.invalid").map(|e| *e);
            let until = until.expect("negative entry");
            assert!(until > Instant::now() && until <= Instant::now() + NEGATIVE_TTL);
            assert!(matches!(
                r.resolve("CACHED.invalid").await,
                Err(ResolveError::NotFound { .. })
            ));
        } else {
            panic!("expected NotFound for a .invalid name, got {first:?}");
        }
    }

    #[tokio::test]
    async fn unresponsive_name_server_fails_in_bounded_time() {
        // A UDP socket that receives queries and never answers: the "name
        // server unreachable" case, which must become an error, not a hang.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let mut r = Resolver::with_overrides([]);
        let per_query = Duration::from_millis(300);
        r.upstream = Upstream::Servers(vec![addr], per_query);
        // Retries of A and AAAA add up to several `per_query`s; the overall
        // deadline must cut that short.
        r.deadline = Duration::from_millis(700);
        let started = Instant::now();
        let err = r.resolve("api.example.test").await.expect_err("no answer");
        let took = started.elapsed();
        match &err {
            ResolveError::Failed { host, reason } => {
                assert_eq!(host, "api.example.test");
                assert!(reason.contains("timed out"), "{reason}");
            }
            other => panic!("a timeout is not proof of non-existence: {other:?}"),
        }
        assert!(took >= r.deadline, "answered before the deadline: {took:?}");
        assert!(
            took < r.deadline + Duration::from_millis(700),
            "took {took:?}"
        );
        // The silent server really was asked.
        let mut buf = [0u8; 512];
        silent.set_nonblocking(true).expect("nonblocking");
        assert!(
            silent.recv_from(&mut buf).is_ok(),
            "no query reached the server"
        );
        // Failures are not cached as NotFound.
        assert!(r.negative.is_empty());
    }

    #[test]
    fn usable_from_several_runtimes() {
        // pingora runs services on separate runtimes that share one Resolver.
        let r = Arc::new(Resolver::with_overrides([]));
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            let ips = rt
                .block_on(r.resolve("localhost"))
                .expect("localhost resolves");
            assert!(ips.iter().all(|ip| ip.is_loopback()));
            drop(rt);
        }
        // Dropping the resolver (and its DNS runtime) inside async code must
        // not panic.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async move { drop(r) });
    }
}
