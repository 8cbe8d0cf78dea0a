//! Request framing and limits: every request head on the proxy port (plain
//! or decrypted inside an intercepted CONNECT) is read and checked here
//! before pingora sees a byte of it.
//!
//! Why not let pingora parse heads: it accepts heads up to 1 MiB, grows its
//! buffer for as long as a client trickles bytes, forwards list-valued or
//! oversized `Content-Length` verbatim (`3, 3` reached the origin, followed
//! by the next request on the same upstream connection) and answers every
//! parse failure with a bare `400`. So the front door reads the head itself,
//! with limits, a deadline and a process-wide memory budget, refuses what it
//! must with our JSON error, and hands pingora exactly one checked request:
//! the head, then only the body bytes that the framing says belong to it
//! ([`Framed`]: `Content-Length` counted, chunked followed to its last
//! chunk). Bytes after the end of the request (a pipelined next request)
//! stay with us and are checked as the next head, which is also what makes
//! pipelining work: pingora drops a connection on which it read past the
//! end of a request, and with it the requests behind.
//!
//! What is refused, and why:
//! - `Content-Length` repeated, a list (`3, 3`, even equal values), with a
//!   sign or anything but digits, or above [`MAX_CONTENT_LENGTH`]; both
//!   `Content-Length` and `Transfer-Encoding`; any `Transfer-Encoding` but a
//!   single `chunked` (HTTP/1.0 may not use it): `400 invalid_framing`. Two
//!   parsers that disagree on where a body ends is request smuggling.
//! - Lines not ending in CRLF (bare LF or CR), obs-fold, NUL, a malformed
//!   request line or header, more than one `Host`, `Host` differing from an
//!   absolute target: `400 bad_request`.
//! - Request line over `max_request_line`: `414`; a header line over
//!   `max_header_line`, a head over `max_head`, more than `max_headers`
//!   headers: `431` — as soon as the limit is passed, not at the end.
//! - A head not complete within `head_timeout` of its first byte: `408`.
//! - A head (or pipelined bytes, or a body read ahead) that would take the
//!   process past `max_buffered`: `503 proxy_overloaded`.
//!
//! [`inspect_head`] is a pure function over bytes and must never panic: a
//! fuzz harness calls it with arbitrary input.

use crate::config::HeadLimits;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::deadline::HeadDeadline;
use crate::error::ProxyError;

/// The largest `Content-Length` we accept: what a signed 64-bit length (the
/// widest that common origins and libraries parse) can hold. Anything larger
/// is either an attack or a mistake.
pub const MAX_CONTENT_LENGTH: u64 = i64::MAX as u64;

/// How the body of a checked request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What [`inspect_head`] learned about a complete, acceptable head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    /// Offset of the request line (empty lines before it are skipped, as
    /// RFC 9112 §2.2 allows).
    pub start: usize,
    /// Offset just past the blank line that ends the head.
    pub end: usize,
    /// `CONNECT host:port`.
    pub is_connect: bool,
    /// An HTTP/1.1 `Upgrade` request: after a `101` the connection carries
    /// other bytes, so nothing after the head is framed by us.
    pub upgrade: bool,
    pub body: BodyFraming,
}

/// Why a head is not (yet) acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Not an error of the client: the head has not ended yet.
    #[error("the request head is incomplete")]
    Incomplete,
    #[error("the request line is longer than {limit} bytes")]
    RequestLineTooLong { limit: usize },
    #[error("a header line is longer than {limit} bytes")]
    HeaderLineTooLong { limit: usize },
    #[error("the request head is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("the request has more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    /// Broken syntax: request line, header names or values, line endings.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// Ambiguous or unsupported body framing (`Content-Length`, `Transfer-Encoding`).
    #[error("{0}")]
    Framing(String),
}

impl FramingError {
    /// The answer to the client.
    pub fn to_proxy_error(&self) -> ProxyError {
        match self {
            FramingError::RequestLineTooLong { limit } => {
                ProxyError::RequestLineTooLong { limit: *limit }
            }
            FramingError::HeaderLineTooLong { .. }
            | FramingError::HeadTooLarge { .. }
            | FramingError::TooManyHeaders { .. } => {
                ProxyError::RequestHeaderTooLarge(self.to_string())
            }
            FramingError::Framing(m) => ProxyError::InvalidFraming(m.clone()),
            FramingError::Malformed(_) | FramingError::Incomplete => {
                ProxyError::BadRequest(self.to_string())
            }
        }
    }
}

/// Finds the end of a head in a growing buffer, checking the size limits
/// on the way, so that a slow or huge head is refused as soon as it breaks
/// a limit and each byte is looked at once (no quadratic rescans while a
/// client trickles a head in).
#[derive(Debug, Default, Clone)]
pub struct HeadScanner {
    /// Next byte to look at.
    pos: usize,
    /// Start of the line being read.
    line_start: usize,
    /// Start of the request line (after skipped empty lines).
    start: usize,
    /// Whether the request line has been read.
    seen_request_line: bool,
    /// Header lines read so far.
    headers: usize,
}

impl HeadScanner {
    /// Look at the bytes of `buf` not seen yet (`buf` only ever grows between
    /// calls). `Ok(Some(end))` once the head is complete.
    pub fn feed(&mut self, buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, FramingError> {
        while self.pos < buf.len() {
            // To the next LF or NUL in one vectorised search, not byte by
            // byte (~1.5k instructions per head before).
            let Some(off) = memchr::memchr2(b'\n', 0, &buf[self.pos..]) else {
                self.pos = buf.len();
                break;
            };
            let i = self.pos + off;
            self.pos = i + 1;
            if buf[i] == 0 {
                return Err(FramingError::Malformed(
                    "NUL byte in the request head".into(),
                ));
            }
            // A line ends at LF; it must be CRLF (a bare LF is read differently
            // by different parsers: the classic smuggling lever).
            let line = &buf[self.line_start..i];
            let Some(content) = line.strip_suffix(b"\r") else {
                return Err(FramingError::Malformed(
                    "line ends with a bare LF; lines must end with CRLF".into(),
                ));
            };
            if memchr::memchr(b'\r', content).is_some() {
                return Err(FramingError::Malformed(
                    "bare CR in the request head".into(),
                ));
            }
            self.line_start = i + 1;
            if !self.seen_request_line {
                if content.is_empty() {
                    self.start = i + 1;
                    continue;
                }
                if content.len() > limits.max_request_line {
                    return Err(FramingError::RequestLineTooLong {
                        limit: limits.max_request_line,
                    });
                }
                self.seen_request_line = true;
            } else if content.is_empty() {
                if i + 1 > limits.max_head {
                    return Err(FramingError::HeadTooLarge {
                        limit: limits.max_head,
                    });
                }
                return Ok(Some(i + 1));
            } else {
                if content.len() > limits.max_header_line {
                    return Err(FramingError::HeaderLineTooLong {
                        limit: limits.max_header_line,
                    });
                }
                if matches!(content.first(), Some(b' ' | b'\t')) {
                    return Err(FramingError::Malformed(
                        "obsolete line folding (a header line starting with whitespace)".into(),
                    ));
                }
                self.headers += 1;
                if self.headers > limits.max_headers {
                    return Err(FramingError::TooManyHeaders {
                        limit: limits.max_headers,
                    });
                }
            }
        }
        // Incomplete: the line being read and the whole buffer must still fit.
        let partial = buf.len() - self.line_start;
        if !self.seen_request_line {
            // +1: the CR of a line that is exactly at the limit.
            if partial > limits.max_request_line + 1 {
                return Err(FramingError::RequestLineTooLong {
                    limit: limits.max_request_line,
                });
            }
        } else if partial > limits.max_header_line + 1 {
            return Err(FramingError::HeaderLineTooLong {
                limit: limits.max_header_line,
            });
        }
        if buf.len() > limits.max_head {
            return Err(FramingError::HeadTooLarge {
                limit: limits.max_head,
            });
        }
        Ok(None)
    }

    /// Offset of the request line.
    pub fn start(&self) -> usize {
        self.start
    }
}

/// Check a request head at the start of `buf`: size limits, syntax and body
/// framing. `Err(Incomplete)` when `buf` holds no complete head yet (and no
/// limit is broken so far). Pure and panic-free on any input.
pub fn inspect_head(buf: &[u8], limits: &HeadLimits) -> Result<HeadInfo, FramingError> {
    let mut scanner = HeadScanner::default();
    let end = scanner.feed(buf, limits)?.ok_or(FramingError::Incomplete)?;
    check_head(buf, scanner.start(), end)
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes of a client's value for an error message: short and printable.
fn shown(v: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(v).chars().take(40).collect();
    format!("{s:?}")
}

/// Optional whitespace (SP / HTAB) trimmed from both ends.
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else {
        return &[];
    };
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A complete head `buf[start..end]` (lines already checked by the scanner).
fn check_head(buf: &[u8], start: usize, end: usize) -> Result<HeadInfo, FramingError> {
    let head = buf.get(start..end).unwrap_or_default();
    let line_end = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| FramingError::Malformed("no request line".into()))?;
    // The scanner guaranteed CRLF.
    let request_line = head.get(..line_end.saturating_sub(1)).unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(FramingError::Malformed(
            "the request line must be METHOD SP target SP HTTP-version".into(),
        ));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(FramingError::Malformed("invalid method".into()));
    }
    // Controls and spaces never belong in a target; other bytes pingora
    // percent-escapes itself.
    if target.is_empty() || target.iter().any(|b| *b < 0x21 || *b == 0x7f) {
        return Err(FramingError::Malformed("invalid request target".into()));
    }
    // pingora escapes non-ASCII targets only when they are UTF-8 (its
    // request-line pattern does not match other bytes) and refuses the rest
    // with a bare 400 (fuzzing finding F1): refuse them here, with our JSON.
    if std::str::from_utf8(target).is_err() {
        return Err(FramingError::Malformed(
            "the request target is not valid UTF-8".into(),
        ));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        other => {
            return Err(FramingError::Malformed(format!(
                "unsupported HTTP version {}",
                shown(other)
            )))
        }
    };
    let block = head.get(line_end + 1..).unwrap_or_default();
    let count = block.iter().filter(|b| **b == b'\n').count();
    // Most heads fit the slots on the stack; a longer one gets as many as
    // it has lines, on the heap (an allocation a request saved; issue 17).
    let mut on_stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut on_heap = Vec::new();
    let storage: &mut [httparse::Header] = if count <= STACK_HEADERS {
        &mut on_stack[..count.max(1)]
    } else {
        on_heap.resize(count, httparse::EMPTY_HEADER);
        &mut on_heap
    };
    let headers = match httparse::parse_headers(block, storage) {
        Ok(httparse::Status::Complete((_, headers))) => headers,
        Ok(httparse::Status::Partial) => {
            return Err(FramingError::Malformed("incomplete header section".into()))
        }
        Err(e) => return Err(FramingError::Malformed(format!("invalid header: {e}"))),
    };

    let mut lengths = Seen::default();
    let mut codings = Seen::default();
    let mut hosts = Seen::default();
    let mut upgrade = false;
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.add(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.add(h.value);
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts.add(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = !http10;
        }
    }
    let is_connect = method == b"CONNECT";

    let body = match (lengths.values(), codings.values()) {
        ([], []) => BodyFraming::None,
        ([_, ..], [_, ..]) => {
            return Err(FramingError::Framing(
                "the request has both Content-Length and Transfer-Encoding".into(),
            ))
        }
        ([one], []) => BodyFraming::Length(content_length(one)?),
        ([_, _, ..], []) => {
            return Err(FramingError::Framing(
                "the request has more than one Content-Length header".into(),
            ))
        }
        ([], [one]) => {
            if http10 {
                return Err(FramingError::Framing(
                    "Transfer-Encoding is not allowed in an HTTP/1.0 request".into(),
                ));
            }
            let coding = trim_ows(one);
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::Framing(format!(
                    "unsupported Transfer-Encoding {}: only \"chunked\" is accepted",
                    shown(one)
                )));
            }
            BodyFraming::Chunked
        }
        ([], [_, _, ..]) => {
            return Err(FramingError::Framing(
                "the request has more than one Transfer-Encoding header".into(),
            ))
        }
    };
    if is_connect && body != BodyFraming::None && body != BodyFraming::Length(0) {
        return Err(FramingError::Framing(
            "a CONNECT request has no body".into(),
        ));
    }
    if hosts.count > 1 {
        return Err(FramingError::Malformed("more than one Host header".into()));
    }
    if !is_connect && !plainly_agrees(method, target, hosts.first()) {
        let target = target_as_pingora_sees_it(request_line, target);
        authority_agrees(method, &target, hosts.first())?;
    }
    Ok(HeadInfo {
        start,
        end,
        is_connect,
        upgrade,
        body,
    })
}

/// Header slots [`check_head`]'s parse keeps on the stack (a request from
/// curl or a client library has 3–12 headers).
const STACK_HEADERS: usize = 16;

/// The values of one header name in a head, as far as the checks need
/// them: the first two, and how many there were. Three `Vec`s were an
/// allocation a request (`Host`) for what a slice pattern reads.
#[derive(Default)]
struct Seen<'a> {
    first_two: [&'a [u8]; 2],
    count: usize,
}

impl<'a> Seen<'a> {
    fn add(&mut self, value: &'a [u8]) {
        if let Some(slot) = self.first_two.get_mut(self.count) {
            *slot = value;
        }
        self.count += 1;
    }

    /// The values seen, the first two at most: enough to tell none, one
    /// and more than one apart.
    fn values(&self) -> &[&'a [u8]] {
        &self.first_two[..self.count.min(2)]
    }

    fn first(&self) -> Option<&'a [u8]> {
        self.values().first().copied()
    }
}

/// One `Content-Length` value: digits only (no sign, no list, no spaces
/// inside), at most [`MAX_CONTENT_LENGTH`].
fn content_length(value: &[u8]) -> Result<u64, FramingError> {
    let v = trim_ows(value);
    if v.contains(&b',') {
        return Err(FramingError::Framing(format!(
            "Content-Length {} is a list; send exactly one length",
            shown(value)
        )));
    }
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(FramingError::Framing(format!(
            "Content-Length {} is not a non-negative decimal number",
            shown(value)
        )));
    }
    let too_large = || {
        FramingError::Framing(format!(
            "Content-Length {} is larger than {MAX_CONTENT_LENGTH}",
            shown(value)
        ))
    };
    let mut n: u64 = 0;
    for d in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or_else(too_large)?;
    }
    if n > MAX_CONTENT_LENGTH {
        return Err(too_large());
    }
    Ok(n)
}

/// Bytes a plain request target may hold (see [`plainly_agrees`]):
/// unreserved, sub-delims, `:`, `/`, `?`, `@` and `%`.
const PLAIN_URI_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = crate::pipeline::identify::uri_unreserved_or_sub_delim(b)
            || matches!(b, b':' | b'/' | b'?' | b'@' | b'%');
        i += 1;
    }
    t
};

/// The common request, seen to pass [`authority_agrees`] without building
/// a pingora request for it (that build, and the request line parsed again
/// before it, were ~2% of a proxied request's CPU): an upper-case method,
/// a target of plain URI characters, and either origin form with a Host
/// free of user-info, or `http(s)://` with a plain `host[:port]` authority
/// that the Host (if any) repeats exactly. Anything else takes the full
/// check; `false` only means "not sure".
fn plainly_agrees(method: &[u8], target: &[u8], host: Option<&[u8]>) -> bool {
    // A table, not a chain of comparisons per byte (this scan was ~700
    // instructions per request).
    let uri_char = |b: &u8| PLAIN_URI_CHAR[usize::from(*b)];
    let host_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.');
    // `name[:port]`, the port at most 65535.
    let plain_authority = |a: &[u8]| {
        let (name, port) = match a.iter().position(|b| *b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        };
        !name.is_empty()
            && name.iter().all(host_char)
            && port.is_none_or(|p| {
                !p.is_empty()
                    && p.len() <= 5
                    && p.iter().all(u8::is_ascii_digit)
                    && p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65_535
            })
    };
    if method.is_empty()
        || !method.iter().all(u8::is_ascii_uppercase)
        || !target.iter().all(uri_char)
    {
        return false;
    }
    if target.first() == Some(&b'/') {
        return host.is_none_or(plain_authority);
    }
    let Some(rest) = target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))
    else {
        return false;
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    plain_authority(authority) && host.is_none_or(|h| h == authority)
}

/// pingora percent-escapes a target that httparse refuses (quotes, angle
/// brackets, non-ASCII bytes) before it builds the request; do the same so
/// the check below sees what pingora will.
fn target_as_pingora_sees_it<'a>(
    request_line: &[u8],
    target: &'a [u8],
) -> std::borrow::Cow<'a, [u8]> {
    let mut line = Vec::with_capacity(request_line.len() + 4);
    line.extend_from_slice(request_line);
    line.extend_from_slice(b"\r\n\r\n");
    let mut no_headers: [httparse::Header<'_>; 0] = [];
    match httparse::Request::new(&mut no_headers).parse(&line) {
        Err(httparse::Error::Token | httparse::Error::Version) => {
            let mut out = Vec::with_capacity(target.len() + 16);
            for &b in target {
                if !(0x20..0x7f).contains(&b) || matches!(b, b' ' | b'<' | b'>' | b'"') {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                } else {
                    out.push(b);
                }
            }
            std::borrow::Cow::Owned(out)
        }
        _ => std::borrow::Cow::Borrowed(target),
    }
}

/// The rules pingora applies to the target and `Host` before any hook runs
/// (its answer would be a bare `400`): pingora's own check, run here so the
/// client gets our JSON instead.
fn authority_agrees(method: &[u8], target: &[u8], host: Option<&[u8]>) -> Result<(), FramingError> {
    let method = std::str::from_utf8(method).unwrap_or("GET");
    let bad = |e: Box<pingora::Error>| {
        let why = e
            .context
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_else(|| e.etype.as_str().to_string());
        FramingError::Malformed(why)
    };
    let mut req = pingora::http::RequestHeader::build(method, target, Some(1)).map_err(bad)?;
    if let Some(host) = host {
        let value = http::HeaderValue::from_bytes(host)
            .map_err(|_| FramingError::Malformed("invalid Host header".into()))?;
        req.append_header(http::header::HOST, value).map_err(bad)?;
    }
    pingora::protocols::http::authority::validate_request_authority(&req).map_err(bad)
}

// The process-wide budget for bytes held on behalf of clients lives in its
// own module (`crate::mem_budget`), shared with the pipeline's read-ahead.
pub use crate::mem_budget::{budget, set_budget_cap, BudgetFull, Hold, MemBudget};

/// Bytes read from a client and not yet handed on, with their budget.
#[derive(Debug)]
pub struct Pending {
    bytes: BytesMut,
    hold: Hold,
}

impl Pending {
    pub fn new(budget: &Arc<MemBudget>) -> Pending {
        Pending {
            bytes: BytesMut::new(),
            hold: Hold::new(budget),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// Append client bytes, taking their memory from the budget.
    pub fn extend(&mut self, data: &[u8]) -> Result<(), BudgetFull> {
        let want = self.bytes.len() + data.len();
        // Account for what the buffer will really allocate.
        let cap = self
            .bytes
            .capacity()
            .max(want.next_power_of_two().min(want * 2));
        self.hold.set(cap.max(want))?;
        self.bytes.extend_from_slice(data);
        let real = self.bytes.capacity();
        // A smaller real allocation gives back; a larger one is rare and tiny.
        let _ = self.hold.set(real);
        Ok(())
    }

    /// Take everything, leaving an empty buffer that holds no memory.
    pub fn take_all(&mut self) -> BytesMut {
        let out = std::mem::take(&mut self.bytes);
        let _ = self.hold.set(0);
        out
    }

    /// Replace the contents with bytes already in memory (read past the
    /// end of a head): they are accounted even beyond the cap, which is
    /// enforced when bytes are read, not when they change hands.
    pub fn refill(&mut self, bytes: BytesMut) {
        self.take_all();
        if bytes.is_empty() {
            return;
        }
        self.hold.force(bytes.capacity());
        self.bytes = bytes;
    }
}

// ---------------------------------------------------------------------------
// Reading a head from a connection

/// Deadlines for reading one head.
#[derive(Debug, Clone, Copy)]
pub struct HeadTimeouts {
    /// How long to wait for the first byte of the head (keep-alive idle time).
    pub idle: Duration,
    /// How long the head may take once its first byte arrived → `408`.
    pub head: Duration,
}

/// Outcome of [`read_head`].
#[derive(Debug)]
pub enum HeadRead {
    /// `pending` starts with this checked head.
    Head(HeadInfo),
    /// Nothing to answer: the client closed or stayed idle, or we shut down.
    Closed,
    /// Answer this error and close.
    Refuse(ProxyError),
}

/// Read until `pending` starts with a complete head, enforcing the limits,
/// the deadlines and the budget. Bytes already in `pending` (pipelined
/// after the previous request) are used first. When the connection is idle
/// nothing is allocated: the buffer grows only as bytes arrive. `deadline`
/// is the connection's one timer (`deadline.rs`), armed here only when a
/// wait is due: a complete pipelined head costs no clock read.
pub async fn read_head(
    stream: &mut Stream,
    pending: &mut Pending,
    limits: &HeadLimits,
    timeouts: HeadTimeouts,
    deadline: &mut HeadDeadline,
    shutdown: &ShutdownWatch,
) -> HeadRead {
    let mut scanner = HeadScanner::default();
    let mut shutdown = shutdown.clone();
    // Which deadline the next wait is under: the idle one until the head's
    // first byte, then `head` from that byte (or from now, for a head begun
    // in bytes read with the previous request); `None` once armed.
    let mut due = Some(if pending.is_empty() {
        timeouts.idle
    } else {
        timeouts.head
    });
    loop {
        if !pending.is_empty() {
            match scanner.feed(pending.as_slice(), limits) {
                Ok(Some(end)) => {
                    return match check_head(pending.as_slice(), scanner.start(), end) {
                        Ok(info) => HeadRead::Head(info),
                        Err(e) => HeadRead::Refuse(e.to_proxy_error()),
                    }
                }
                Ok(None) => {}
                Err(e) => return HeadRead::Refuse(e.to_proxy_error()),
            }
        } else if *shutdown.borrow() {
            return HeadRead::Closed;
        }
        if let Some(after) = due.take() {
            deadline.arm(after);
        }
        let was_empty = pending.is_empty();
        // The read first, as `tokio::time::timeout` polls its future first:
        // bytes that are there win over a deadline that passed meanwhile.
        let read = tokio::select! {
            biased;
            r = read_into(stream, pending) => Some(r),
            _ = deadline.passed() => None,
            _ = shutdown.changed(), if was_empty => return HeadRead::Closed,
        };
        match read {
            None if was_empty => return HeadRead::Closed,
            None => {
                return HeadRead::Refuse(ProxyError::RequestHeadTimeout {
                    secs: timeouts.head.as_secs().max(1),
                })
            }
            Some(Got::End) => return HeadRead::Closed,
            Some(Got::Full) => return HeadRead::Refuse(ProxyError::Overloaded),
            Some(Got::Bytes) => {
                if was_empty {
                    // Armed when (if) the head turns out incomplete.
                    due = Some(timeouts.head);
                }
            }
        }
    }
}

/// What one [`read_into`] did.
enum Got {
    /// Bytes appended to `pending`.
    Bytes,
    /// End of file or a read error.
    End,
    /// The budget refused the bytes.
    Full,
}

/// Read once from `stream` into `pending`. The read buffer lives on the
/// stack of one poll only, not in the future: a connection waiting for its
/// next head (or for its request to be admitted, since the connection's
/// future is as large as its largest state) carries no 4 KiB array.
fn read_into<'a>(
    stream: &'a mut Stream,
    pending: &'a mut Pending,
) -> impl std::future::Future<Output = Got> + 'a {
    std::future::poll_fn(move |cx| {
        // Uninitialised: zeroing 4 KiB on every poll showed up as a memset
        // per read (docs/performance.md); `ReadBuf` tracks what was filled.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut rb = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Got::End),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Got::End),
            Poll::Ready(Ok(())) => Poll::Ready(match pending.extend(rb.filled()) {
                Ok(()) => Got::Bytes,
                Err(BudgetFull) => Got::Full,
            }),
        }
    })
}

/// How long a refused connection is still read (and the bytes dropped)
/// after our answer, so that the client reads the answer instead of a reset
/// caused by the unread rest of its oversized head.
const LINGER: Duration = Duration::from_secs(2);

/// Write `err` as our JSON answer with `Connection: close`, half-close, and
/// drain what the client still sends for a short while before closing.
pub async fn refuse_and_close(stream: &mut Stream, err: &ProxyError) {
    use tokio::io::AsyncWriteExt;
    let bytes = crate::pipeline::respond::error_bytes(err);
    if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = AsyncWriteExt::shutdown(stream).await;
    let drain = async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Put bytes read past a CONNECT head back in front of the connection, for
/// the tunnel or the TLS handshake that follows (clients that do not wait
/// for our `200`). `None` if they cannot be put back (the outer connection
/// is always an L4 stream, so this does not happen): close then.
pub fn unread(stream: Stream, bytes: &[u8]) -> Option<Stream> {
    use pingora::protocols::l4::stream::Stream as L4Stream;
    if bytes.is_empty() {
        return Some(stream);
    }
    if !stream.as_any().is::<L4Stream>() {
        return None;
    }
    let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
    l4.rewind(bytes);
    Some(l4)
}

// ---------------------------------------------------------------------------
// The stream pingora reads from

/// Finds the end of a chunked body as bytes stream past, with the same
/// chunk-size parser as pingora (`httparse::parse_chunk_size`), so that the
/// bytes after the last chunk — a pipelined request — are kept for us and
/// not read (and then dropped, with the connection) by pingora.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTracker {
    state: ChunkState,
    /// The chunk-size or trailer line being read.
    line: Vec<u8>,
    /// Trailer bytes so far (bounded by `max_trailers`).
    trailers: usize,
    max_trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    Done,
}

/// Longest chunk-size line (size and extensions) we follow.
const MAX_CHUNK_LINE: usize = 4096;

impl ChunkTracker {
    pub fn new(max_trailers: usize) -> ChunkTracker {
        ChunkTracker {
            state: ChunkState::Size,
            line: Vec::new(),
            trailers: 0,
            max_trailers,
        }
    }

    /// The last chunk and the trailer section have been seen.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// How many leading bytes of `data` still belong to the body (all of
    /// them unless the body ends inside `data`).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, String> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataCr | ChunkState::DataLf => {
                    let want = if self.state == ChunkState::DataCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if data[i] != want {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    i += 1;
                    self.state = if want == b'\r' {
                        ChunkState::DataLf
                    } else {
                        ChunkState::Size
                    };
                }
                ChunkState::Size | ChunkState::Trailer => {
                    let b = data[i];
                    i += 1;
                    self.line.push(b);
                    if self.state == ChunkState::Trailer {
                        self.trailers += 1;
                        if self.trailers > self.max_trailers {
                            return Err("chunked trailers too large".into());
                        }
                    } else if self.line.len() > MAX_CHUNK_LINE {
                        return Err("chunk-size line too long".into());
                    }
                    if b != b'\n' {
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    if self.state == ChunkState::Trailer {
                        if !line.ends_with(b"\r\n") {
                            return Err("bare LF in chunked trailers".into());
                        }
                        // pingora refuses a CR not followed by LF (fuzzing
                        // finding F3); so do we, or we would disagree on
                        // where the request ends.
                        if line[..line.len() - 2].contains(&b'\r') {
                            return Err("bare CR in chunked trailers".into());
                        }
                        if line.len() == 2 {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    match httparse::parse_chunk_size(&line) {
                        Ok(httparse::Status::Complete((_, 0))) => self.state = ChunkState::Trailer,
                        Ok(httparse::Status::Complete((_, n))) => self.state = ChunkState::Data(n),
                        Ok(httparse::Status::Partial) | Err(_) => {
                            return Err("invalid chunk size".into())
                        }
                    }
                }
            }
        }
        Ok(i)
    }
}

/// How many more bytes of the current request pingora may still read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Window {
    /// This many body bytes remain.
    Length(u64),
    /// A chunked body, until the tracker sees its end.
    Chunked(ChunkTracker),
    /// An upgrade (after a `101` the connection carries other bytes), or a
    /// chunked body we could not follow: pass everything through. pingora
    /// re-frames bodies itself and does not reuse a connection on which it
    /// read past the end of a request, so nothing can be smuggled this way.
    Open,
}

/// The client connection as pingora sees it for one request: first the
/// checked head (and any body bytes we already read), then the body straight
/// from the socket — but never past the end of the request. What the client
/// sends after that is kept in `stash` for the next [`read_head`]; a read
/// by pingora there (its idle probe while the upstream answers) only sees
/// end-of-file, or waits.
pub struct Framed {
    inner: Stream,
    ready: BytesMut,
    window: Window,
    stash: Pending,
    stash_max: usize,
    /// The budget refused the stash: read nothing more until the request ends.
    stalled: bool,
    /// An upgrade's `[proxy] idle_timeout` (`idle.rs`); boxed, as plain
    /// connections, the many, never have one.
    idle: Option<Box<super::idle::IdleWatch>>,
}

impl std::fmt::Debug for Framed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framed")
            .field("inner", &self.inner)
            .field("ready", &self.ready.len())
            .field("window", &self.window)
            .field("stash", &self.stash.len())
            .finish()
    }
}

impl Framed {
    /// `head` is the checked head, `rest` what followed it in our buffer.
    /// `stash` (empty) receives the bytes beyond the request.
    pub fn new(
        inner: Stream,
        head: BytesMut,
        mut rest: BytesMut,
        info: &HeadInfo,
        mut stash: Pending,
        stash_max: usize,
    ) -> Framed {
        let mut ready = head;
        let window = if info.upgrade {
            ready.unsplit(rest);
            Window::Open
        } else if info.body == BodyFraming::Chunked {
            let mut tracker = ChunkTracker::new(stash_max);
            match tracker.feed(&rest) {
                Ok(n) => {
                    let after = rest.split_off(n);
                    ready.unsplit(rest);
                    stash.refill(after);
                    Window::Chunked(tracker)
                }
                // pingora's own parser will refuse it and not reuse the connection.
                Err(_) => {
                    ready.unsplit(rest);
                    Window::Open
                }
            }
        } else {
            let len = match info.body {
                BodyFraming::Length(n) => n,
                _ => 0,
            };
            let now = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
            let after = rest.split_off(now);
            ready.unsplit(rest);
            stash.refill(after);
            Window::Length(len - now as u64)
        };
        Framed {
            inner,
            ready,
            window,
            stash,
            stash_max,
            stalled: false,
            idle: None,
        }
    }

    /// Close the connection once it carries nothing either way for
    /// `timeout` (an upgrade: after its `101` it is a long-lived byte pipe).
    pub fn watch_idle(&mut self, timeout: Duration) {
        self.idle = Some(Box::new(super::idle::IdleWatch::new(timeout)));
    }

    /// Back to the connection and the bytes received after the request.
    pub fn into_parts(self) -> (Stream, Pending) {
        (self.inner, self.stash)
    }

    /// Read body bytes of a chunked request, stopping at its last chunk.
    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Read straight into pingora's buffer, then give back (to the
        // stash) whatever lies past the last chunk.
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let got = &buf.filled()[before..];
        if got.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let Window::Chunked(tracker) = &mut self.window else {
            return Poll::Ready(Ok(()));
        };
        let n = tracker
            .feed(got)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if n < got.len() {
            // Already in memory: account it, do not refuse it.
            let mut rest = std::mem::take(&mut self.stash.bytes);
            rest.extend_from_slice(&got[n..]);
            self.stash.refill(rest);
            buf.set_filled(before + n);
        }
        if n == 0 {
            // Nothing of this read was body (cannot happen before the end,
            // which is checked first); never report an empty read as EOF.
            return self.poll_after_end(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// The request is over: read what the client sends next into the stash
    /// (bounded), and report only end-of-file to pingora.
    fn poll_after_end(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.stalled || self.stash.len() >= self.stash_max {
                // Enough for any head; the rest waits in the socket. pingora
                // only probes here while it also waits for the upstream.
                return Poll::Pending;
            }
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
            let mut rb = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        // End of file: tell pingora.
                        return Poll::Ready(Ok(()));
                    }
                    if self.stash.extend(got).is_err() {
                        // The budget is spent: these bytes are already here
                        // (keep them), read no more until the request ends.
                        let mut rest = std::mem::take(&mut self.stash.bytes);
                        rest.extend_from_slice(got);
                        self.stash.refill(rest);
                        self.stalled = true;
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for Framed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.ready.is_empty() {
            let n = this.ready.len().min(buf.remaining());
            buf.put_slice(&this.ready[..n]);
            this.ready.advance(n);
            if this.ready.is_empty() {
                // Free the head's allocation now.
                this.ready = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        match this.window {
            Window::Open => {
                let before = buf.filled().len();
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                match &mut this.idle {
                    Some(w) => w.after_read(cx, before, buf, r),
                    None => r,
                }
            }
            Window::Chunked(ref t) if t.done() => this.poll_after_end(cx),
            Window::Chunked(_) => this.poll_chunked(cx, buf),
            Window::Length(0) => this.poll_after_end(cx),
            // The whole buffer fits in the window: read straight into it.
            Window::Length(left) if buf.remaining() as u64 <= left => {
                let before = buf.filled().len();
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                if let Poll::Ready(Ok(())) = r {
                    let n = buf.filled().len() - before;
                    this.window = Window::Length(left - n as u64);
                }
                r
            }
            // The tail of the body: read no more than what is left of it.
            Window::Length(left) => {
                let max = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining());
                let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
                let max = max.min(chunk.len());
                let mut rb = ReadBuf::uninit(&mut chunk[..max]);
                match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let got = rb.filled();
                        buf.put_slice(got);
                        this.window = Window::Length(left - got.len() as u64);
                        Poll::Ready(Ok(()))
                    }
                    other => other,
                }
            }
        }
    }
}

impl AsyncWrite for Framed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        match &mut this.idle {
            Some(w) => w.after_write(r),
            None => r,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match &mut this.idle {
            Some(w) => w.after_write(r),
            None => r,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Framed {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Framed {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Framed {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Framed {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Framed {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Framed {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

// Peeking is not offered: pingora must read through the window.
impl Peek for Framed {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut must never let through what the full check refuses:
    /// random targets and Hosts from an alphabet of the edge characters.
    #[test]
    fn the_authority_shortcut_only_passes_what_the_full_check_passes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let pieces: [&[u8]; 22] = [
            b"http://",
            b"https://",
            b"HTTP://",
            b"/",
            b"a.test",
            b":80",
            b":65536",
            b":",
            b"@",
            b"?",
            b"#",
            b"%",
            b"%zz",
            b"\\",
            b"[::1]",
            b"x",
            b"-",
            b"_",
            b"\"",
            b" ",
            b"\x7f",
            b"\xc3\xa9",
        ];
        let mut passed = 0;
        for _ in 0..50_000 {
            let mut target = Vec::new();
            for _ in 0..rng.gen_range(1..6) {
                target.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
            }
            let host: Option<Vec<u8>> = match rng.gen_range(0..3) {
                0 => None,
                1 => Some(b"a.test:80".to_vec()),
                _ => {
                    let mut h = Vec::new();
                    for _ in 0..rng.gen_range(1..4) {
                        h.extend_from_slice(pieces[rng.gen_range(4..pieces.len())]);
                    }
                    Some(h)
                }
            };
            for method in [&b"GET"[..], b"get", b"G@T"] {
                if !plainly_agrees(method, &target, host.as_deref()) {
                    continue;
                }
                passed += 1;
                let mut line = method.to_vec();
                line.push(b' ');
                line.extend_from_slice(&target);
                line.extend_from_slice(b" HTTP/1.1");
                let seen = target_as_pingora_sees_it(&line, &target);
                assert!(
                    authority_agrees(method, &seen, host.as_deref()).is_ok(),
                    "{:?} {:?} {:?}",
                    String::from_utf8_lossy(method),
                    String::from_utf8_lossy(&target),
                    host.as_deref().map(String::from_utf8_lossy)
                );
            }
        }
        // The shortcut is taken often enough to matter (and to be tested).
        assert!(passed > 500, "{passed}");
        assert!(plainly_agrees(
            b"GET",
            b"http://bench.test:8080/x?y=1",
            Some(b"bench.test:8080")
        ));
        assert!(plainly_agrees(b"POST", b"/v1/charges", Some(b"api.test")));
        assert!(!plainly_agrees(b"GET", b"http://a.test/", Some(b"b.test")));
        assert!(!plainly_agrees(b"GET", b"http://u@a.test/", None));
    }

    fn small() -> HeadLimits {
        HeadLimits {
            max_request_line: 32,
            max_header_line: 24,
            max_head: 128,
            max_headers: 3,
        }
    }

    fn inspect(head: &str) -> Result<HeadInfo, FramingError> {
        inspect_head(head.as_bytes(), &HeadLimits::default())
    }

    fn framing_err(head: &str) -> String {
        match inspect(head) {
            Err(FramingError::Framing(m)) => m,
            other => panic!("expected a framing error for {head:?}, got {other:?}"),
        }
    }

    fn malformed(head: &[u8]) -> String {
        match inspect_head(head, &HeadLimits::default()) {
            Err(FramingError::Malformed(m)) => m,
            other => panic!("expected malformed for {head:?}, got {other:?}"),
        }
    }

    fn with_cl(v: &str) -> String {
        format!("POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: {v}\r\n\r\n")
    }

    #[test]
    fn a_plain_get() {
        let h = "GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let info = inspect(h).unwrap();
        assert_eq!((info.start, info.end), (0, h.len()));
        assert_eq!(info.body, BodyFraming::None);
        assert!(!info.is_connect && !info.upgrade);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        let h =
            "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\nGET http://b.test/ HTTP/1.1\r\n";
        let info = inspect(h).unwrap();
        assert_eq!(&h[info.end..], "GET http://b.test/ HTTP/1.1\r\n");
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let h = "\r\n\r\nGET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let info = inspect(h).unwrap();
        assert_eq!(info.start, 4);
    }

    #[test]
    fn incomplete_heads_wait() {
        assert_eq!(inspect(""), Err(FramingError::Incomplete));
        assert_eq!(
            inspect("GET http://a.test/ HTTP/1.1\r\nHost: a"),
            Err(FramingError::Incomplete)
        );
        assert_eq!(
            inspect("GET http://a.test/ HTTP/1.1\r\n\r"),
            Err(FramingError::Incomplete)
        );
    }

    #[test]
    fn content_length_single_decimal_only() {
        assert_eq!(inspect(&with_cl("3")).unwrap().body, BodyFraming::Length(3));
        assert_eq!(inspect(&with_cl("0")).unwrap().body, BodyFraming::Length(0));
        assert_eq!(
            inspect(&with_cl(" 7 ")).unwrap().body,
            BodyFraming::Length(7)
        );
        assert_eq!(
            inspect(&with_cl("007")).unwrap().body,
            BodyFraming::Length(7)
        );
        assert_eq!(
            inspect(&with_cl("9223372036854775807")).unwrap().body,
            BodyFraming::Length(MAX_CONTENT_LENGTH)
        );
        assert!(framing_err(&with_cl("3, 3")).contains("list"));
        assert!(framing_err(&with_cl("3,4")).contains("list"));
        assert!(framing_err(&with_cl("3,")).contains("list"));
        for bad in ["-1", "+3", "abc", "0x10", "3 3", "1e3", "3.0"] {
            assert!(
                framing_err(&with_cl(bad)).contains("not a non-negative"),
                "{bad}"
            );
        }
        assert!(framing_err(&with_cl("")).contains("not a non-negative"));
        // 2^63 (the reported reproduction), 2^64-1, and past u64.
        for big in [
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999",
        ] {
            assert!(framing_err(&with_cl(big)).contains("larger than"), "{big}");
        }
    }

    #[test]
    fn repeated_content_length_is_refused_even_when_equal() {
        let h = "POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n";
        assert!(framing_err(h).contains("more than one Content-Length"));
    }

    #[test]
    fn content_length_and_transfer_encoding_together() {
        let h = "POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(framing_err(h).contains("both"));
    }

    fn with_te(v: &str) -> String {
        format!("POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: {v}\r\n\r\n")
    }

    #[test]
    fn only_chunked_transfer_encoding() {
        assert_eq!(
            inspect(&with_te("chunked")).unwrap().body,
            BodyFraming::Chunked
        );
        assert_eq!(
            inspect(&with_te("Chunked ")).unwrap().body,
            BodyFraming::Chunked
        );
        for bad in [
            "chunked, gzip",
            "gzip",
            "gzip, chunked",
            "identity",
            "chunked;x=1",
            "",
            "chunked,",
        ] {
            assert!(
                framing_err(&with_te(bad)).contains("unsupported"),
                "{bad:?}"
            );
        }
        let twice = "POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(framing_err(twice).contains("more than one Transfer-Encoding"));
        let http10 =
            "POST http://a.test/ HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(framing_err(http10).contains("HTTP/1.0"));
    }

    #[test]
    fn connect_has_no_body() {
        let ok = "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n";
        assert!(inspect(ok).unwrap().is_connect);
        let bad = "CONNECT a.test:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert!(framing_err(bad).contains("CONNECT"));
    }

    #[test]
    fn upgrade_requests_are_marked() {
        let h = "GET http://a.test/ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert!(inspect(h).unwrap().upgrade);
    }

    #[test]
    fn request_line_limit_exact_and_one_past() {
        let l = small();
        // "GET /<pad> HTTP/1.1" is exactly 32 bytes.
        let at = format!("GET /{} HTTP/1.1", "a".repeat(32 - 14));
        assert_eq!(at.len(), 32);
        let past = format!("GET /{} HTTP/1.1", "a".repeat(32 - 13));
        assert!(inspect_head(format!("{at}\r\n\r\n").as_bytes(), &l).is_ok());
        assert_eq!(
            inspect_head(format!("{past}\r\n\r\n").as_bytes(), &l),
            Err(FramingError::RequestLineTooLong { limit: 32 })
        );
        // Refused before the line ends, as soon as it cannot fit any more.
        assert_eq!(
            inspect_head(format!("GET /{}", "a".repeat(40)).as_bytes(), &l),
            Err(FramingError::RequestLineTooLong { limit: 32 })
        );
        // An unfinished line at exactly the limit (plus its CR) still waits.
        assert_eq!(
            inspect_head(format!("{at}\r").as_bytes(), &l),
            Err(FramingError::Incomplete)
        );
    }

    #[test]
    fn header_line_limit_exact_and_one_past() {
        let l = small();
        let at = format!("X-A: {}", "v".repeat(24 - 5));
        assert_eq!(at.len(), 24);
        let past = format!("X-A: {}", "v".repeat(24 - 4));
        assert!(inspect_head(format!("GET / HTTP/1.1\r\n{at}\r\n\r\n").as_bytes(), &l).is_ok());
        assert_eq!(
            inspect_head(format!("GET / HTTP/1.1\r\n{past}\r\n\r\n").as_bytes(), &l),
            Err(FramingError::HeaderLineTooLong { limit: 24 })
        );
        // A header that keeps growing is refused without waiting for its end.
        let growing = format!("GET / HTTP/1.1\r\nX-A: {}", "v".repeat(100));
        assert_eq!(
            inspect_head(growing.as_bytes(), &l),
            Err(FramingError::HeaderLineTooLong { limit: 24 })
        );
        let e = FramingError::HeaderLineTooLong { limit: 24 }.to_proxy_error();
        assert_eq!((e.status(), e.code()), (431, "request_header_too_large"));
    }

    /// Heads on both sides of the stack's slots: the checks see every
    /// header, the last one included, whether the slots were on the stack
    /// or on the heap; a repeated header is counted however many came.
    #[test]
    fn every_header_is_checked_on_both_sides_of_the_stack_slots() {
        for filler in [STACK_HEADERS - 2, STACK_HEADERS - 1, STACK_HEADERS, 40] {
            let head = |last: &str| {
                format!(
                    "POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\n{}{last}\r\n\r\n",
                    "X-Fill: 1\r\n".repeat(filler)
                )
            };
            let lines = filler + 2;
            assert_eq!(
                inspect(&head("Content-Length: 7")).map(|i| i.body),
                Ok(BodyFraming::Length(7)),
                "{lines} header lines"
            );
            assert!(
                matches!(inspect(&head("Host: a.test")), Err(FramingError::Malformed(m)) if m.contains("more than one Host")),
                "{lines} header lines"
            );
            assert!(
                matches!(inspect(&head("Host: b.test\r\nHost: c.test")), Err(FramingError::Malformed(m)) if m.contains("more than one Host")),
                "{lines} header lines and three Hosts"
            );
            assert!(
                matches!(inspect(&head("Content-Length: 1\r\nContent-Length: 1\r\nContent-Length: 1")), Err(FramingError::Framing(m)) if m.contains("more than one Content-Length")),
                "{lines} header lines and three Content-Lengths"
            );
            assert!(
                matches!(inspect(&head("Transfer-Encoding: chunked")), Ok(i) if i.body == BodyFraming::Chunked),
                "{lines} header lines"
            );
        }
    }

    #[test]
    fn header_count_exact_and_one_past() {
        let l = small();
        let three = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(inspect_head(three.as_bytes(), &l).is_ok());
        let four = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            inspect_head(four.as_bytes(), &l),
            Err(FramingError::TooManyHeaders { limit: 3 })
        );
        // 10,000 headers with the defaults.
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: 1\r\n".repeat(10_000));
        assert_eq!(
            inspect(&many),
            Err(FramingError::TooManyHeaders { limit: 100 })
        );
    }

    #[test]
    fn whole_head_limit_exact_and_one_past() {
        let l = HeadLimits {
            max_request_line: 64,
            max_header_line: 64,
            max_head: 64,
            max_headers: 10,
        };
        let base = "GET / HTTP/1.1\r\n"; // 16
        let fill = |n: usize| format!("{base}X: {}\r\n\r\n", "v".repeat(n));
        // 16 + 3 + n + 2 + 2 = 64 → n = 41
        assert_eq!(fill(41).len(), 64);
        assert!(inspect_head(fill(41).as_bytes(), &l).is_ok());
        assert_eq!(
            inspect_head(fill(42).as_bytes(), &l),
            Err(FramingError::HeadTooLarge { limit: 64 })
        );
        // Partial heads past the limit are refused too.
        let partial =
            format!("{base}A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 12345678");
        assert!(partial.len() > 64);
        assert_eq!(
            inspect_head(partial.as_bytes(), &l),
            Err(FramingError::HeadTooLarge { limit: 64 })
        );
    }

    #[test]
    fn syntax_edges() {
        // obs-fold
        assert!(malformed(b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n").contains("folding"));
        assert!(malformed(b"GET / HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n").contains("folding"));
        // bare LF, anywhere
        assert!(malformed(b"GET / HTTP/1.1\nHost: a\r\n\r\n").contains("bare LF"));
        assert!(malformed(b"GET / HTTP/1.1\r\nHost: a\n\n").contains("bare LF"));
        assert!(malformed(b"GET / HTTP/1.1\r\nHost: a\r\n\n").contains("bare LF"));
        // bare CR
        assert!(malformed(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n").contains("bare CR"));
        // NUL in a value, a name, the request line; refused before the end
        assert!(malformed(b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n").contains("NUL"));
        assert!(malformed(b"GET /\0 HTTP/1.1\r\n").contains("NUL"));
        // request line shapes
        assert!(malformed(b"GET  / HTTP/1.1\r\n\r\n").contains("METHOD SP"));
        assert!(malformed(b"GET / HTTP/1.1 x\r\n\r\n").contains("METHOD SP"));
        assert!(malformed(b"GET /\x01 HTTP/1.1\r\n\r\n").contains("target"));
        assert!(malformed(b"G(T / HTTP/1.1\r\n\r\n").contains("method"));
        assert!(malformed(b"GET / HTTP/2.0\r\n\r\n").contains("version"));
        assert!(malformed(b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n").contains("header"));
        assert!(malformed(b"GET / HTTP/1.1\r\nX : 1\r\n\r\n").contains("header"));
        assert!(malformed(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n").contains("header"));
    }

    #[test]
    fn host_rules_pingora_would_enforce() {
        assert!(malformed(b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n").contains("Host"));
        assert!(malformed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").contains("Host"));
        assert!(malformed(b"GET http://u@a.test/ HTTP/1.1\r\n\r\n").contains("userinfo"));
        // Absolute-form without Host is fine; Host equal to the authority too.
        assert!(inspect("GET http://a.test:8080/ HTTP/1.1\r\nHost: a.test:8080\r\n\r\n").is_ok());
        assert!(inspect("GET http://a.test/ HTTP/1.1\r\n\r\n").is_ok());
    }

    #[test]
    fn byte_at_a_time_matches_all_at_once() {
        let h = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\nbody";
        let l = HeadLimits::default();
        let mut sc = HeadScanner::default();
        let mut end = None;
        for n in 1..=h.len() {
            if let Some(e) = sc.feed(&h[..n], &l).unwrap() {
                end = Some(e);
                break;
            }
        }
        assert_eq!(end, Some(h.len() - 4));
        assert_eq!(inspect_head(h, &l).unwrap().end, h.len() - 4);
    }

    /// Fed in two parts split anywhere, the scanner says what it says on
    /// the whole head: the same end, or the same refusal (a NUL, bare LF
    /// or bare CR on either side of the split).
    #[test]
    fn any_split_matches_all_at_once() {
        let l = HeadLimits::default();
        let heads: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
        ];
        for h in heads {
            let whole = HeadScanner::default().feed(h, &l);
            for k in 0..=h.len() {
                let mut sc = HeadScanner::default();
                let split = match sc.feed(&h[..k], &l) {
                    Ok(Some(end)) => Ok(Some(end)),
                    Ok(None) => sc.feed(h, &l),
                    Err(e) => Err(e),
                };
                assert_eq!(
                    split,
                    whole,
                    "{:?} split at {k}",
                    String::from_utf8_lossy(h)
                );
            }
        }
    }

    #[test]
    fn errors_become_our_json_answers() {
        let cases = [
            (
                FramingError::RequestLineTooLong { limit: 1 },
                414,
                "request_line_too_long",
            ),
            (
                FramingError::HeadTooLarge { limit: 1 },
                431,
                "request_header_too_large",
            ),
            (
                FramingError::TooManyHeaders { limit: 1 },
                431,
                "request_header_too_large",
            ),
            (FramingError::Framing("x".into()), 400, "invalid_framing"),
            (FramingError::Malformed("x".into()), 400, "bad_request"),
        ];
        for (e, status, code) in cases {
            let p = e.to_proxy_error();
            assert_eq!((p.status(), p.code()), (status, code));
            let raw = String::from_utf8(crate::pipeline::respond::error_bytes(&p)).unwrap();
            assert!(
                raw.contains(&format!("X-EZThrottle-Error: {code}")),
                "{raw}"
            );
            assert!(raw.contains("Connection: close"));
        }
    }

    /// No input makes it panic (the fuzz target's property, cheaply).
    #[test]
    fn arbitrary_bytes_never_panic() {
        let l = small();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet =
            b"GET /:\r\n \t\0,;chunkedContent-Length0123456789Transfer-Encoding Host\x80\xff@";
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 160) as usize;
            let mut buf = Vec::with_capacity(len);
            let mut y = x;
            for _ in 0..len {
                y = y
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                buf.push(alphabet[(y >> 33) as usize % alphabet.len()]);
            }
            let _ = inspect_head(&buf, &l);
            let _ = inspect_head(&buf, &HeadLimits::default());
        }
    }

    #[test]
    fn budget_holds_and_gives_back() {
        let b = MemBudget::new(100);
        let mut h1 = Hold::new(&b);
        let mut h2 = Hold::new(&b);
        h1.set(60).unwrap();
        assert_eq!(h2.set(50), Err(BudgetFull));
        assert_eq!(b.refused(), 1);
        h2.set(40).unwrap();
        assert_eq!(b.used(), 100);
        h1.set(10).unwrap();
        assert_eq!(b.used(), 50);
        drop(h2);
        assert_eq!(b.used(), 10);
        drop(h1);
        assert_eq!(b.used(), 0);

        let mut p = Pending::new(&b);
        p.extend(&[1; 50]).unwrap();
        assert!(b.used() >= 50);
        assert!(p.extend(&[1; 60]).is_err());
        let all = p.take_all();
        assert_eq!(all.len(), 50);
        assert_eq!(b.used(), 0);
    }

    fn cursor(bytes: &[u8]) -> Stream {
        Box::new(std::io::Cursor::new(bytes.to_vec()))
    }

    async fn read_all(f: &mut Framed) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = f.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn the_window_stops_at_the_end_of_the_request() {
        let b = MemBudget::new(1 << 20);
        let head = "POST http://a.test/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        let next = "GET http://a.test/2 HTTP/1.1\r\n\r\n";
        // Two body bytes already read with the head; the rest on the socket.
        let first = format!("{head}he");
        let info = inspect(&first).unwrap();
        let mut bytes = BytesMut::from(first.as_bytes());
        let rest = bytes.split_off(info.end);
        let sock = format!("llo{next}");
        let mut f = Framed::new(
            cursor(sock.as_bytes()),
            bytes,
            rest,
            &info,
            Pending::new(&b),
            1024,
        );
        let seen = read_all(&mut f).await;
        assert_eq!(String::from_utf8(seen).unwrap(), format!("{head}hello"));
        let (_, stash) = f.into_parts();
        assert_eq!(stash.as_slice(), next.as_bytes());
    }

    #[tokio::test]
    async fn pipelined_bytes_read_with_the_head_are_kept() {
        let b = MemBudget::new(1 << 20);
        let one = "GET http://a.test/1 HTTP/1.1\r\n\r\n";
        let two = "GET http://a.test/2 HTTP/1.1\r\n\r\n";
        let both = format!("{one}{two}");
        let info = inspect(&both).unwrap();
        let mut bytes = BytesMut::from(both.as_bytes());
        let rest = bytes.split_off(info.end);
        let mut f = Framed::new(cursor(b""), bytes, rest, &info, Pending::new(&b), 1024);
        assert_eq!(read_all(&mut f).await, one.as_bytes());
        let (_, stash) = f.into_parts();
        assert_eq!(stash.as_slice(), two.as_bytes());
        assert!(b.used() >= two.len());
    }

    #[tokio::test]
    async fn chunked_bodies_stop_at_the_last_chunk() {
        let b = MemBudget::new(1 << 20);
        let head = "POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let info = inspect(head).unwrap();
        let body = "3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n";
        let next = "GET http://a.test/2 HTTP/1.1\r\n\r\n";
        // Part of the body came with the head, the rest (and the next
        // request) from the socket.
        let mut f = Framed::new(
            cursor(format!("{}{next}", &body[5..]).as_bytes()),
            BytesMut::from(head.as_bytes()),
            BytesMut::from(&body.as_bytes()[..5]),
            &info,
            Pending::new(&b),
            1024,
        );
        assert_eq!(read_all(&mut f).await, format!("{head}{body}").as_bytes());
        let (_, stash) = f.into_parts();
        assert_eq!(stash.as_slice(), next.as_bytes());
    }

    #[test]
    fn chunk_tracker_follows_sizes_extensions_and_trailers() {
        let body = b"5\r\nhello\r\nA;name=\"v\"\r\n0123456789\r\n0\r\nT: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        let mut t = ChunkTracker::new(1024);
        assert_eq!(t.feed(body), Ok(end));
        assert!(t.done());
        // One byte at a time gives the same end.
        let mut t = ChunkTracker::new(1024);
        let mut at = 0;
        for (i, b) in body.iter().enumerate() {
            let n = t.feed(std::slice::from_ref(b)).unwrap();
            if n == 0 {
                at = i;
                break;
            }
        }
        assert_eq!(at, end);
        let mut t = ChunkTracker::new(1024);
        assert_eq!(t.feed(b"0\r\n\r\nGET"), Ok(5));
    }

    /// Fuzzing finding F1 (docs/fuzzing.md).
    #[test]
    fn a_target_that_is_not_utf8_is_refused_here_not_by_pingora() {
        let head = b"GET http://a.example/\xe7 HTTP/1.1\r\nHost: a.example\r\n\r\n";
        assert!(matches!(
            inspect_head(head, &HeadLimits::default()),
            Err(FramingError::Malformed(_))
        ));
        // Valid UTF-8 is fine: pingora escapes it.
        assert!(inspect("GET http://a.example/\u{e9} HTTP/1.1\r\nHost: a.example\r\n\r\n").is_ok());
    }

    /// Fuzzing finding F3 (docs/fuzzing.md).
    #[test]
    fn a_bare_cr_in_trailers_is_refused_as_pingora_does() {
        let body = b"5\r\nhello\r\n0\r\nTrailer: x\r\n\rOGET / HTTP/1.1\r\n\r\n";
        assert!(ChunkTracker::new(1024).feed(body).is_err());
    }

    #[test]
    fn chunk_tracker_refuses_what_pingora_refuses() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX",
            b"ffffffffffffffffffff\r\n",
            b"0\r\nT: 1\n\n",
        ] {
            assert!(ChunkTracker::new(1024).feed(bad).is_err(), "{bad:?}");
        }
        let long_trailer = [b"0\r\nT: ".as_slice(), &[b'x'; 64]].concat();
        assert!(ChunkTracker::new(32).feed(&long_trailer).is_err());
        let long_line = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(ChunkTracker::new(32).feed(&long_line).is_err());
    }

    /// pingora's own parser on the same bytes.
    async fn pingora_accepts(head: &str) -> Result<(), String> {
        let mut s = pingora::protocols::http::v1::server::HttpSession::new(cursor(head.as_bytes()));
        match s.read_request().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("no request".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whatever we let through, pingora must accept too (else the client
    /// would get pingora's bare 400).
    #[tokio::test]
    async fn what_we_accept_pingora_accepts() {
        let targets = [
            "/",
            "/a\"b",
            "/a|b",
            "/a{b}",
            "/caf\u{e9}",
            "/x?q=<1>",
            "/%zz",
            "/a`b",
            "/a^b",
            "/a\\b",
            "http://a.test/",
            "http://a.test/x?q=<1>",
            "http://a.test/caf\u{e9}",
            "http://a.test:80/a\"b",
            "https://a.test/",
            "http://[::1]:8080/",
            "http://a.test",
            "*",
            "a.test:443",
            "http:/\\a.test/",
            "http://a.test\\b/",
            "ftp://a.test/",
        ];
        let heads: Vec<String> = targets
            .iter()
            .flat_map(|t| {
                [
                    format!("GET {t} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
                    format!("GET {t} HTTP/1.1\r\n\r\n"),
                    format!("POST {t} HTTP/1.0\r\nContent-Length: 0\r\n\r\n"),
                ]
            })
            .collect();
        let mut disagree = Vec::new();
        for h in &heads {
            let ours = inspect(h);
            let theirs = pingora_accepts(h).await;
            if ours.is_ok() && theirs.is_err() {
                disagree.push(format!("{h:?}: we accept, pingora says {theirs:?}"));
            }
        }
        assert!(disagree.is_empty(), "{disagree:#?}");
    }

    /// Random heads built from pieces (valid, odd and hostile): whatever we
    /// accept, pingora's parser accepts too.
    #[tokio::test]
    async fn random_heads_we_accept_pingora_accepts() {
        let methods = ["GET", "POST", "PUT", "X-Y", "G", "OPTIONS"];
        let targets = [
            "/",
            "/a?b=c",
            "http://a.test/",
            "http://a.test:8080/p",
            "http://b.test/",
            "*",
            "/a\"b",
            "http://a.test/caf\u{e9}",
            "http://u@a.test/",
            "https://a.test/",
        ];
        let versions = ["HTTP/1.1", "HTTP/1.0"];
        let headers = [
            "Host: a.test",
            "Host: b.test",
            "Host: a.test:8080",
            "Host:",
            "Host: a.test ",
            "Content-Length: 3",
            "Content-Length: 3, 3",
            "Content-Length: 003",
            "Content-Length:  5 ",
            "content-length: 0",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
            "transfer-encoding: Chunked",
            "X: y",
            "X:y",
            "X: \u{e9}",
            "Upgrade: websocket",
            "Connection: close",
            "Expect: 100-continue",
            "X-Empty:",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut accepted = 0;
        for _ in 0..5_000 {
            let mut h = format!(
                "{} {} {}\r\n",
                methods[next(methods.len())],
                targets[next(targets.len())],
                versions[next(versions.len())]
            );
            for _ in 0..next(5) {
                h.push_str(headers[next(headers.len())]);
                h.push_str("\r\n");
            }
            h.push_str("\r\n");
            if let Ok(info) = inspect(&h) {
                accepted += 1;
                let theirs = pingora_accepts(&h[..info.end]).await;
                assert!(theirs.is_ok(), "{h:?}: we accept, pingora: {theirs:?}");
            }
        }
        assert!(
            accepted > 500,
            "only {accepted} accepted: the generator is off"
        );
    }

    /// On request targets we neither add nor drop anything: the verdict is
    /// pingora's (percent-escaping included), only the answer is ours.
    #[tokio::test]
    async fn targets_get_pingoras_verdict() {
        for t in [
            "/a\"b",
            "/a|b{c}",
            "/caf\u{e9}",
            "/x?q=<1>",
            "http://a.test/x?q=<1>",
            "http://a.test/caf\u{e9}",
            "http://a.test/a\"b",
            "http:/\\a.test/",
        ] {
            let h = format!("GET {t} HTTP/1.1\r\nHost: a.test\r\n\r\n");
            let ours = inspect(&h);
            let theirs = pingora_accepts(&h).await;
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{t}: {ours:?} vs {theirs:?}");
        }
    }
}
