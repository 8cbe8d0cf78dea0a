//! `[proxy]`: the proxy listener, who may use it, timeouts and request-head limits.

use std::net::SocketAddr;
use std::time::Duration;

use super::load::{addr, nets, size, Ctx};
use super::raw::RawProxy;
use super::ConfigError;

/// pingora's own header-count ceiling (`MAX_HEADERS`); `max_headers` must
/// stay at or below it or pingora would refuse what we accepted.
pub const PINGORA_MAX_HEADERS: usize = 256;

/// pingora's own head-size ceiling (`MAX_HEADER_SIZE`).
pub const PINGORA_MAX_HEAD: usize = 1_048_575;

/// Size limits on one request head (`[proxy]` keys of the same names),
/// enforced by `accept::framing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadLimits {
    /// Longest request line, without its CRLF → `414`.
    pub max_request_line: usize,
    /// Longest single header line, without its CRLF → `431`.
    pub max_header_line: usize,
    /// Largest whole head, request line to the blank line included → `431`.
    pub max_head: usize,
    /// Most header lines → `431`.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_request_line: 8 * 1024,
            max_header_line: 16 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// Default `[proxy] max_buffered`.
pub const DEFAULT_MAX_BUFFERED: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// default 127.0.0.1:4000
    pub listen: SocketAddr,
    /// default [443]
    pub connect_ports: Vec<u16>,
    /// Client networks allowed to use the proxy; default loopback only
    /// (`["127.0.0.0/8", "::1/128"]`). Key `allow_clients`.
    pub allow_clients: Vec<ipnet::IpNet>,
    /// Longest time SIGTERM/SIGINT waits for in-flight requests; default 30s. Key `drain_timeout`.
    pub drain_timeout: Duration,
    /// Upstream TCP connect timeout; default 10s. Key `connect_timeout`.
    pub connect_timeout: Duration,
    /// Upstream read idle timeout; default 60s. Key `read_timeout`.
    pub read_timeout: Duration,
    /// A tunnel or an upgraded connection (WebSocket) that carries nothing
    /// either way for this long is closed; default 5m. Key `idle_timeout`.
    pub idle_timeout: Duration,
    /// Request-head limits, keys `max_request_line` (default 8KiB → 414),
    /// `max_header_line` (16KiB → 431), `max_head` (64KiB → 431) and
    /// `max_headers` (100 → 431); enforced by `accept::framing`.
    pub head_limits: HeadLimits,
    /// How long a request head may take from its first byte (and a new
    /// connection its first head) before `408`; default 30s. Key `head_timeout`.
    pub head_timeout: Duration,
    /// Process-wide cap on client bytes held in memory (unfinished heads,
    /// pipelined bytes, bodies read ahead); over it → `503`. Default 64MiB.
    /// Key `max_buffered`.
    pub max_buffered: u64,
    /// Worker threads of the proxy service; default: number of CPUs. Key `threads`.
    pub threads: usize,
    /// Clients whose `X-EZThrottle-Workspace` and Proxy-Authorization user are
    /// believed when `[control] api_keys` are set (otherwise only a verified
    /// key names the workspace). Default empty. Key `trusted_clients`.
    pub trusted_clients: Vec<ipnet::IpNet>,
}

pub(super) fn build(cx: &Ctx, p: &RawProxy) -> Result<ProxyConfig, ConfigError> {
    let listen = match &p.listen {
        Some(v) => addr(cx, "proxy.listen", v)?,
        None => SocketAddr::from(([127, 0, 0, 1], 4000)),
    };
    let connect_ports = match &p.connect_ports {
        // 80 too: some clients (undici's `EnvHttpProxyAgent`) CONNECT even
        // for `http://` URLs; what comes through is sniffed (`intercept.rs`).
        None => vec![443, 80],
        Some(v) if v.is_empty() => {
            return Err(cx.err("proxy.connect_ports", "must list at least one port"))
        }
        Some(v) => v
            .iter()
            .enumerate()
            .map(|(i, port)| {
                u16::try_from(*port).ok().filter(|p| *p > 0).ok_or_else(|| {
                    cx.err(
                        format!("proxy.connect_ports[{i}]"),
                        format!("must be a port 1-65535, got {port}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let allow_clients = match &p.allow_clients {
        None => default_allow_clients(),
        Some(v) => nets(cx, "proxy.allow_clients", v)?,
    };
    let trusted_clients = match &p.trusted_clients {
        None => Vec::new(),
        Some(v) => nets(cx, "proxy.trusted_clients", v)?,
    };
    let threads = match p.threads {
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            return Err(cx.err(
                "proxy.threads",
                format!("must be between 1 and 1024, got {n}"),
            ))
        }
    };
    let (head_limits, max_buffered) = head_limits(cx, p)?;
    Ok(ProxyConfig {
        head_limits,
        head_timeout: cx.positive_duration("proxy.head_timeout", &p.head_timeout, 30)?,
        max_buffered,
        listen,
        connect_ports,
        allow_clients,
        trusted_clients,
        drain_timeout: cx.positive_duration("proxy.drain_timeout", &p.drain_timeout, 30)?,
        connect_timeout: cx.positive_duration("proxy.connect_timeout", &p.connect_timeout, 10)?,
        read_timeout: cx.positive_duration("proxy.read_timeout", &p.read_timeout, 60)?,
        idle_timeout: cx.positive_duration("proxy.idle_timeout", &p.idle_timeout, 300)?,
        threads,
    })
}

pub(super) fn default_allow_clients() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `[proxy]` request-head limits and `max_buffered`: each within what
/// pingora itself accepts (so it never refuses a head we let through), and
/// consistent with each other.
fn head_limits(cx: &Ctx, p: &RawProxy) -> Result<(HeadLimits, u64), ConfigError> {
    let d = HeadLimits::default();
    let sized =
        |key: &str, v: &Option<toml::Value>, default: usize| -> Result<usize, ConfigError> {
            let Some(v) = v else { return Ok(default) };
            let n = size(cx, key, v)?;
            if !(64..=PINGORA_MAX_HEAD as u64).contains(&n) {
                return Err(cx.err(
                    key,
                    format!("must be between 64 bytes and {PINGORA_MAX_HEAD} bytes, got {n}"),
                ));
            }
            Ok(n as usize)
        };
    let limits = HeadLimits {
        max_request_line: sized(
            "proxy.max_request_line",
            &p.max_request_line,
            d.max_request_line,
        )?,
        max_header_line: sized(
            "proxy.max_header_line",
            &p.max_header_line,
            d.max_header_line,
        )?,
        max_head: sized("proxy.max_head", &p.max_head, d.max_head)?,
        max_headers: match p.max_headers {
            None => d.max_headers,
            Some(n) if (1..=PINGORA_MAX_HEADERS as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(cx.err(
                    "proxy.max_headers",
                    format!("must be between 1 and {PINGORA_MAX_HEADERS}, got {n}"),
                ))
            }
        },
    };
    for (key, v) in [
        ("proxy.max_request_line", limits.max_request_line),
        ("proxy.max_header_line", limits.max_header_line),
    ] {
        if v > limits.max_head {
            return Err(cx.err(
                key,
                format!("{v} is larger than proxy.max_head ({})", limits.max_head),
            ));
        }
    }
    let max_buffered = match &p.max_buffered {
        None => DEFAULT_MAX_BUFFERED as u64,
        Some(v) => size(cx, "proxy.max_buffered", v)?,
    };
    if max_buffered < limits.max_head as u64 {
        return Err(cx.err(
            "proxy.max_buffered",
            format!(
                "{max_buffered} is smaller than proxy.max_head ({}): not even one head would fit",
                limits.max_head
            ),
        ));
    }
    Ok((limits, max_buffered))
}
